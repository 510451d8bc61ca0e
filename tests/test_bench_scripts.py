"""The bench/ scripts on the CPU at toy sizes: each runs to the end and writes its results.

They are the GPU session's main job (scripts/gpu_check.sh runs them with the GPU's shapes), so a
script broken by a refactor must fail here, not there. These runs time nothing worth reading.
"""

import argparse
import importlib
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from _train_helpers import ascii_locale, make_corpus, tiny
from test_e2e import _cells as markdown_rows

BENCH = Path(__file__).resolve().parents[1] / "bench"

FEW = ["--reps", "2", "--warmup", "1", "--threads", "1"]
RUNS = {
    "attention": ["--shapes", "1x2x33x16", *FEW],
    "attention_backward": ["--shapes", "1x2x33x16", "--backward", *FEW],
    "attention_decode": ["--shapes", "2x4x2x40x33x16", "--queries", "1,3", "--dtype", "fp32", *FEW],
    "sample_categorical": ["--shapes", "8x301", *FEW],
    "unmask_step": ["--shapes", "1x16x301", *FEW],
    "sedd_step": ["--shapes", "1x16x301", "--no-compile", *FEW],
    "sedd_losses": ["--shapes", "1x16x301", *FEW],
    "rotary": ["--shapes", "2x9x3x70", "--no-compile", *FEW],
    "adaln": ["--shapes", "2x9x70", "--no-compile", *FEW],
    "train_step": ["--shapes", "2x9x37", "--objectives", "mdlm,sedd,llada", *FEW],
    "published_latency": ["--tiny", "--gen", "8", "--prompt", "4", "--steps", "2"],
    "vocab_head": ["--shapes", "2x9x24x37", *FEW],
}


# The floor's bytes of RUNS' shapes, by hand: every byte that must be read or written, once.
FLOOR_BYTES = {
    # B2 H4 Hkv2 n33 D16 fp32: keys and values 2 * 2 * 33 * 2 * 16 * 4, plus queries read and output
    # written 2 * 2 * Sq * 4 * 16 * 4
    "attention_decode": {"B2 Sq1 H4 Hkv2 C40 n33 D16": 16896 + 1024, "B2 Sq3 H4 Hkv2 C40 n33 D16": 16896 + 3072},
    "sample_categorical": {"8x301": 8 * 301 * 2 + 8 * (8 + 4)},  # bf16 logits; int64 token + fp32 logprob out
    "unmask_step": {"1x16x301": 16 * 301 * 2 + 16 * 8 * 2},  # bf16 logits; int64 x read and written
    "sedd_step": {"1x16x301": 16 * 301 * 2 + 16 * 8 * 2},  # every position masked: every row read
    "sedd_losses": {"1x16x301": 16 * 301 * 2 * 2},  # logits read, d(logits) written (the last row's: fwd+bwd)
    # q (a view of a fused qkv) read and written, fp32 cos and sin tables [S, D / 2] read
    "rotary": {"2x9x3x70": 2 * (2 * 9 * 3 * 70) * 2 + 2 * (9 * 35) * 4},
    # the last row of the shape, sedd_step's: fp32 logits read once; int64 x read and written
    "vocab_head": {"B2 L9 D24 V37": 2 * 9 * 37 * 4 + 2 * 9 * 8 * 2},
}

# Attention's FLOPs of RUNS' shape, B1 H2 L33 D16: 4 B H Sq Sk D a forward, 3.5x that forward +
# backward (FlashAttention's convention: a backward is 2.5 forwards). Rows with lengths count the
# keys that exist, and the padded L x L beside.
FLOPS = {"attention": 4 * 2 * 33 * 33 * 16, "attention_backward": 3.5 * 4 * 2 * 33 * 33 * 16}


