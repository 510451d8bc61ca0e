"""The package surface: build_info, import-time behaviour, op registration."""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

import dllm

ROOT = Path(__file__).resolve().parents[1]


# Every CPU op once, on awkward shapes, forward and backward; saved to OUT for comparison across builds.
_OPS_SCRIPT = (
    "import torch, dllm\n"
    "g = torch.Generator().manual_seed(0)\n"
    "logits = torch.randn(64, 3001, generator=g)\n"
    "x = torch.randint(0, 3001, (4, 16), generator=g); x[:, ::2] = 5\n"
    "q, k, v = (torch.randn(2, 37, 4, 24, generator=g).requires_grad_() for _ in range(3))\n"
    "w = torch.randn(2, 37, 4, 24, generator=g)\n"
    "torch.manual_seed(1)\n"
    "t, lp = dllm.ops.sample_categorical(logits, 0.7)\n"
    "x0, c = dllm.ops.predict_masked(logits[:64].view(4, 16, 3001), x, mask_id=5, temperature=1.0, top_p=0.9)\n"
    "x1, c1 = dllm.ops.predict_masked(logits[:64].view(4, 16, 3001), x, mask_id=5, confidence='margin')\n"
    "o = dllm.ops.attention(q, k, v, kv_len=torch.tensor([37, 20], dtype=torch.int32))\n"
    "(o * w).sum().backward()\n"
    "sl = logits[:64].view(4, 16, 3001).clone().requires_grad_()\n"
    "sig, ds = torch.tensor([0.5, 1.0, 2.0, 3.0]), torch.tensor([0.1, 0.2, 0.3, 0.4])\n"
    "xs = dllm.ops.sedd_step(sl.detach(), x, sig, ds, graph='uniform', method='analytic')\n"
    "xa = dllm.ops.sedd_step(sl.detach(), torch.full_like(x, 3000), sig, ds, graph='absorb', method='euler')\n"
    "x0s = x.clamp(max=2999)\n"
    "se = dllm.ops.score_entropy_loss(sl, torch.where(x == 5, 3000, x0s), x0s, sig, ds, graph='absorb')\n"
    "se.sum().backward()\n"
    "md = dllm.ops.masked_diffusion_loss(sl, torch.where(x == 5, 3000, x0s), x0s, ds, mask_id=3000)\n"
    "xt = dllm.ops.sample_transition(x, sig, graph='uniform', num_classes=3001)\n"
    "r = dllm.ops.rotary(q.detach().bfloat16(), *dllm.models.layers.Rotary(24)(0, 37, 'cpu'))\n"
    "mod = torch.randn(3, 2, 99, generator=g)\n"
    "a = dllm.ops.adaln(logits[:2, :7 * 99].view(2, 7, 99).half(), mod[0, 0], mod[1], mod[2])\n"
    "ar = dllm.ops.adaln_residual(logits[:2, :693].view(2, 7, 99), logits[2:4, :693].view(2, 7, 99), mod[0],\n"
    "                             mod[0, 1], mod[1], mod[2])\n"
    "torch.save((t, lp, x0, c, x1, c1, o.detach(), q.grad, k.grad, v.grad, xs, xa, se.detach(), sl.grad,\n"
    "            md.detach(), xt, r, a, *ar), OUT)\n"
)


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_build_info_describes_this_build():
    info = dllm.build_info()
    assert info["version"] == dllm.__version__
    assert info["torch"] == torch.__version__
    assert isinstance(info["cuda"], bool)
    if info["cuda"]:
        assert info["torch_cuda"] == torch.version.cuda
        assert info["cuda_archs"] and all(a[:2].isdigit() for a in info["cuda_archs"])
    else:
        assert info["cuda_archs"] == []
    if os.environ.get("DLLM_CUDA") == "ON":  # CI forces the CUDA build: it must have happened
        assert info["cuda"]
    commit = info["commit"].removesuffix("-dirty")  # benchmarks stamp their results with it
    repo = Path(__file__).resolve().parents[1]
    if (repo / ".git").exists():
        assert subprocess.run(["git", "cat-file", "-e", f"{commit}^{{commit}}"], cwd=repo).returncode == 0, commit
    else:
        assert commit == "unknown"


