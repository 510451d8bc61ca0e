"""The dllm command line end to end, on tiny settings."""

import json
import subprocess
import sys


def dllm(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "dllm.cli", *args], capture_output=True, text=True, timeout=timeout)


def test_help_lists_every_command():
    out = dllm("--help")
    assert out.returncode == 0 and "demo" in out.stdout and "train" in out.stdout
    demo = dllm("demo", "--help")
    for flag in ("--minutes", "--out-dir", "--gen-length", "--steps", "--device", "--retrain", "--seed"):
        assert flag in demo.stdout


def test_demo_end_to_end(tmp_path):
    out = dllm("demo", "--minutes", "0.02", "--gen-length", "32", "--steps", "4", "--out-dir", str(tmp_path))
    assert out.returncode == 0, out.stderr[-3000:]
    for name in ("samples.md", "trajectory.png", "speed.json", "mdlm/model/config.json", "ar/model/config.json"):
        assert (tmp_path / name).exists(), name
    speed = json.loads((tmp_path / "speed.json").read_text())
    assert speed["diffusion_tokens_per_s"] > 0 and speed["ar_tokens_per_s"] > 0
    text = (tmp_path / "samples.md").read_text()
    assert "def is_even(n):" in text and "return a - b" in text  # the prompt and the infill's known suffix
    again = dllm("demo", "--minutes", "0.02", "--gen-length", "32", "--steps", "4", "--out-dir", str(tmp_path))
    assert again.returncode == 0 and "reusing" in again.stdout


def test_demo_rejects_bad_arguments():
    out = dllm("demo", "--minutes", "0")
    assert out.returncode == 2 and "--minutes" in out.stderr