@pytest.mark.parametrize("name", sorted(RUNS))
def test_bench_script_runs(name, tmp_path):
    script = BENCH / (name.removesuffix("_backward") + ".py")
    # under an ASCII locale, into a folder whose name it cannot decode, which summary.md's command names
    tmp_path = tmp_path / "donn\u00e9es \u2713"
    r = subprocess.run([sys.executable, str(script), "--device", "cpu", *RUNS[name], "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=600, cwd=BENCH, env=ascii_locale())
    assert r.returncode == 0, r.stderr[-3000:]
    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    result = json.loads((tmp_path / "results.json").read_text(), parse_constant=refuse)
    assert result["rows"] and result["meta"]["torch"]
    if "--reps" in RUNS[name]:
        assert (result["meta"]["reps"], result["meta"]["warmup"]) == (2, 1) and "1 threads" in result["meta"]["card"]
    assert all(row["median_ms"] > 0 for row in result["rows"] if row["note"] != "out of memory")
    summary = (tmp_path / "summary.md").read_text(encoding="utf-8")
    assert summary.startswith("# ") and f"--out {tmp_path}`" in summary
    if name in FLOOR_BYTES:
        assert {row["shape"]: row["bytes"] for row in result["rows"]} == FLOOR_BYTES[name]
    if name in FLOPS:
        for row in result["rows"]:
            rate = row["extra"]["tflops"]
            padded = row["extra"].get("tflops_padded", rate)
            assert padded * row["median_ms"] * 1e9 == pytest.approx(FLOPS[name])
            assert (33 // 2) / 33 <= rate / padded <= 1  # every kv_len in [L / 2, L]



BAD_FLAGS = [
    ("unmask_step", ["--shapes", "1x64"], "--shapes: '1x64' is not BxLxV (3 positive integers joined by x)"),
    ("sample_categorical", ["--shapes", "4xbig"], "--shapes: '4xbig' is not ROWSxV"),
    ("sample_categorical", ["--temperature", "0"], "--temperature must be positive and finite, got 0.0"),
    ("unmask_step", ["--warmup", "0"], "--warmup: must be at least 1"),
    ("sedd_step", ["--cases", "absorb"], "--cases: each case is graph:method"),
    ("attention_decode", ["--queries", "abc"], "--queries: comma-separated positive integers"),
    ("published_latency", ["--tiny", "--models", "Foo"], "--models: unknown Foo"),
    ("published_latency", ["--tiny", "--batch", "0"], "--batch: must be at least 1, got 0"),
    ("step_latency", ["--temperature", "-1"], "temperature must be finite and >= 0"),
    ("e2e", ["--out-dir", "{file}/report"], "is a file, not a folder"),
]


@pytest.mark.parametrize("name, args, message", BAD_FLAGS, ids=[f"{n}-{a[-2]}" for n, a, _ in BAD_FLAGS])
def test_bench_scripts_refuse_bad_flags_in_one_line(name, args, message, tmp_path):
    (tmp_path / "file").write_text("")
    args = [a.format(file=tmp_path / "file") for a in args]
    r = subprocess.run([sys.executable, str(BENCH / f"{name}.py"), *args], capture_output=True, text=True,
                       timeout=300, cwd=tmp_path)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]

def test_results_are_written_after_every_row(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    from common import Results, Row

    rows = Results(tmp_path, "title", {"card": "c", "torch": "t", "date": "d", "commit": "x", "floor_gbps": 1.0,
                                       "command": "cmd"})
    for n in (1, 2):  # a run killed here keeps the rows so far
        rows.append(Row("op", "1x1", "fp32", f"impl {n}", 1.0, 1.0, 1.0, 8, 1.0, 100.0))
        assert len(json.loads((tmp_path / "results.json").read_text())["rows"]) == n


def test_dllm_rows_time_the_streaming_switches_on_cuda_only_each_call_setting_them(monkeypatch):
    """The streaming kernels read DLLM_L2_PREFETCH and DLLM_ASYNC_COPIES at every call: each row
    sets both before its own call, so rows timed in turns run as their names say."""
    monkeypatch.syspath_prepend(str(BENCH))
    from common import dllm_rows, with_streaming

    monkeypatch.setenv("DLLM_L2_PREFETCH", "1")
    monkeypatch.setenv("DLLM_ASYNC_COPIES", "1")
    seen = []

    def fn():
        seen.append((os.environ["DLLM_L2_PREFETCH"], os.environ["DLLM_ASYNC_COPIES"]))

    assert [name for name, _ in dllm_rows(fn, "cpu")] == ["dllm"]
    rows = dllm_rows(fn, "cuda:0")
    assert [name for name, _ in rows] == ["dllm", "dllm, L2 prefetch", "dllm, async copies"]
    for _ in range(2):
        for _, call in rows:
            call()
    assert seen == [("0", "0"), ("1", "0"), ("0", "1")] * 2
    with pytest.raises(ValueError, match="not a streaming switch"):
        with_streaming(fn, "DLLM_ASYNC_COPY")


def test_peers_are_timed_in_turns_with_dllm(tmp_path, monkeypatch):
    """measure_against calls dllm and its peers in turns, so load drift hits every ratio alike; a
    peer that runs out of memory gets its row and sits out."""
    monkeypatch.syspath_prepend(str(BENCH))
    import torch
    from common import measure_against

    calls = []

    def impl(name, seconds):
        def fn():
            calls.append(name)
            time.sleep(seconds)
        return fn

    def oom():
        calls.append("oom")
        raise torch.OutOfMemoryError("no room")

    rows = measure_against("op", "1x1", "fp32", [("dllm", impl("dllm", 0.001)), ("big", oom), ("slow", impl("slow", 0.004))],
                           "cpu", 8, 1.0, warmup=1, reps=4)
    assert [r.impl for r in rows] == ["dllm", "big", "slow"]
    assert calls == ["dllm", "oom", "slow"] + ["dllm", "slow"] * 4
    assert rows[1].note == "out of memory" and rows[1].median_ms != rows[1].median_ms
    assert rows[2].ratio_vs_dllm == pytest.approx(rows[2].median_ms / rows[0].median_ms) and rows[2].ratio_vs_dllm > 2

    def refuses():
        raise RuntimeError("No available kernel.\nmore detail")

    rows = measure_against("op", "1x1", "fp32", [("dllm", impl("dllm", 0)), ("flash", refuses)], "cpu", 8, 1.0,
                           warmup=1, reps=1, refused_by=(RuntimeError,))
    assert rows[1].note == "No available kernel." and rows[1].ratio_vs_dllm != rows[1].ratio_vs_dllm
    def faults():
        raise torch.AcceleratorError("CUDA error: an illegal memory access was encountered")

    with pytest.raises(torch.AcceleratorError):  # a sticky device error is not a peer refusing its inputs
        measure_against("op", "1x1", "fp32", [("dllm", impl("dllm", 0)), ("wgmma", faults), ("flash", refuses)], "cpu",
                        8, 1.0, warmup=1, reps=1, refused_by=(RuntimeError,))
    with pytest.raises(RuntimeError, match="No available kernel"):  # dllm's own failure is never a row
        measure_against("op", "1x1", "fp32", [("dllm", refuses), ("slow", impl("slow", 0))], "cpu", 8, 1.0,
                        refused_by=(RuntimeError,))


def test_train_summary_names_where_each_run_was_trained(tmp_path):
    from dllm.training import train

    corpus = make_corpus(tmp_path / "corpus")
    run = tmp_path / "mdlm \u2713"  # summarised under an ASCII locale, by a command that names it
    train(**tiny(run, corpus, steps=2, eval_every=2, out_dir=str(run)))
    r = subprocess.run([sys.executable, str(BENCH / "train_summary.py"), str(run), "--out", str(tmp_path / "out")],
                       capture_output=True, text=True, timeout=600, cwd=BENCH, env=ascii_locale())
    assert r.returncode == 0, r.stderr[-3000:]
    summary = (tmp_path / "out" / "summary.md").read_text(encoding="utf-8")
    provenance = json.loads((run / "run_config.json").read_text())["provenance"]
    assert provenance["card"].startswith("CPU") and provenance["commit"] and provenance["started"]
    assert f"Run mdlm: started {provenance['started']} on {provenance['card']}" in summary
    assert "Summarised " in summary and f"train_summary.py {run} --out" in summary


def test_attention_backward_timing_leaves_no_grad_to_accumulate(monkeypatch):
    """bench/attention.py --backward times forward + backward without accumulating into q, k and v's
    .grad: from the second call on that adds a read-modify-write of all three to every timed call."""
    monkeypatch.syspath_prepend(str(BENCH))
    import torch
    from attention import timed_call

    import dllm

    q, k, v = (torch.randn(1, 9, 2, 16).requires_grad_() for _ in range(3))
    call = timed_call(lambda: dllm.ops.attention(q, k, v), (q, k, v), backward=True)
    for _ in range(2):
        call()
    assert q.grad is None and k.grad is None and v.grad is None


def test_rotary_timed_calls_do_no_work_on_the_tables_alone(monkeypatch):
    """bench/rotary.py's peer is RoPE as models wrote it, whose tables were widened to D once a
    forward and shared by every layer's q and k: widening them in each timed call charged the peer
    with work its models did not do there. Every op of a timed call yields x, or half of it."""
    monkeypatch.syspath_prepend(str(BENCH))
    import rotary

    (impls,) = _captured_impls(monkeypatch, rotary, ["--shapes", "2x5x3x8", "--no-compile"])
    x_numel = 2 * 5 * 3 * 8
    assert [name for name, _ in impls] == ["dllm", "torch, rotate-half"]
    for name, call in impls:
        sizes = [t.numel() for _, outs in ops_run(call) for t in outs]
        assert sizes and min(sizes) >= x_numel // 2, (name, sizes)
    dllm_out, peer_out = (call() for _, call in impls)
    torch.testing.assert_close(peer_out, dllm_out)


def test_peak_extra_memory_is_in_the_mb_its_notes_print(monkeypatch):
    """peak_extra_mb: the peak allocated while fn runs, less what was allocated before it, in MB
    (10^6 bytes), the unit the notes ("peak extra memory ... MB") and docs/benchmarks.md's GB give. It
    returned MiB, which the notes printed as MB, 4.9% low. CUDA's counters faked (no GPU needed)."""
    monkeypatch.syspath_prepend(str(BENCH))
    from common import peak_extra_mb

    allocated = {"now": 7_000_000, "peak": 7_000_000}

    def fn():
        allocated["peak"] = allocated["now"] + 3_000_000  # a temporary of 3 MB, freed before returning

    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats",
                        lambda device=None: allocated.update(peak=allocated["now"]))
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: allocated["now"])
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: allocated["peak"])
    assert peak_extra_mb(fn, "cuda") == pytest.approx(3.0)
    assert peak_extra_mb(fn, "cpu") != peak_extra_mb(fn, "cpu")  # NaN: not measured