def test_import_never_touches_torch_cuda():
    result = run_python(
        "import torch\n"
        "def refuse(*a, **k): raise RuntimeError('torch.cuda touched at import')\n"
        "for name in ('is_available', 'device_count', '_lazy_init', 'current_device', 'get_device_properties'):\n"
        "    setattr(torch.cuda, name, refuse)\n"
        "import dllm, dllm.ops\n"
        "print(dllm.ops.sample_categorical(torch.randn(2, 9), 0.0)[0].tolist())\n"
    )
    assert result.returncode == 0, result.stderr


def test_import_under_another_torch_names_both_versions_and_the_fix():
    result = run_python("import torch\ntorch.__version__ = '1.2.3'\nimport dllm\n")
    assert result.returncode != 0
    assert "built against torch " + torch.__version__ in result.stderr
    assert "torch 1.2.3 is installed" in result.stderr
    assert "pip install --no-build-isolation" in result.stderr


def test_every_op_has_cpu_and_cuda_kernels():
    # Fake kernels are exercised by the opcheck test of each op.
    for name in ("sample_categorical", "predict_masked", "commit_tokens", "attention_forward", "attention_backward",
                 "sedd_step", "sample_transition", "score_entropy_loss", "score_entropy_loss_backward",
                 "masked_diffusion_loss", "masked_diffusion_loss_backward", "rotary", "adaln", "adaln_residual"):
        op = getattr(torch.ops.dllm, name).default
        assert torch._C._dispatch_has_kernel_for_dispatch_key(op.name(), "CPU")
        if dllm.build_info()["cuda"]:
            assert torch._C._dispatch_has_kernel_for_dispatch_key(op.name(), "CUDA")


def _run_ops(tmp_path, name: str, **env_changes) -> list[torch.Tensor]:
    """_OPS_SCRIPT's results in a fresh interpreter under os.environ updated with env_changes."""
    out = tmp_path / f"{name}.pt"
    env = dict(os.environ, **env_changes)
    r = subprocess.run([sys.executable, "-c", f"OUT = {str(out)!r}\n" + _OPS_SCRIPT], env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return torch.load(out)


def test_baseline_and_avx2_cpu_builds_agree(tmp_path):
    # The hot CPU kernels exist twice (baseline x86-64 and AVX2 + FMA); DLLM_CPU_BASELINE=1
    # forces the baseline one. Both must compute the same thing.
    for a, b in zip(_run_ops(tmp_path, "avx2"), _run_ops(tmp_path, "baseline", DLLM_CPU_BASELINE="1")):
        if a.dtype == torch.int64:
            assert (a != b).float().mean() < 0.01  # a near-tie may round either way
        else:
            fin = torch.isfinite(a)
            torch.testing.assert_close(a[fin], b[fin], rtol=1e-5, atol=1e-5)


def test_cpu_only_build_without_nvcc(tmp_path):
    # What a user without nvcc builds (DLLM_CUDA=OFF, no nvcc on PATH, no CUDA_HOME): CMake then
    # links torch's CPU libraries itself instead of through torch's CMake config, a configuration the
    # CUDA build in CI never compiles. It must build, say so, and compute exactly what this build does.
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_HOME", "CUDA_PATH", "CUDACXX")}
    env["PATH"] = os.pathsep.join(d for d in env["PATH"].split(os.pathsep) if d and not (Path(d) / "nvcc").exists())
    env["DLLM_CUDA"] = "OFF"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-build-isolation", "--no-deps",
                            "-w", str(tmp_path / "wheel"), f"--config-settings=build-dir={tmp_path / 'build'}",
                            str(ROOT)], env=env, capture_output=True, text=True, timeout=1800)
    assert build.returncode == 0, build.stderr[-3000:]
    zipfile.ZipFile(next((tmp_path / "wheel").glob("dllm-*.whl"))).extractall(tmp_path / "site")
    assert (tmp_path / "site" / "dllm" / "py.typed").is_file()  # PEP 561: type checkers read dllm's annotations
    site = {"PYTHONPATH": str(tmp_path / "site")}
    info = subprocess.run([sys.executable, "-c", "import dllm; print(dllm.__file__, dllm.build_info()['cuda'])"],
                          env=dict(env, **site), capture_output=True, text=True, timeout=120)
    assert info.returncode == 0 and info.stdout.split() == [str(tmp_path / "site" / "dllm" / "__init__.py"), "False"], \
        info.stdout + info.stderr
    for a, b in zip(_run_ops(tmp_path, "this_build"), _run_ops(tmp_path, "cpu_only", **site)):
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)


