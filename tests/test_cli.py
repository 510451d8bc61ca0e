"""The dllm command line end to end, on tiny settings."""

import json
import subprocess
import sys


def dllm(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "dllm.cli", *args], capture_output=True, text=True, timeout=timeout)


def test_help_lists_every_command():
    out = dllm("--help")
    assert out.returncode == 0 and all(c in out.stdout for c in ("demo", "train", "sample"))
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
    # `dllm sample` on the folders the demo trained: a diffusion model and the AR baseline
    for kind, extra in (("mdlm", ["--show-steps", "--sampler", "mdlm"]), ("ar", [])):
        out = dllm("sample", str(tmp_path / kind / "model"), "--prompt", "def f(", "--gen-length", "16",
                   "--steps", "4", "--num-samples", "2", *extra)
        assert out.returncode == 0, out.stderr[-2000:]
        assert out.stdout.count("--- sample") == 2 and "def f(" in out.stdout
    assert "step 4:" in dllm("sample", str(tmp_path / "mdlm" / "model"), "--gen-length", "8", "--steps", "4",
                             "--show-steps").stdout
    bad = dllm("sample", str(tmp_path / "nowhere"))
    assert bad.returncode == 2 and "config.json" in bad.stderr


def test_demo_rejects_bad_arguments():
    out = dllm("demo", "--minutes", "0")
    assert out.returncode == 2 and "--minutes" in out.stderr