def test_cuda_timing_runs_on_the_timed_device(monkeypatch):
    """`--device cuda:1` on a machine whose current device is cuda:0: the events, the synchronizes
    and the timed calls all belong to cuda:1. CUDA events record on the current device's stream, and
    torch.cuda.synchronize() waits for the current device only: events on an idle cuda:0 around work
    on cuda:1 time nothing. Faked here (no GPU needed): a current device, events and synchronize."""
    import contextlib
    from types import SimpleNamespace

    import torch

    import dllm.benchmarks.common as common

    current, seen = ["cuda:0"], []

    @contextlib.contextmanager
    def device_context(device):
        previous, current[0] = current[0], str(device)
        try:
            yield
        finally:
            current[0] = previous

    class Event:
        def __init__(self, enable_timing=False):
            pass

        def record(self, stream=None):
            seen.append(("record", current[0]))

        def synchronize(self):
            seen.append(("event sync", current[0]))

        def elapsed_time(self, end):
            return 1.0

    def synchronize(device=None):
        seen.append(("synchronize", current[0] if device is None else str(torch.device(device))))

    monkeypatch.setattr(torch.cuda, "device", device_context)
    monkeypatch.setattr(torch.cuda, "Event", Event)
    monkeypatch.setattr(torch.cuda, "synchronize", synchronize)
    monkeypatch.setattr(common._Clock, "__init__", lambda self, device: (
        setattr(self, "cuda", True), setattr(self, "flush", SimpleNamespace(zero_=lambda: None)),
        setattr(self, "start", Event()), setattr(self, "end", Event()))[0])
    common.time_interleaved([lambda: seen.append(("call", current[0]))], "cuda:1", warmup=1, reps=2)
    common.time_ms(lambda: seen.append(("call", current[0])), "cuda:1", warmup=1, reps=2, min_seconds=0)
    assert {what for what, _ in seen} == {"record", "event sync", "synchronize", "call"}
    assert [s for s in seen if s[1] != "cuda:1"] == []


def test_the_timed_decode_step_takes_generates_eager_path(monkeypatch):
    from dllm.benchmarks.step_latency import _decode_steps
    from dllm.models import build_model, model_config
    from dllm.models.layers import KVCache

    positions, decode = [], KVCache.decode

    def spy(self, layer, position, k, v):
        positions.append(position)
        return decode(self, layer, position, k, v)

    monkeypatch.setattr(KVCache, "decode", spy)
    model = build_model(model_config("tiny", arch="ar", vocab_size=40, hidden=32, layers=1, cond_dim=16)).eval()
    model.generate(torch.zeros(2, 1, dtype=torch.int64), 3, temperature=1.0)
    generated = {type(p) for p in positions}
    positions.clear()
    with torch.no_grad():
        for name, step in _decode_steps(model, 2, 16, torch.device("cpu"), 1.0, graphs=False).items():
            step()
            assert {type(p) for p in positions} == generated == {int}, name  # an int: SDPA on the filled prefix
            positions.clear()


def test_quantiles_lie_equally_far_from_the_median():
    from dllm.benchmarks.common import quantile
    times = [float(t) for t in range(1, 11)]  # median 5.5; times[int(0.8 * 10)] read p80 as 9
    assert (quantile(times, 0.2), quantile(times, 0.8)) == (3.0, 8.0)
    assert quantile([4.0], 0.8) == 4.0 and quantile(times, 0.0) == 1.0 and quantile(times, 1.0) == 10.0


def test_timing_defaults_follow_the_device():
    from dllm.benchmarks.common import add_timing_options, timing_of

    p = argparse.ArgumentParser()
    add_timing_options(p, cpu=(1, 3), cuda=(4, 25), min_warmup=1)
    assert timing_of(p.parse_args([]), "cpu") == {"warmup": 1, "reps": 3}
    assert timing_of(p.parse_args([]), "cuda:1") == {"warmup": 4, "reps": 25}
    assert timing_of(p.parse_args(["--reps", "7"]), "cuda") == {"warmup": 4, "reps": 7}
    assert timing_of(p.parse_args(["--warmup", "2"]), "cpu") == {"warmup": 2, "reps": 3}


def test_cpu_timings_are_in_milliseconds():
    from dllm.benchmarks.common import time_interleaved, time_ms

    for times in (time_ms(lambda: time.sleep(0.012), "cpu", warmup=0, reps=3, min_seconds=0),
                  time_interleaved([lambda: time.sleep(0.012)], "cpu", warmup=0, reps=3)[0]):
        assert len(times) == 3 and all(11.0 <= t < 1000.0 for t in times), times


def test_results_never_hold_a_number_json_refuses():
    from dllm.benchmarks.common import null_for_nan

    value = {"a": [1.5, float("nan"), (float("inf"), 2)], "b": {"c": -float("inf")}, "d": "nan", "e": 3}
    got = json.loads(json.dumps(null_for_nan(value), allow_nan=False))
    assert got == {"a": [1.5, None, [None, 2]], "b": {"c": None}, "d": "nan", "e": 3}


def test_built_in_restores_the_default_dtype():
    from dllm.benchmarks.common import built_in

    before = torch.get_default_dtype()
    with built_in("cpu", torch.float64):
        assert torch.empty(2).dtype == torch.float64
    assert torch.get_default_dtype() == before and torch.empty(2).dtype == before
    with pytest.raises(RuntimeError, match="inside"):
        with built_in("cpu", torch.bfloat16):
            raise RuntimeError("inside")
    assert torch.get_default_dtype() == before


def run_script(name, args, out):
    r = subprocess.run([sys.executable, str(BENCH / f"{name}.py"), "--device", "cpu", *args, "--out", str(out)],
                       capture_output=True, text=True, timeout=600, cwd=BENCH)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads((out / "results.json").read_text())


def test_rows_carry_the_sorted_spread_the_rate_in_gb_and_the_share_of_the_floor(monkeypatch):
    """row_of: median, p20 and p80 of the calls' times in any order (p20 <= median <= p80), the rate
    in GB/s (10^9 bytes) of the op's bytes in the median time, its share of the floor in percent."""
    monkeypatch.syspath_prepend(str(BENCH))
    from common import row_of

    from dllm.benchmarks.common import quantile

    rng = random.Random(7)
    for n in (3, 6, 11):
        times = [rng.uniform(0.5, 9.0) for _ in range(n)]
        nbytes, floor = rng.randrange(10**6, 10**9), rng.uniform(5, 500)
        row = row_of("op", "1x1", "fp32", "dllm", list(times), nbytes, floor)
        ordered = sorted(times)
        median = statistics.median(times)
        assert row.median_ms == median
        assert (row.p20_ms, row.p80_ms) == (quantile(ordered, 0.2), quantile(ordered, 0.8))
        assert row.p20_ms <= row.median_ms <= row.p80_ms
        assert row.gbps == pytest.approx(nbytes / (median / 1e3) / 1e9, rel=1e-12)
        assert row.pct_floor == pytest.approx(100 * row.gbps / floor, rel=1e-12)