def _cmake() -> str:
    return shutil.which("cmake", path=str(Path(sys.executable).parent)) or shutil.which("cmake")


def _configure(build: Path, *defines: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """CMake's configure step alone, as scikit-build-core runs it (no compiling)."""
    import pybind11

    ninja = shutil.which("ninja", path=str(Path(sys.executable).parent))
    return subprocess.run([_cmake(), "-S", str(ROOT), "-B", str(build), *(["-G", "Ninja"] if ninja else []),
                           f"-DPython_EXECUTABLE={sys.executable}", f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
                           *defines], env=env or dict(os.environ), capture_output=True, text=True, timeout=600)


def test_build_commit_is_this_checkouts_own(tmp_path):
    # An unpacked sdist inside another project's git repository is not a dllm checkout: its stamp
    # is "unknown" (or DLLM_BUILD_COMMIT), not that project's commit.
    host = tmp_path / "host"
    subprocess.run(["git", "init", "-q", str(host)], check=True)
    subprocess.run(["git", "-C", str(host), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q",
                    "--allow-empty", "-m", "host"], check=True)
    (host / "dllm-0.1.0").mkdir()
    out = tmp_path / "_build_commit.py"
    env = {k: v for k, v in os.environ.items() if k != "DLLM_BUILD_COMMIT"}
    for source, expect in ((host / "dllm-0.1.0", '"unknown"'), (ROOT, None)):
        subprocess.run([_cmake(), f"-DSOURCE_DIR={source}", f"-DOUTPUT={out}", "-P",
                        str(ROOT / "cmake" / "build_commit.cmake")], env=env, check=True, timeout=60)
        commit = out.read_text().split("COMMIT = ")[1].strip()
        if expect:
            assert commit == expect
        elif (ROOT / ".git").exists():
            assert commit != '"unknown"'


def test_configure_forgets_another_environments_torch(tmp_path):
    # build/{wheel_tag} is shared by every environment with this Python version: paths cached when
    # it was configured in another one (whose torch may be gone) must not be linked.
    gone = tmp_path / "gone-venv" / "site-packages"
    r = _configure(tmp_path / "build", "-DDLLM_CUDA=OFF", f"-DDLLM_TORCH_SITE:INTERNAL={gone}",
                   f"-D_torch_lib:FILEPATH={gone}/torch/lib/libtorch.so")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "forgetting the paths found there" in r.stdout
    cache = (tmp_path / "build" / "CMakeCache.txt").read_text()
    assert str(gone) not in cache
    assert f"_torch_lib:FILEPATH={Path(torch.__file__).parent / 'lib' / 'libtorch.so'}" in cache


@pytest.mark.skipif(not torch.version.cuda or not shutil.which("nvcc"), reason="needs nvcc and a CUDA build of torch")
def test_configure_arch_list_and_compiler_search(tmp_path):
    build = tmp_path / "build"
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_HOME", "CUDA_PATH", "CUDACXX")}
    no_nvcc = dict(env, PATH=os.pathsep.join(d for d in env["PATH"].split(os.pathsep)
                                             if d and not (Path(d) / "nvcc").exists()))
    r = _configure(build, "-DDLLM_CUDA=ON", env=no_nvcc)
    assert r.returncode != 0 and "no CUDA compiler (nvcc) was found" in r.stderr, r.stderr[-2000:]
    # nvcc installed since: the failed search is not remembered; a named architecture is refused
    r = _configure(build, "-DDLLM_CUDA=ON", env=dict(env, TORCH_CUDA_ARCH_LIST="Hopper"))
    assert r.returncode != 0 and 'not "Hopper"' in r.stderr, r.stderr[-2000:]
    # 9.0a still gets the wgmma kernels
    r = _configure(build, "-DDLLM_CUDA=ON", env=dict(env, TORCH_CUDA_ARCH_LIST="9.0a"))
    assert r.returncode == 0, r.stderr[-2000:]
    assert 'CUDA_ARCHS = "90a"' in (build / "_build_config.py").read_text()
    assert (build / "CMakeFiles" / "dllm_kernels_sm90a.dir").is_dir()
    # nvcc off PATH but under CUDA_HOME, where torch's own extension builder looks, is found too
    toolkit = Path(shutil.which("nvcc")).resolve().parents[1]
    r = _configure(tmp_path / "build2", "-DDLLM_CUDA=ON",
                   env=dict(no_nvcc, CUDA_HOME=str(toolkit), TORCH_CUDA_ARCH_LIST="Hopper"))
    assert r.returncode != 0 and 'not "Hopper"' in r.stderr, r.stderr[-2000:]


@pytest.mark.skipif(not torch.version.cuda or not shutil.which("nvcc"), reason="needs nvcc and a CUDA build of torch")
def test_an_nvcc_of_another_major_cuda_than_torchs_is_named_not_used(tmp_path):
    real = Path(shutil.which("nvcc")).resolve()
    other = int(torch.version.cuda.split(".")[0]) - 1
    fake = tmp_path / "bin" / "nvcc"  # the real compiler, saying it is CUDA (torch's major - 1).8
    fake.parent.mkdir()
    fake.write_text(f'#!/bin/sh\n[ "$1" = --version ] && {{ echo "Cuda compilation tools, release {other}.8, '
                    f'V{other}.8.93"; exit 0; }}\nexec "{real}" "$@"\n')
    fake.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_HOME", "CUDA_PATH", "CUDACXX")}
    env.update(PATH=f"{fake.parent}{os.pathsep}{env['PATH']}", TORCH_CUDA_ARCH_LIST="9.0")
    build = tmp_path / "build"
    r = _configure(build, "-DDLLM_CUDA=ON", env=env)
    assert r.returncode != 0, r.stderr[-2000:]
    assert f"nvcc ({fake}) is CUDA {other}.8 but torch {torch.__version__} was built with CUDA " \
           f"{torch.version.cuda}, and their major versions must agree" in " ".join(r.stderr.split()), r.stderr[-2000:]
    # by default the build goes on without the CUDA kernels, and says why
    r = _configure(build, "-DDLLM_CUDA=AUTO", env=env)
    assert r.returncode == 0 and "building CPU kernels only: nvcc" in r.stderr, r.stderr[-2000:]
    assert 'CUDA_ARCHS = ""' in (build / "_build_config.py").read_text()
    # the nvcc named then by CUDACXX is taken in the same build folder, the one on PATH forgotten
    r = _configure(build, "-DDLLM_CUDA=ON", env=dict(env, CUDACXX=str(real)))
    assert r.returncode == 0, r.stderr[-2000:]
    assert 'CUDA_ARCHS = "90' in (build / "_build_config.py").read_text()
