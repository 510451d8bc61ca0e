"""Where a kernel's instructions go, from Nsight Compute's per-instruction counters.

    ncu -i REPORT.ncu-rep --page source --csv --print-source sass > sass.csv
    python scripts/ncu_sass_summary.py sass.csv --markdown sass.md --compact sass-compact.csv

The report must hold the SourceCounters section (scripts/gpu_check.sh's stage ncu collects it).
For each kernel in the export: the warp instructions it executed, and its basic blocks ranked by
the instructions they executed. A basic block is a run of consecutive instructions that executed
the same number of times, as straight-line code does; its count over the kernel's rows or
elements says whether it is per-element, per-group or per-row work. On the H200 (2026-11-30)
sample_categorical's counters gave 37 instructions an element although its streaming loop's
SASS holds about 9.5: only per-instruction counts show where the rest comes from.
--compact keeps the rows that executed (address, count, stall samples, instruction) for a
closer look without the export's other columns.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from dataclasses import dataclass, field


@dataclass
class Kernel:
    name: str
    rows: list[tuple[int, float, float, str]] = field(default_factory=list)  # address, executed, samples, sass


def _number(text: str) -> float:
    try:
        return float(text.replace(",", "").strip() or 0)
    except ValueError:
        return 0.0


def _column(header: list[str], *wanted: str, avoid: tuple[str, ...] = ()) -> int | None:
    """The first column whose name holds every word of one `wanted` phrase and none of `avoid`."""
    lowered = [h.lower() for h in header]
    for phrase in wanted:
        for i, h in enumerate(lowered):
            if all(w in h for w in phrase.lower().split()) and not any(a in h for a in avoid):
                return i
    return None


def parse(text: str) -> list[Kernel]:
    """The kernels of a source-page export: each table starts at a header row naming an address and a
    source column, and ends at the first row too short for it; the kernel's name comes from a
    column of its own or else the last line before the table."""
    kernels: list[Kernel] = []
    cols = None
    before = ""
    for row in csv.reader(io.StringIO(text)):
        if not row:
            continue
        if _column(row, "address") is not None and _column(row, "source") is not None:
            executed = _column(row, "warp instructions executed", "instructions executed",
                               avoid=("thread", "predicated", "%"))
            if executed is None:
                raise ValueError(f"no instructions-executed column among {row}")
            cols = (_column(row, "address"), _column(row, "source"), executed,
                    _column(row, "stall sampling all", "stall sampling", avoid=("not issued", "%")),
                    _column(row, "kernel name", "function name"))
            kernels.append(Kernel(before.strip() or f"kernel {len(kernels) + 1}"))
            continue
        if cols is None or len(row) <= max(cols[:3]):
            cols, before = None, ",".join(row)
            continue
        try:  # hex, with or without 0x, maybe split into words
            address = int(row[cols[0]].replace(" ", "").lower().removeprefix("0x"), 16)
        except ValueError:
            continue
        _, src_col, exec_col, samples_col, name_col = cols
        name = row[name_col].strip() if name_col is not None and name_col < len(row) else ""
        if name and name != kernels[-1].name:  # one table for every kernel: a new one at each name
            if kernels[-1].rows:
                kernels.append(Kernel(name))
            kernels[-1].name = name
        samples = _number(row[samples_col]) if samples_col is not None and samples_col < len(row) else 0.0
        kernels[-1].rows.append((address, _number(row[exec_col]), samples, row[src_col].strip()))
    return [k for k in kernels if k.rows]


@dataclass
class Block:
    first: int
    last: int
    length: int
    count: float
    samples: float
    head: str

    @property
    def executed(self) -> float:
        return self.count * self.length


def blocks(kernel: Kernel) -> list[Block]:
    """Runs of consecutive executed instructions with one count (a block split by a branch whose
    two sides ran equally often merges with its neighbour: same count, same per-row meaning)."""
    out: list[Block] = []
    for address, count, samples, sass in sorted(kernel.rows):
        if count <= 0:
            continue
        if out and out[-1].count == count and 0 < address - out[-1].last <= 16:
            b = out[-1]
            b.last, b.length, b.samples = address, b.length + 1, b.samples + samples
        else:
            out.append(Block(address, address, 1, count, samples, sass))
    return out


def report(kernels: list[Kernel], top: int) -> str:
    lines = ["# Executed instructions by basic block (Nsight Compute source counters)", ""]
    for k in kernels:
        total = sum(c for _, c, _, _ in k.rows)
        samples = sum(s for _, _, s, _ in k.rows)
        bs = sorted(blocks(k), key=lambda b: b.executed, reverse=True)
        lines += [f"## {k.name}", "",
                  f"{total:,.0f} warp instructions executed over {len(k.rows)} SASS lines "
                  f"({sum(1 for r in k.rows if r[1] > 0)} executed); {samples:,.0f} stall samples", "",
                  "| block | instructions | times run | executed | share | stall samples | first instruction |",
                  "|---|---|---|---|---|---|---|"]
        for b in bs[:top]:
            share = 100.0 * b.executed / total if total else 0.0
            lines.append(f"| {b.first:#06x}-{b.last:#06x} | {b.length} | {b.count:,.0f} | {b.executed:,.0f} | "
                         f"{share:.1f}% | {b.samples:,.0f} | `{b.head.replace('|', '/')}` |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("csv", help="the output of `ncu -i REPORT --page source --csv --print-source sass`")
    ap.add_argument("--markdown", help="write the summary here (default: standard output)")
    ap.add_argument("--compact", help="also write the executed rows, four columns, here")
    ap.add_argument("--top", type=int, default=25, help="blocks listed per kernel (default 25)")
    args = ap.parse_args(argv)
    with open(args.csv, newline="") as f:
        kernels = parse(f.read())
    if not kernels:
        print(f"{args.csv}: no per-instruction table found (was SourceCounters collected?)", file=sys.stderr)
        return 1
    text = report(kernels, args.top)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text + "\n")
    else:
        print(text)
    if args.compact:
        with open(args.compact, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["kernel", "address", "executed", "stall_samples", "sass"])
            for k in kernels:
                for address, count, samples, sass in k.rows:
                    if count > 0:
                        w.writerow([k.name, f"{address:#06x}", f"{count:.0f}", f"{samples:.0f}", sass])
    return 0


if __name__ == "__main__":
    sys.exit(main())