def test_every_implementation_gets_the_warmup_it_is_given(monkeypatch):
    """measure_against with --warmup 3: each implementation is called 3 times untimed (its first call,
    which checks that it runs, among them) before its timed calls; time_interleaved and time_ms warm
    each of their functions up alike, and time_ms keeps calling for min_seconds."""
    monkeypatch.syspath_prepend(str(BENCH))
    from common import measure_against

    from dllm.benchmarks.common import time_interleaved, time_ms

    calls = []

    def impl(name):
        return lambda: calls.append(name)

    measure_against("op", "1x1", "fp32", [("dllm", impl("dllm")), ("peer", impl("peer")), ("other", impl("other"))],
                    "cpu", 8, 1.0, warmup=3, reps=2)
    assert {name: calls.count(name) for name in ("dllm", "peer", "other")} == {"dllm": 5, "peer": 5, "other": 5}
    assert calls[-6:] == ["dllm", "peer", "other"] * 2  # the timed calls, in turns

    calls.clear()
    times = time_interleaved([impl("a"), impl("b")], "cpu", warmup=2, reps=3)
    assert [len(t) for t in times] == [3, 3] and calls.count("a") == calls.count("b") == 5

    calls.clear()
    assert len(time_ms(impl("c"), "cpu", warmup=2, reps=3, min_seconds=0)) == 3 and calls == ["c"] * 5
    calls.clear()
    slow = time_ms(lambda: time.sleep(0.002), "cpu", warmup=0, reps=2, min_seconds=0.05)
    assert 5 <= len(slow) <= 40  # calls until 50 ms passed, at most 20 x reps


def test_the_copy_floor_counts_the_bytes_read_and_written(monkeypatch):
    """copy_bandwidth_gbps(nbytes): copies nbytes / 2 into nbytes / 2 (read + written: nbytes) and
    divides nbytes by the median time; matmul_tflops counts 2 n^3 FLOPs a product."""
    monkeypatch.syspath_prepend(str(BENCH))
    import common

    seen = []

    def fake_time_ms(fn, device, **kw):
        seen.append(fn())
        return [4.0, 2.0, 3.0]  # median 3 ms

    monkeypatch.setattr(common, "time_ms", fake_time_ms)
    nbytes = 6 << 20
    assert common.copy_bandwidth_gbps("cpu", nbytes) == pytest.approx(nbytes / 3e-3 / 1e9, rel=1e-12)
    assert seen[-1].numel() * seen[-1].element_size() == nbytes // 2
    rate = common.matmul_tflops("cpu", torch.float32)
    n = seen[-1].shape[0]
    assert seen[-1].shape == (n, n) and rate == pytest.approx(2 * n**3 / 3e-3 / 1e12, rel=1e-12)


