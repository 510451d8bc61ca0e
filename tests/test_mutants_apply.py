"""Every planted bug of the two mutation sweeps still names text that is in its file exactly once:
a refactor that rewrites that text would otherwise break the sweep only when someone runs it."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _mutants(script: str) -> list:
    spec = importlib.util.spec_from_file_location(Path(script).stem, ROOT / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.MUTANTS


@pytest.mark.parametrize("script", ["tests/mutate_cpu.py", "tests/cuda_emulator/mutate.py"])
def test_help_and_bad_indices_end_before_any_worktree_is_made(script):
    # docs/testing.md tells users to run these scripts: `--help` printed a ValueError traceback
    count = len(_mutants(script))
    for args, code, text in ((["--help"], 0, "INDEX"), (["-h"], 0, "INDEX"), (["x"], 1, "error: x: mutant indices"),
                             ([str(count)], 1, f"are 0 to {count - 1}")):
        run = subprocess.run([sys.executable, str(ROOT / script), *args], capture_output=True, text=True, timeout=120)
        assert run.returncode == code and text in run.stdout + run.stderr, (args, run.stdout, run.stderr)
        assert "Traceback" not in run.stderr


@pytest.mark.parametrize("script", ["tests/mutate_cpu.py", "tests/cuda_emulator/mutate.py"])
def test_every_mutant_names_text_that_is_in_its_file_once(script):
    stale = [(i, path, old[:60]) for i, (path, old, *_) in enumerate(_mutants(script))
             if (ROOT / path).read_text().count(old) != 1]
    assert not stale, f"{script}: mutants whose text is not in their file exactly once: {stale}"


@pytest.mark.parametrize("script,phrase", [("tests/mutate_cpu.py", "`python tests/mutate_cpu.py` plants {} known bugs"),
                                           ("tests/cuda_emulator/mutate.py", "does the same with {} bugs")])
def test_the_docs_count_the_planted_bugs(script, phrase):
    # docs/testing.md gives each sweep's size; it had fallen one mutant behind
    testing = " ".join((ROOT / "docs" / "testing.md").read_text().split())
    assert phrase.format(len(_mutants(script))) in testing
