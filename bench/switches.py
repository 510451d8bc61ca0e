"""The opt-in kernel switches against the default kernels, from the benchmarks' results.

The benchmarks time each opt-in switch beside the default ("dllm") in the same run, in turns, on the
same inputs. A switch should not stay optional: the faster one becomes the default and the other is
deleted with its tests. This reads every ``results.json`` under the given folders and says, for each
switch, where it ran faster or slower than the default beyond both rows' spreads (p20-p80 of the
timed calls), and what that suggests:

- "make it the default": faster somewhere, slower nowhere;
- "delete it": slower somewhere, faster nowhere;
- "mixed: decide by shape": both;
- "no difference measured": neither (keep the simpler path, delete the other).

The "dllm lock-step" row is the older kernel kept as a switch, so "delete it" there means deleting
that older path. ("dllm mma.sync", the attention of GPUs before Hopper timed on Hopper, is no switch:
those GPUs need it.)

    python bench/switches.py OUT_DIR [OUT_DIR ...] [--out switches.md]
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

DEFAULT = "dllm"
# the benchmarks' row names of the switches, and the setting each times
SWITCHES = {
    "dllm, L2 prefetch": "DLLM_L2_PREFETCH=1",
    "dllm, async copies": "DLLM_ASYNC_COPIES=1",
    "dllm lock-step": "DLLM_ATTENTION_PINGPONG=0",
    "dllm atomic dQ": "DLLM_ATTENTION_DQ=atomic",
}


def _timed(row: dict) -> bool:
    return all(isinstance(row.get(k), (int, float)) and math.isfinite(row[k]) for k in ("median_ms", "p20_ms", "p80_ms"))


def _case(row: dict) -> tuple:
    return row.get("op"), row.get("shape"), row.get("dtype")


def comparisons(results: dict, source: str) -> list[dict]:
    """Every switch row of one results file beside the default row of its (op, shape, dtype)."""
    default = {_case(r): r for r in results["rows"] if r.get("impl") == DEFAULT and _timed(r)}
    out = []
    for r in results["rows"]:
        base = default.get(_case(r))
        if r.get("impl") not in SWITCHES or base is None or not _timed(r):
            continue
        if r["p80_ms"] < base["p20_ms"]:
            outcome = "faster"
        elif r["p20_ms"] > base["p80_ms"]:
            outcome = "slower"
        else:
            outcome = "within spread"
        out.append({"source": source, "op": r["op"], "shape": r["shape"], "dtype": r["dtype"], "switch": r["impl"],
                    "default": base, "row": r, "ratio": base["median_ms"] / r["median_ms"], "outcome": outcome})
    return out


def verdict(faster: int, slower: int) -> str:
    if faster and slower:
        return "mixed: decide by shape"
    if faster:
        return "make it the default"
    if slower:
        return "delete it"
    return "no difference measured"


def _spread(r: dict) -> str:
    return f"{r['median_ms']:.3f} ({r['p20_ms']:.3f}-{r['p80_ms']:.3f})"


def report(found: list[dict], sources: list[str], metas: list[dict]) -> str:
    cards = sorted({str(m.get("card", "?")) for m in metas})
    commits = sorted({str(m.get("commit", "?")) for m in metas})
    lines = ["# Opt-in switches against the default kernels", "",
             f"From {', '.join(sources)}: {len(metas)} results files, card {', '.join(cards)}, "
             f"commit {', '.join(commits)}. Ratio = the default's median / the switch's (above 1: the switch "
             "is faster); an outcome counts only where the p20-p80 spreads do not overlap.", ""]
    if not found:
        return "\n".join(lines + ["No switch row beside a default row in these results (the benchmarks time the "
                                  "switches on CUDA only).", ""])
    lines += ["| switch | setting | faster | slower | within spread | ratios | suggests |", "|---|---|---|---|---|---|---|"]
    for name, setting in SWITCHES.items():
        mine = [c for c in found if c["switch"] == name]
        if not mine:
            continue
        count = {k: sum(c["outcome"] == k for c in mine) for k in ("faster", "slower", "within spread")}
        ratios = [c["ratio"] for c in mine]
        lines.append(f"| {name} | `{setting}` | {count['faster']} | {count['slower']} | {count['within spread']} | "
                     f"{min(ratios):.2f}-{max(ratios):.2f}x | {verdict(count['faster'], count['slower'])} |")
    lines += ["", "| results | op | shape | dtype | switch | default ms (p20-p80) | switch ms (p20-p80) | ratio | outcome |",
              "|---|---|---|---|---|---|---|---|---|"]
    for c in found:
        lines.append(f"| {c['source']} | {c['op']} | {c['shape']} | {c['dtype']} | {c['switch']} | {_spread(c['default'])} | "
                     f"{_spread(c['row'])} | {c['ratio']:.2f}x | {c['outcome']} |")
    return "\n".join(lines + [""])


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", type=Path, help="folders holding benchmark results (searched recursively)")
    parser.add_argument("--out", type=Path, help="also write the report here")
    args = parser.parse_args(argv)
    found, metas = [], []
    for folder in args.folders:
        if not folder.is_dir():
            parser.error(f"{folder} is not a folder")
        for path in sorted(folder.rglob("results.json")):
            results = json.loads(path.read_text())
            if "rows" not in results:  # e2e's results.json: no kernel rows
                continue
            metas.append(results.get("meta", {}))
            found += comparisons(results, str(path.parent.relative_to(folder)))
    text = report(found, [str(f) for f in args.folders], metas)
    if args.out:
        args.out.write_text(text)
    print(text, end="")
    return text


if __name__ == "__main__":
    main()