def test_default_shapes_follow_the_device(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    from common import bench_parser, parse_bench_args

    for device, want in (("cpu", [(2, 3)]), ("cuda", [(5, 7), (1, 9)])):
        ap = bench_parser("d", "BxL", "5x7,1x9", "2x3")
        monkeypatch.setattr(sys, "argv", ["bench.py", "--device", device])
        _, shapes, reps = parse_bench_args(ap, cpu=(1, 3))
        assert shapes == want, device


def test_threads_option_sets_torchs_thread_count():
    from dllm.benchmarks.common import add_timing_options, timing_of

    p = argparse.ArgumentParser()
    add_timing_options(p, cpu=(1, 3))
    before = torch.get_num_threads()
    want = 3 if before != 3 else 2
    try:
        timing_of(p.parse_args(["--threads", str(want)]), "cpu")
        assert torch.get_num_threads() == want
    finally:
        torch.set_num_threads(before)


def test_adaln_floor_bytes(tmp_path):
    """adaln reads x and writes y (2 x the stream); adaln_residual reads x and update and writes the
    new stream and its adaLN (4 x)."""
    result = run_script("adaln", ["--shapes", "2x9x70", "--no-compile", *FEW], tmp_path)
    stream = 2 * 9 * 70 * 2  # bf16
    assert {(r["op"], r["bytes"]) for r in result["rows"]} == {("adaln", 2 * stream), ("adaln_residual", 4 * stream)}


def test_absorbing_floors_count_only_the_masked_rows(tmp_path):
    """--mask-frac 0: no position is masked, so the absorbing graph's step reads no logits row (x read
    and x_next written only; the uniform graph still reads every row), and the losses read no logits
    (d(logits) written only). Their notes give the time over the floor's."""
    rows = run_script("sedd_step", ["--shapes", "1x16x301", "--no-compile", "--mask-frac", "0", *FEW],
                      tmp_path / "step")["rows"]
    want = {"sedd_step absorb/analytic": 16 * 16, "sedd_step absorb/euler": 16 * 16,
            "sedd_step uniform/analytic": 16 * 301 * 2 + 16 * 16}
    assert {r["op"]: r["bytes"] for r in rows} == want
    result = run_script("sedd_losses", ["--shapes", "1x16x301", "--mask-frac", "0", *FEW], tmp_path / "losses")
    floor = result["meta"]["floor_gbps"]
    assert {r["bytes"] for r in result["rows"]} == {16 * 301 * 2}
    # the backward alone is timed too; the forward alone, reading no row, is not
    assert [r["op"] for r in result["rows"] if "alone" in r["op"]] == [
        "score_entropy_loss absorb bwd alone", "masked_diffusion_loss bwd alone"]
    for r in result["rows"]:
        if r["impl"] == "dllm":
            floor_ms = r["bytes"] / (floor * 1e9) * 1e3
            assert r["note"].startswith(f"{r['median_ms'] / floor_ms:.2f}x "), r["note"]


def test_published_latency_counts_the_weights_read_and_the_batchs_tokens(tmp_path, monkeypatch):
    """The tiny fp32 models: bytes = 4 x the parameters past the input embedding per forward (the
    generate row: one forward a step), tokens/s = batch x generated tokens over the median time,
    TFLOP/s = 2 x params x batch x tokens over the step's time."""
    monkeypatch.syspath_prepend(str(BENCH))
    from published_latency import build

    B, P, G, steps = 2, 4, 8, 2
    result = run_script("published_latency", ["--tiny", "--batch", str(B), "--prompt", str(P), "--gen", str(G),
                                              "--steps", str(steps)], tmp_path)
    for name in ("LLaDA-8B", "Dream-7B"):
        net = build(name, True, "cpu", torch.float32)[0].net
        params = sum(p.numel() for p in net.parameters()) - net.embed.weight.numel()
        step, gen = (r for r in result["rows"] if r["impl"].startswith(name))
        assert (step["bytes"], gen["bytes"]) == (4 * params, 4 * params * steps)
        assert gen["extra"]["tokens_per_s"] == pytest.approx(B * G / (gen["median_ms"] * 1e-3), rel=1e-9)
        tflops = 2 * params * B * (P + G) / (step["median_ms"] * 1e-3) / 1e12
        assert f"{params / 1e6:,.1f}M params" in step["note"] and f"{tflops:.3f} TFLOP/s" in step["note"]


def test_matmul_floored_rows_report_their_share_of_the_matmul_rate(tmp_path):
    """vocab_head's GEMM rows: 2 B L D V FLOPs over the median (the note's GFLOP/s on the CPU) and that
    rate's share of the matmul floor; attention's rows: their TFLOP/s' share of it."""
    result = run_script("vocab_head", ["--shapes", "2x9x24x37", *FEW], tmp_path / "head")
    peak = result["meta"]["matmul_tflops"]
    heads = [r for r in result["rows"] if r["op"] == "head"]
    assert len(heads) == 3
    for r in heads:
        tflops = 2 * 2 * 9 * 24 * 37 / (r["median_ms"] * 1e-3) / 1e12
        assert r["note"] == f"{tflops * 1e3:.1f} GFLOP/s" and r["pct_floor"] == pytest.approx(100 * tflops / peak)
    result = run_script("attention", ["--shapes", "1x2x33x16", *FEW], tmp_path / "attention")
    peak = result["meta"]["matmul_tflops"]
    for r in result["rows"]:
        assert r["pct_floor"] == pytest.approx(100 * r["extra"]["tflops"] / peak)


def test_train_step_peer_computes_the_head_at_every_position(monkeypatch):
    """bench/train_step.py's "full head" peer computes every position's logits, dllm's only the masked
    ones: the peer's step counts more FLOPs, by the head's on the unmasked positions."""
    from torch.utils.flop_counter import FlopCounterMode

    monkeypatch.syspath_prepend(str(BENCH))
    import train_step

    impls = _captured_impls(monkeypatch, train_step, ["--shapes", "2x9x37", "--objectives", "mdlm"])
    (timed,) = impls
    flops = {}
    for name, step in timed:
        with FlopCounterMode(display=False) as counter:
            step()
        flops[name] = counter.get_total_flops()
    dllm_flops, full = flops["dllm (head on masked positions)"], flops["full head"]
    assert full > dllm_flops, flops


def test_the_llada_peer_draws_and_scores_in_float64(monkeypatch):
    """sample_categorical's LLaDA peer: float64 logits and noise (LLaDA's add_gumbel_noise)."""
    monkeypatch.syspath_prepend(str(BENCH))
    from sample_categorical import gumbel_fp64_llada

    logits = torch.randn(5, 67).bfloat16()
    dtypes = [(op, t.dtype) for op, outs in ops_run(lambda: gumbel_fp64_llada(logits, 0.7))
              for t in outs if t.numel() == logits.numel()]
    assert any("exp" in f and d == torch.float64 for f, d in dtypes), dtypes
    assert any("rand" in f and d == torch.float64 for f, d in dtypes), dtypes


def test_timed_steps_leave_the_fresh_canvas_untouched(monkeypatch):
    """Every timed call starts from the benchmark's fully masked canvas: dllm's step commits into a
    copy (bench/unmask_step.py, `dllm bench step`), or a second call would find fewer masked positions."""
    monkeypatch.syspath_prepend(str(BENCH))
    from unmask_step import dllm_step, llada_step, mask_id_for

    V = 301
    logits = torch.randn(2, 40, V).bfloat16()
    x = torch.full((2, 40), mask_id_for(V))
    k = torch.full((2,), 3)
    for step in (dllm_step, llada_step):
        out = step(logits, x, k, 1.0)
        assert (x == mask_id_for(V)).all() and ((out != x).sum(-1) <= 3).all() and (out != x).any(), step

    import dllm
    from dllm.benchmarks import step_latency

    seen = []
    real = {name: getattr(dllm.ops, name) for name in ("sedd_step", "predict_masked")}
    monkeypatch.setattr(dllm.ops, "sedd_step", lambda logits, x, *a, **kw: seen.append(int((x == 257).sum()))
                        or real["sedd_step"](logits, x, *a, **kw))
    monkeypatch.setattr(dllm.ops, "predict_masked", lambda logits, x, **kw: seen.append(int((x == 257).sum()))
                        or real["predict_masked"](logits, x, **kw))
    for case in step_latency.PRESETS["tiny"][:2]:  # sedd, llada
        model = step_latency._random_model(case, torch.device("cpu"), torch.float32)
        with torch.no_grad():
            steps = step_latency._steps(case, model, torch.device("cpu"), 1.0, graphs=False)
            seen.clear()
            for _ in range(3):
                steps["dllm step"]()
        assert seen == [case.batch * case.length] * 3, (case.kind, seen)


def test_the_eager_llada_step_scores_in_float64():
    """LLaDA's generate.py takes the confidence from a float64 softmax of the logits (and the Gumbel
    draw in float64): the eager peer does that work, not a cheaper float32 softmax."""
    from dllm.benchmarks.step_latency import llada_eager_step

    logits = torch.randn(2, 9, 41)
    x = torch.full((2, 9), 40)
    for temperature in (0.0, 1.0):
        softmaxes = [outs[0].dtype for op, outs in ops_run(lambda: llada_eager_step(logits, x, torch.tensor([2, 3]),
                                                                                   temperature, 40))
                     if "softmax" in op]
        assert softmaxes == [torch.float64], (temperature, softmaxes)


def ops_run(fn) -> list[tuple[str, list[torch.Tensor]]]:
    """The aten ops fn runs, each with its tensor outputs."""
    from torch.utils._python_dispatch import TorchDispatchMode

    ran = []

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            ran.append((str(func), [t for t in (out if isinstance(out, (tuple, list)) else [out])
                                    if isinstance(t, torch.Tensor)]))
            return out

    with Record():
        fn()
    return ran


def _captured_impls(monkeypatch, module, argv):
    """Runs a bench script's main() on the CPU with argv, one untimed and one timed call, its floors
    faked, and returns each measure_against call's (name, fn) list."""
    impls, measure_against = [], module.measure_against

    def capture(op, shape, dtype, timed, *args, **kw):
        impls.append(list(timed))
        return measure_against(op, shape, dtype, timed, *args, **kw)

    monkeypatch.setattr(module, "measure_against", capture)
    for floor in ("copy_bandwidth_gbps", "matmul_tflops"):
        if hasattr(module, floor):
            monkeypatch.setattr(module, floor, lambda *device_and_dtype: 1.0)
    monkeypatch.setattr(sys, "argv", [f"{module.__name__}.py", "--device", "cpu", *argv, "--reps", "1", "--warmup", "1"])
    module.main()
    return impls


def test_attention_decode_peers_attend_over_the_same_keys(monkeypatch):
    """Both SDPA peers of bench/attention_decode.py compute dllm's output: the n filled keys, no fewer."""
    monkeypatch.syspath_prepend(str(BENCH))
    import attention_decode

    for impls in _captured_impls(monkeypatch, attention_decode, ["--shapes", "2x4x2x40x33x16", "--queries", "1,3",
                                                                 "--dtype", "fp32"]):
        (_, ours), *peers = impls
        want = ours()
        for name, peer in peers:
            torch.testing.assert_close(peer().transpose(1, 2), want, atol=1e-5, rtol=1e-5, msg=name)


def test_attention_peers_compute_dllms_outputs_and_gradients(monkeypatch):
    """Every peer of bench/attention.py computes what dllm's padded call does, forward and backward:
    SDPA's with the boolean mask, and with lengths the same batch packed (dllm varlen, SDPA jagged):
    every query row, each sequence's kv_len keys."""
    monkeypatch.syspath_prepend(str(BENCH))
    import attention

    groups = _captured_impls(monkeypatch, attention, ["--shapes", "3x2x33x16", "--backward", "--threads", "1"])
    assert [[name for name, _ in g] for g in groups] == [["dllm", "SDPA (CPU)"],
                                                         ["dllm", "SDPA (CPU)", "dllm varlen", "SDPA jagged"]]
    for impls in groups:
        (_, ours), *peers = impls
        want, want_grads = ours()
        for name, peer in peers:
            out, grads = peer()
            packed = out.dim() == 3
            got = out.reshape(want.shape) if packed else out.transpose(1, 2)
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5, msg=name)
            # the packed q is the padded one reshaped; its keys are each sequence's first kv_len
            torch.testing.assert_close(grads[0].reshape(want_grads[0].shape), want_grads[0], atol=1e-5, rtol=1e-5,
                                       msg=name)
            if packed:
                kv_len = (want_grads[1].abs().sum((2, 3)) > 0).sum(1).tolist()  # dk is 0 past each kv_len
                want_kv = [torch.cat([g[b, :n] for b, n in enumerate(kv_len)]) for g in want_grads[1:]]
                assert grads[1].shape[0] == sum(kv_len) < 3 * 33
            else:
                want_kv = want_grads[1:]
            for got_g, want_g in zip(grads[1:], want_kv):
                torch.testing.assert_close(got_g, want_g, atol=1e-5, rtol=1e-5, msg=name)


