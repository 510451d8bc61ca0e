"""scripts/ncu_sass_summary.py on a made-up export: the GPU session's stage ncu is its only other user,
and a parser broken there would cost that session its one look at where the instructions go."""

import csv
import importlib.util
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "ncu_sass_summary.py"
spec = importlib.util.spec_from_file_location("ncu_sass_summary", SCRIPT)
summary = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = summary  # dataclasses look their module up there
spec.loader.exec_module(summary)

HEADER = ('"Address","Source","Warp Stall Sampling (All Samples)","Warp Stall Sampling (Not-issued Samples)",'
          '"Instructions Executed","Thread Instructions Executed"')


def table(rows):
    return "\n".join([HEADER] + [f'"{a}","{s}","{n}","0","{c}","{32 * int(c.replace(",", ""))}"'
                                 for a, s, n, c in rows])


EXPORT = "\n".join([
    '"Kernel: first(Params)"',
    table([("0x0000", "S2R R0, SR_TID.X", 1, "100"), ("0x0010", "LDG.E R2, [R4]", 2, "100"),
           ("0x0020", "FMNMX R2, R3, R4, !PT", 7, "5,000"), ("0x0030", "FFMA R2, R3, R4, R5", 9, "5,000"),
           ("0x0040", "@!P0 BRA 0x20", 1, "5,000"), ("0x0050", "BRA 0x50", 0, "0"), ("0x0060", "EXIT", 0, "100")]),
    '"Kernel: second(Params)"',
    table([("0000 0000", "EXIT", 4, "16")]),
])


def test_blocks_are_runs_of_equal_counts_ranked_by_instructions_executed(tmp_path):
    kernels = summary.parse(EXPORT)
    assert [k.name for k in kernels] == ["Kernel: first(Params)", "Kernel: second(Params)"]
    first = summary.blocks(kernels[0])
    assert [(b.first, b.length, b.count, b.samples) for b in first] == [(0x0, 2, 100, 3), (0x20, 3, 5000, 17),
                                                                       (0x60, 1, 100, 0)]
    (tmp_path / "sass.csv").write_text(EXPORT)
    assert summary.main([str(tmp_path / "sass.csv"), "--markdown", str(tmp_path / "sass.md"),
                         "--compact", str(tmp_path / "compact.csv")]) == 0
    text = (tmp_path / "sass.md").read_text()
    assert "15,300 warp instructions executed over 7 SASS lines (6 executed)" in text
    lines = text.splitlines()
    top = lines[lines.index("## Kernel: first(Params)") + 6]
    assert top.startswith("| 0x0020-0x0040 | 3 | 5,000 | 15,000 | 98.0% | 17 | `FMNMX")
    rows = list(csv.reader((tmp_path / "compact.csv").open()))
    assert rows[0] == ["kernel", "address", "executed", "stall_samples", "sass"] and len(rows) == 1 + 6 + 1


def test_one_table_of_every_kernel_splits_at_each_name():
    export = ('"ID","Kernel Name","Address","Source","Instructions Executed"\n'
              '"0","a","0x00","EXIT","3"\n"1","b","0x00","MOV R1, R2","4"\n"1","b","0x10","EXIT","4"\n')
    kernels = summary.parse(export)
    assert [(k.name, len(k.rows)) for k in kernels] == [("a", 1), ("b", 2)]


def test_an_export_without_counts_is_refused(tmp_path):
    (tmp_path / "empty.csv").write_text('"==ERR== unknown option --print-source"\n')
    assert summary.main([str(tmp_path / "empty.csv")]) == 1