def test_unmask_peer_runs_at_the_given_temperature(monkeypatch):
    """bench/unmask_step.py's LLaDA peer draws at --temperature, as dllm's step does (at 0 it would skip
    the float64 Gumbel noise that costs LLaDA's step its time)."""
    monkeypatch.syspath_prepend(str(BENCH))
    import unmask_step

    seen, real = [], unmask_step.llada_eager_step
    monkeypatch.setattr(unmask_step, "llada_eager_step", lambda logits, x, k, t, mask_id: seen.append(t)
                        or real(logits, x, k, t, mask_id))
    _captured_impls(monkeypatch, unmask_step, ["--shapes", "1x16x301", "--temperature", "0.7"])
    assert seen and set(seen) == {0.7}


def test_sedd_step_peer_runs_in_float32(monkeypatch):
    """SEDD's sampler post-processes its bf16 network's logits in float32: the eager peer of
    bench/sedd_step.py takes float32 logits, whatever the benchmark's dtype."""
    monkeypatch.syspath_prepend(str(BENCH))
    import sedd_step

    seen = []
    monkeypatch.setattr(sedd_step.ref, "sedd_step", lambda logits, *a, **kw: seen.append(logits.dtype))
    logits = torch.randn(1, 4, 11).bfloat16()
    x = torch.full((1, 4), 10)
    sedd_step.eager(logits, x, torch.full((1,), 0.7), torch.full((1,), 0.01), "absorb", "analytic")
    assert seen == [torch.float32]


def test_train_step_model_flops_match_the_full_head_steps_count(monkeypatch):
    """bench/train_step.py's model_flops (the floor's FLOPs of a step) against torch's FLOP counter over
    the full head's forward and backward: at 9 tokens a sequence the attention's share is about 1%,
    the per-sequence adaLN's less, so the two agree to 5%."""
    from types import SimpleNamespace

    from torch.utils.flop_counter import FlopCounterMode

    monkeypatch.syspath_prepend(str(BENCH))
    import train_step

    from dllm.models import build_model, model_config
    from dllm.objectives import MDLM

    tok = SimpleNamespace(mask_id=36, eos_id=0, vocab_size=37)
    obj = MDLM(tok)
    torch.manual_seed(0)
    net = build_model(model_config("tiny", arch=obj.arch, vocab_size=obj.model_vocab_size, max_seq_len=9,
                                   time_conditioning=obj.time_conditioning))
    x0 = torch.randint(0, 36, (3, 9))
    draws = obj.draw(3, 9, torch.Generator().manual_seed(1))
    with FlopCounterMode(display=False) as counter:
        obj.train_loss(obj.nll(train_step.FullHead(net), x0, draws), 9).backward()
    assert train_step.model_flops(net, 3, 9) == pytest.approx(counter.get_total_flops(), rel=0.05)


def _cells(table: str, first: str = "op") -> list[dict]:
    """The rows of a summary.md table whose header starts with ``| first |``, as {header: cell}
    (test_e2e's reader of the report's tables)."""
    return markdown_rows(table.splitlines(), first)


def test_summary_table_gives_dllms_speedup_and_the_share_of_each_floor(monkeypatch):
    """summary.md's "dllm speedup" is each peer's median over dllm's (above 1: dllm faster); "% of floor"
    is shown for rows of a copy floor and of a matmul floor alike; the CPU's copy floor warns that its
    caches are not flushed (a CUDA run's, which flushes L2, does not)."""
    monkeypatch.syspath_prepend(str(BENCH))
    from common import Row, format_table, measure_against

    rng = random.Random(11)
    base = {"card": "c", "torch": "t", "date": "d", "commit": "x", "command": "cmd"}
    for meta in ({**base, "floor_gbps": rng.uniform(5, 50)},
                 {**base, "floor_gbps": float("nan"), "matmul_tflops": rng.uniform(0.01, 0.9)}):
        dllm_ms, peer_ms = rng.uniform(1, 2), rng.uniform(3, 9)
        rows = [Row("op", "3x5", "bf16", "dllm", dllm_ms, dllm_ms, dllm_ms, 100, 1.0, rng.uniform(10, 90)),
                Row("op", "3x5", "bf16", "peer", peer_ms, peer_ms, peer_ms, 100, 1.0, rng.uniform(1, 9),
                    ratio_vs_dllm=peer_ms / dllm_ms)]
        cells = _cells(format_table("t", meta, rows))
        assert [c["dllm speedup"] for c in cells] == ["1.00x", f"{peer_ms / dllm_ms:.2f}x"]
        assert float(cells[1]["dllm speedup"].rstrip("x")) > 1
        assert [c["% of floor"] for c in cells] == [f"{r.pct_floor:.1f}" for r in rows], meta
    # measure_against's ratios, as the table prints them: a peer 3x slower than dllm reads 3.00x-ish, not 0.33x
    rows = measure_against("op", "1x1", "fp32", [("dllm", lambda: time.sleep(0.001)), ("slow", lambda: time.sleep(0.004))],
                           "cpu", 8, 1.0, warmup=1, reps=3)
    speedup = float(_cells(format_table("t", {**base, "floor_gbps": 1.0}, rows))[1]["dllm speedup"].rstrip("x"))
    assert speedup > 2
    cpu = format_table("t", {**base, "floor_gbps": 20.0}, rows)
    gpu = format_table("t", {**base, "floor_gbps": 20.0, "sms": 132}, rows)
    assert "no cache is flushed" in cpu and "no cache is flushed" not in gpu


@pytest.mark.parametrize("spec", ["0x64x301", "2x0x301", "2x64x0", "1x64x301,0x1x1"])
def test_shapes_with_a_zero_are_refused(spec, monkeypatch):
    """--shapes takes positive integers: a zero dimension is refused in one line, not run."""
    monkeypatch.syspath_prepend(str(BENCH))
    from common import parse_shapes

    with pytest.raises(ValueError, match="positive integers"):
        parse_shapes(spec, "BxLxV")
    assert parse_shapes("1x64x301", "BxLxV") == [(1, 64, 301)]


def test_kernel_benchmarks_default_to_bf16(monkeypatch):
    """--dtype defaults to bf16, as its help says (the FLOOR_BYTES of test_bench_scripts count 2-byte
    logits, which fp16 would match too)."""
    monkeypatch.syspath_prepend(str(BENCH))
    from common import DTYPES, bench_parser, parse_bench_args

    ap = bench_parser("d", "BxL", "5x7", "2x3", dtype_of="logits")
    monkeypatch.setattr(sys, "argv", ["bench.py", "--device", "cpu"])
    args, _, _ = parse_bench_args(ap, cpu=(1, 3))
    assert args.dtype == "bf16" and DTYPES[args.dtype].is_floating_point and DTYPES[args.dtype].itemsize == 2
    assert "(default: bf16)" in ap.format_help()


def test_published_latency_generates_one_token_a_step_by_default(tmp_path, monkeypatch):
    """Without --steps, generate takes --gen steps (one token a step, LLaDA's quality setting, as --steps'
    help says): the generate row's shape names them and its bytes are the weights read once a step."""

    monkeypatch.syspath_prepend(str(BENCH))
    import published_latency

    monkeypatch.setattr(published_latency, "copy_bandwidth_gbps", lambda device: 10.0)  # the floor is not tested here
    P, G = 3, 6
    out = tmp_path / "out"
    monkeypatch.setattr(sys, "argv", ["published_latency.py", "--tiny", "--models", "LLaDA-8B", "--prompt", str(P),
                                      "--gen", str(G), "--out", str(out)])
    published_latency.main()
    step, gen = json.loads((out / "results.json").read_text())["rows"]
    assert gen["shape"] == f"B1 P{P} G{G} steps {G}"
    assert gen["bytes"] == G * step["bytes"] > 0


def test_train_summary_rates_the_training_by_the_time_each_interval_took(tmp_path, monkeypatch):
    """train_summary's "tokens/s (train)" is the tokens over the summed time of the logged intervals
    (each interval's new tokens over its own rate), not over cumulative counts nor a mean of the rates;
    "train s" is the validated tokens at that rate, "wall s" the later of the last records."""

    rng = random.Random(5)
    run = tmp_path / "run"
    run.mkdir()
    tokens, train, seconds = 0, [], 0.0
    for step in range(1, 5):
        new, rate = rng.randrange(1000, 9000), rng.uniform(50, 5000)
        tokens += new
        seconds += new / rate
        train.append({"step": step, "tokens": tokens, "tok_per_s": rate, "loss": 1.0, "elapsed": seconds + 1})
    val = {"step": 4, "tokens": tokens, "elapsed": seconds + 2.6, "val_bits_per_token": 2.5, "val_bpb": 0.75}
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [*train, val]))
    (run / "loss.png").write_bytes(b"png")
    (run / "run_config.json").write_text(json.dumps({
        "objective": {"name": "mdlm"}, "model": {"arch": "dit", "hidden": 64, "layers": 2},
        "data": {"train_bytes": 1000, "val_bytes": 100}, "corpus_hash": "ab" * 10,
        "train": {"tokenizer": "byte", "seq_len": 64, "batch_size": 8, "lr": 1e-3, "schedule": "cosine", "warmup": 2,
                  "max_time": 60, "eval_batches": 2}}))
    monkeypatch.syspath_prepend(str(BENCH))
    import train_summary

    monkeypatch.setattr(sys, "argv", ["train_summary.py", str(run), "--out", str(tmp_path / "out")])
    train_summary.main()
    (row,) = _cells((tmp_path / "out" / "summary.md").read_text(), "objective")
    tps = tokens / seconds
    assert row["tokens/s (train)"] == f"{tps:,.0f}" and row["train s"] == f"{tokens / tps:.0f}"
    assert row["wall s"] == f"{seconds + 2.6:.0f}" and row["steps"] == "4" and row["tokens"] == f"{tokens:,}"


def test_attention_decode_takes_a_full_cache_and_refuses_impossible_shapes(tmp_path, monkeypatch):
    """attention_decode's n (the filled keys) may be the whole cache (n == C: the last decoding step); n
    above C, or heads that are not a multiple of the key-value heads are refused."""

    monkeypatch.syspath_prepend(str(BENCH))
    import attention_decode

    monkeypatch.setattr(attention_decode, "copy_bandwidth_gbps", lambda device: 10.0)

    def run(shape, out):
        monkeypatch.setattr(sys, "argv", ["attention_decode.py", "--device", "cpu", "--dtype", "fp32", "--shapes", shape,
                                          "--queries", "2", "--reps", "1", "--warmup", "1", "--out", str(out)])
        attention_decode.main()
        return json.loads((out / "results.json").read_text())["rows"]

    rows = run("1x4x2x9x9x8", tmp_path / "full")
    assert [r["shape"] for r in rows] == ["B1 Sq2 H4 Hkv2 C9 n9 D8"] * 3 and all(r["median_ms"] > 0 for r in rows)
    for shape in ("1x4x2x9x10x8", "1x3x2x9x9x8"):
        with pytest.raises(SystemExit, match="need 0 < n <= C and H a multiple of Hkv"):
            run(shape, tmp_path / "bad")


@pytest.mark.parametrize("name, args, want", [
    ("vocab_head", ["--shapes", "1x3x8x11"], "float32"),  # the CPU's default dtype
    ("vocab_head", ["--shapes", "1x3x8x11", "--dtype", "fp16"], "float16"),
    ("attention", ["--shapes", "1x2x9x8"], "float32"),
])
def test_the_matmul_floor_is_measured_in_the_benchmarks_dtype(name, args, want, tmp_path, monkeypatch):
    """"% of floor" of the GEMM and attention rows is the share of a square matmul's rate in the dtype the
    rows ran in (a bf16 floor on the CPU, whose bf16 GEMMs crawl, would put fp32 rows far above 100%)."""

    monkeypatch.syspath_prepend(str(BENCH))
    module = importlib.import_module(name)
    seen = []
    monkeypatch.setattr(module, "matmul_tflops", lambda device, dtype: seen.append(dtype) or 0.5)
    if hasattr(module, "copy_bandwidth_gbps"):
        monkeypatch.setattr(module, "copy_bandwidth_gbps", lambda device: 10.0)
    monkeypatch.setattr(sys, "argv", [f"{name}.py", "--device", "cpu", *args, "--reps", "1", "--warmup", "1",
                                      "--out", str(tmp_path)])
    module.main()
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert [str(d).removeprefix("torch.") for d in seen] == [want]
    assert {r["dtype"] for r in rows} <= {want, {"float32": "fp32", "float16": "fp16"}[want]}, rows


def test_train_step_rows_count_the_batchs_tokens_and_flops(tmp_path, monkeypatch):
    """train_step's rows: tokens/s is batch x length over the median step, and "% of floor" the step's
    FLOPs (model_flops of that batch and length) over its median, as a share of the matmul floor."""

    monkeypatch.syspath_prepend(str(BENCH))
    import train_step

    peak, flops, seen = 0.25, 3.7e9, []
    monkeypatch.setattr(train_step, "matmul_tflops", lambda device, dtype: peak)
    monkeypatch.setattr(train_step, "model_flops", lambda net, b, length: seen.append((b, length)) or flops)
    B, L = 3, 11
    monkeypatch.setattr(sys, "argv", ["train_step.py", "--device", "cpu", "--shapes", f"{B}x{L}x37", "--objectives",
                                      "mdlm", "--reps", "1", "--warmup", "1", "--out", str(tmp_path)])
    train_step.main()
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert seen == [(B, L)] and len(rows) == 2
    for r in rows:
        seconds = r["median_ms"] * 1e-3
        assert r["note"] == f"{B * L / seconds:,.0f} tokens/s"
        assert r["pct_floor"] == pytest.approx(100 * flops / seconds / 1e12 / peak, rel=1e-9)


def test_switches_report_says_where_each_switch_beat_the_default(tmp_path, monkeypatch):
    """bench/switches.py pairs each switch row with the default row of its case in the same results
    file, counts an outcome only where the p20-p80 spreads part, and suggests a default from the counts.
    The results are written as the benchmarks write theirs (bench/common.py's rows and writer)."""
    monkeypatch.syspath_prepend(str(BENCH))
    import common
    import switches

    def _timed_row(op, impl, median, spread=0.02, shape="16x1024x50258"):
        # five calls whose p20, median and p80 are median - spread, median and median + spread
        times = [median - spread, median - spread, median, median + spread, median + spread]
        return common.row_of(op, shape, "bf16", impl, times, nbytes=1, floor_gbps=1.0)

    # the names the benchmarks give their switch rows are the ones the report reads
    assert [name for name, _ in common.dllm_rows(lambda: None, "cuda")[1:]] == ["dllm, L2 prefetch", "dllm, async copies"]
    attention = (BENCH / "attention.py").read_text()
    assert all(f'candidates["{name}"]' in attention for name in ("dllm lock-step", "dllm atomic dQ"))
    assert set(switches.SWITCHES) == {"dllm, L2 prefetch", "dllm, async copies", "dllm lock-step", "dllm atomic dQ"}

    step, fwd = "sedd_step absorb/analytic", "attention fwd+bwd"
    meta = {"card": "H100", "commit": "abc", "command": "bench", "torch": torch.__version__, "date": "today",
            "floor_gbps": 1.0}
    common.write_results(tmp_path / "run" / "sedd_step", "sedd_step", meta, [
        _timed_row(step, "dllm", 1.0), _timed_row(step, "dllm, L2 prefetch", 0.9),  # faster: 0.92 < 0.98
        _timed_row(step, "dllm, async copies", 0.97),  # within the spreads
        _timed_row(step, "eager reference", 30.0),
        _timed_row(step, "dllm", 2.0, shape="1x1024x50258"), _timed_row(step, "dllm, L2 prefetch", 2.5, shape="1x1024x50258"),
        common.unmeasured_row(step, "1x1024x50258", "bf16", "dllm, async copies", 1, "failed"),  # no outcome
        _timed_row(step, "dllm, async copies", 0.5, shape="64x128x50258"),  # no default row of its case
    ])
    common.write_results(tmp_path / "run" / "attention_backward", "attention", meta, [
        _timed_row(fwd, "dllm", 1.5, 0.1), _timed_row(fwd, "dllm lock-step", 1.8, 0.1),  # slower: 1.7 > 1.6
        _timed_row(fwd, "dllm atomic dQ", 1.2, 0.1), _timed_row(fwd, "SDPA default", 0.6),
    ])
    (tmp_path / "run" / "e2e").mkdir()
    (tmp_path / "run" / "e2e" / "results.json").write_text(json.dumps({"meta": {}, "throughput": [], "quality": []}))
    out = tmp_path / "switches.md"
    text = switches.main([str(tmp_path / "run"), "--out", str(out)])
    assert out.read_text() == text
    lines = text.splitlines()
    summary = {r["switch"]: [r[k] for k in ("faster", "slower", "within spread", "ratios", "suggests")]
               for r in markdown_rows(lines, "switch")}
    assert summary == {
        "dllm, L2 prefetch": ["1", "1", "0", "0.80-1.11x", "mixed: decide by shape"],
        "dllm, async copies": ["0", "0", "1", "1.03-1.03x", "no difference measured"],
        "dllm lock-step": ["0", "1", "0", "0.83-0.83x", "delete it"],
        "dllm atomic dQ": ["1", "0", "0", "1.25-1.25x", "make it the default"],
    }
    compared = [(r["results"], r["shape"], r["switch"], r["outcome"]) for r in markdown_rows(lines, "results")]
    assert compared == [
        ("attention_backward", "16x1024x50258", "dllm lock-step", "slower"),
        ("attention_backward", "16x1024x50258", "dllm atomic dQ", "faster"),
        ("sedd_step", "16x1024x50258", "dllm, L2 prefetch", "faster"),
        ("sedd_step", "16x1024x50258", "dllm, async copies", "within spread"),
        ("sedd_step", "1x1024x50258", "dllm, L2 prefetch", "slower"),
    ]
    assert "2 results files" in text  # e2e's results hold no kernel rows

    common.write_results(tmp_path / "cpu", "sedd_step", meta, [_timed_row(step, "dllm", 1.0)])
    assert "No switch row" in switches.main([str(tmp_path / "cpu")])


def test_replayed_captures_once_after_a_warm_up_and_then_only_replays(monkeypatch):
    """bench/common.py's replayed(fn): the first call runs fn twice (the warm-up on a side stream, then
    under capture) and replays; every later call only replays. Faked CUDA: the CPU has none."""
    monkeypatch.syspath_prepend(str(BENCH))
    from contextlib import contextmanager
    from types import SimpleNamespace

    import common

    log = []

    class Graph:
        def replay(self):
            log.append("replay")

    @contextmanager
    def stream_or_graph(kind):
        log.append(f"enter {kind}")
        yield
        log.append(f"exit {kind}")

    stream = SimpleNamespace(wait_stream=lambda other: None)
    monkeypatch.setattr(torch.cuda, "Stream", lambda: stream)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda: stream)
    monkeypatch.setattr(torch.cuda, "stream", lambda s: stream_or_graph("stream"))
    monkeypatch.setattr(torch.cuda, "CUDAGraph", Graph)
    monkeypatch.setattr(torch.cuda, "graph", lambda g: stream_or_graph("graph"))
    call = common.replayed(lambda: log.append("fn"))
    call()
    assert log == ["enter stream", "fn", "exit stream", "enter graph", "fn", "exit graph", "replay"]
    log.clear()
    call()
    call()
    assert log == ["replay", "replay"]
    # a capture that raised is not kept: the next call captures again, its error fn's own
    failing = common.replayed(lambda: 1 / 0)
    for _ in range(2):
        with pytest.raises(ZeroDivisionError):
            failing()
