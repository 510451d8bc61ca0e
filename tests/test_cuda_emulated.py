"""dllm's CUDA kernels, and the CUDA bindings that launch them, run on the CPU by the emulator in
tests/cuda_emulator, so that they are tested where no GPU exists.

torch.ops.dllm_emu.<op> is the shipped CUDA binding of dllm::<op> launching the shipped CUDA
kernel, in the emulator, on CPU tensors. Sampling kernels share Philox keys with the CPU ops, so
each draw is compared one to one with the CPU op (itself tested statistically against float64
references); attention is compared with the float64 reference under FlashAttention's error rule.
Every kernel runs under three schedules (thread order between barriers forward, reverse, or one
warp lagging behind the others up to the next barrier; cp.async copies landing as late as a
correct kernel allows or at issue; row loops over 3 blocks or one block a row): a result that
depends on the schedule is a race. Shared memory starts every block as NaN, so reading it before
writing shows; wgmma reads shared memory as the async proxy sees it, so a missing
fence.proxy.async after cp.async shows too. What the emulator cannot see: speed, memory
coalescing, and the exact rounding of __expf and of the tensor cores' accumulation. tests/cuda_emulator/mutate.py checks that these
tests catch planted bugs."""

import re

import pytest
import torch
import torch.utils.cpp_extension as cpp_extension
from cuda_emulator.build import load
from test_attention import EXTREME_SCORES, check, check_gradients, growing_scores_inputs, lse_reference
from test_sedd_losses import backward_calls
from test_sedd_losses import make_inputs as loss_inputs
from test_sedd_losses import SKIPPED_COLUMN_CASES, skipped_column_inputs
from test_adaln import adaln_reference
from test_adaln import check as adaln_check
from test_adaln import inputs as adaln_inputs
from test_rotary import check as rotary_check
from test_rotary import inputs as rotary_inputs
from test_rotary import rotated as rotary_reference
from test_op_contracts import check_far_apart_offsets
from test_unmask import MASK, commit_inputs, masked_batch

import dllm
from dllm.reference.attention import attention as reference_attention

pytestmark = pytest.mark.usefixtures("poisoned_empty")  # outputs start as NaN, not zeros

EMU = torch.ops.dllm_emu
CPU = torch.ops.dllm
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# (thread order, cp.async copies landing as late as allowed rather than at issue, most blocks of
# a grid-stride kernel: 3 makes each block take several rows, as large batches do on the GPU)
SCHEDULES = {
    "forward": (0, True, 0),
    "reverse-copies-at-issue": (1, False, 0),
    "lagging-warp-3-blocks": (2, True, 3),
}


@pytest.fixture(scope="module")
def emulator():
    if not cpp_extension.is_ninja_available():  # `make test` installs it; this is for other environments
        pytest.skip("the CUDA emulator is built with ninja (pip install ninja)")
    return load()


@pytest.fixture(params=list(SCHEDULES))
def schedule(request, emulator):
    emulator.configure(*SCHEDULES[request.param], 1234)
    yield emulator
    emulator.configure(0, True, 0, 0)


def emulated(emulator, op, *args, **kwargs):
    """op(*args) in the emulator, checking that a kernel ran (no silent fallback)."""
    before = emulator.grids_run()
    out = op(*args, **kwargs)
    assert emulator.grids_run() > before, "the emulated op launched no kernel"
    return out


def gen(seed=7):
    return torch.Generator().manual_seed(seed)


# ---- sampling ----------------------------------------------------------------------------------

def test_noise_from_bits_matches_float64(emulator):
    """The Exp(1) and Gumbel variates every sampling kernel draws, against float64 math on the same
    64 bits: random bits, both halves' extremes (u = 2^-64 / 2, just under and over 1/2, 1 - 2^-64 / 2)
    and uniforms too small for 24-bit generators (the Gumbel tail up to 44)."""
    g = torch.Generator().manual_seed(3)
    random = torch.randint(-2**63, 2**63 - 1, (200_000,), generator=g, dtype=torch.int64)
    tiny = torch.randint(0, 2**40, (20_000,), generator=g, dtype=torch.int64)  # u < 2^-24
    edges = torch.tensor([0, 1, 2**62, 2**63 - 1, -2**63, -2, -1, 2**24, -2**24], dtype=torch.int64)
    bits = torch.cat([random, tiny, -1 - tiny, edges])
    exponential, gumbel = emulator.noise_from_bits(bits)
    lower = bits >= 0  # u < 1/2
    w = (torch.where(lower, bits, torch.bitwise_not(bits)).double() + 0.5) / 2.0**64  # min(u, 1 - u)
    want_e = torch.where(lower, -torch.log1p(-w), -torch.log(w))
    assert (exponential > 0).all() and torch.isfinite(gumbel).all()
    assert ((exponential.double() - want_e).abs() / want_e).max() < 6e-7  # a few float32 ulps
    want_g = -torch.log(want_e)
    assert ((gumbel.double() - want_g).abs() / want_g.abs().clamp(min=1.0)).max() < 6e-7
    assert gumbel.max() > 40  # u near 2^-64 reaches the far tail


def test_log_poly_is_within_two_ulps(emulator):
    x = torch.cat([torch.logspace(-37, 38, 100_001), torch.linspace(0.5, 2.0, 100_001)]).float()
    got, want = emulator.log_poly(x).double(), torch.log(x.double())
    _, exponent = torch.frexp(want)
    ulp = torch.ldexp(torch.ones_like(want), exponent - 24)  # float32's ulp at want
    err = (got - want).abs()
    assert (err[want == 0] == 0).all()
    assert (err / ulp)[want != 0].max() <= 2


def philox4x32_10(ctr, key):
    """Philox4x32-10 (Salmon et al. 2011) in Python: the reference the kernels' bits are checked against."""
    m32 = 0xFFFFFFFF
    (c0, c1, c2, c3), (k0, k1) = ctr, key
    for _ in range(10):
        p0, p1 = 0xD2511F53 * c0, 0xCD9E8D57 * c2
        c0, c1, c2, c3 = (p1 >> 32) ^ c1 ^ k0, p1 & m32, (p0 >> 32) ^ c3 ^ k1, p0 & m32
        k0, k1 = (k0 + 0x9E3779B9) & m32, (k1 + 0xBB67AE85) & m32
    return c0, c1, c2, c3


def test_philox_reference_matches_random123_known_answers():
    assert philox4x32_10((0, 0, 0, 0), (0, 0)) == (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)
    assert philox4x32_10((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2) == (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)
    assert (philox4x32_10((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0))
            == (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1))


def test_kernel_bits_share_no_philox_block_with_torch_curand_ops(emulator):
    """torch's CUDA random ops (curand_init(seed, thread, offset)) draw Philox4x32-10 under the key
    (seed lo, seed hi) at counters (offset / 4 + i, 0, thread, 0). dllm's first call after
    manual_seed has offset 0, where its row 0 counters are exactly those of torch's thread 0: the
    kernels fold a constant into the key so that no block is shared."""
    m32 = 0xFFFFFFFF
    for seed in (0, 1, 2**32 + 5, 2**64 - 1):
        key = (seed & m32, seed >> 32)
        curand = {philox4x32_10((n, 0, thread, 0), key) for n in range(64) for thread in range(64)}
        for stream in range(5):
            for row, pair in ((0, 0), (0, 1), (0, 63), (1, 0), (5, 17)):
                for offset in (0, 4, 2**32, 2**32 + 8):
                    # philox_pair's layout: counter (pair, row lo, row hi ^ stream << 29, offset lo),
                    # key (seed lo ^ "dllm", seed hi ^ offset hi)
                    ctr = (pair, row & m32, (row >> 32) ^ (stream << 29), offset & m32)
                    dllm_key = (key[0] ^ 0x6D6C6C64, key[1] ^ (offset >> 32))
                    got = emulator.philox_pair(seed, offset, row, pair, stream)
                    assert got == philox4x32_10(ctr, dllm_key) and got not in curand


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("vocab", [37, 2049, 50258])
def test_sample_categorical(schedule, dtype, vocab):
    logits = (torch.randn(6, vocab, generator=gen(0)) * 3).to(dtype)
    temperature = torch.tensor([0.0, 0.7, 1.0, 1.3, 0.5, 2.0])
    got = emulated(schedule, EMU.sample_categorical, logits, temperature, 1.0, generator=gen())
    want = CPU.sample_categorical(logits, temperature, 1.0, generator=gen())
    assert torch.equal(got[0], want[0])
    torch.testing.assert_close(got[1], want[1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", DTYPES)
def test_sample_categorical_large_logits_and_tiny_temperatures(emulator, dtype):
    offset = 3e4 if dtype == torch.float16 else 1e7
    # three groups of 2048 and several rows per temperature: a group race run on raw values (float32
    # steps of 1 at 1e7) picks other groups than the CPU's
    logits = (torch.randn(24, 6001, generator=gen(1)) * 3 + offset).to(dtype)
    # float64: 1e-46 and 1e39 lie outside float32, and both ops clamp them the same way
    temperature = torch.tensor([1.0, 0.5, 1e-6, 1e-38, 1e-45, 0.0, 1e-46, 1e39], dtype=torch.float64).repeat(3)
    got = emulated(emulator, EMU.sample_categorical, logits, temperature, 1.0, generator=gen())
    want = CPU.sample_categorical(logits, temperature, 1.0, generator=gen())
    assert torch.equal(got[0], want[0])
    torch.testing.assert_close(got[1], want[1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", DTYPES)
def test_sample_categorical_subnormal_float32_temperatures(emulator, dtype):
    """1 / T of a subnormal float32 temperature is capped at float's largest value, and so is the
    kernels' exponent scale (1 / T times log2 e): an infinite one would make the max's own term
    0 * inf = NaN, and the row an error on a GPU (the emulator shows that NaN as the hardware does)."""
    logits = (torch.randn(6, 3001, generator=gen(2)) * 3).to(dtype)
    temperature = torch.tensor([1e-40, 1e-45, 3e-39, 4e-39, 1e-38, 5e-39], dtype=torch.float32)
    got = emulated(emulator, EMU.sample_categorical, logits, temperature, 1.0, generator=gen())
    want = CPU.sample_categorical(logits, temperature, 1.0, generator=gen())
    assert torch.equal(got[0], want[0])
    torch.testing.assert_close(got[1], want[1], rtol=1e-5, atol=1e-5)


def same_error(emulated_call, cpu_call):
    """Both calls raise, the same exception type with the same message (read back from the kernel)."""
    with pytest.raises(Exception) as cpu_error:
        cpu_call()
    with pytest.raises(cpu_error.type, match=f"^{re.escape(str(cpu_error.value))}$"):
        emulated_call()


def test_kernel_errors_read_back_like_the_cpu_ops(emulator):
    logits = torch.randn(5, 3000)
    logits[3, 17] = float("nan")
    logits[4] = float("-inf")
    same_error(lambda: EMU.sample_categorical(logits, None, 1.0), lambda: CPU.sample_categorical(logits, None, 1.0))
    clean = torch.randn(5, 3000)
    same_error(lambda: EMU.sample_categorical(clean, torch.tensor([1.0, 1, -1, 1, 1]), 1.0),
               lambda: CPU.sample_categorical(clean, torch.tensor([1.0, 1, -1, 1, 1]), 1.0))
    step = (logits.view(1, 5, 3000), torch.full((1, 5), 2999), torch.tensor([1.0]), torch.tensor([0.1]))
    same_error(lambda: EMU.sedd_step(*step, graph="absorb", method="analytic"),
               lambda: CPU.sedd_step(*step, graph="absorb", method="analytic"))
    x = torch.full((1, 5), MASK)
    same_error(lambda: EMU.predict_masked(logits.view(1, 5, 3000), x, MASK),
               lambda: CPU.predict_masked(logits.view(1, 5, 3000), x, MASK))
    x[0, 1:3] = torch.tensor([3000, -5])  # unmasked tokens outside the vocabulary, before the NaN row
    same_error(lambda: EMU.predict_masked(logits.view(1, 5, 3000), x, MASK),
               lambda: CPU.predict_masked(logits.view(1, 5, 3000), x, MASK))


# Where a non-finite logit sits decides how the streaming kernels find it: most make their group's
# sum NaN, one in a batch of otherwise -inf values is looked for apart (its batch adds nothing),
# and the mask's (or SEDD's x's) own logit, dropped from the sums, is read apart.
NON_FINITE_PLACES = {
    "NaN": lambda row: row.__setitem__(1234, float("nan")),
    "+inf": lambda row: row.__setitem__(2999, float("inf")),
    "NaN among -inf": lambda row: (row[512:1024].fill_(float("-inf")), row.__setitem__(700, float("nan"))),
    # every batch but one -inf only: the NaN's batch has no finite value (no sum to make NaN)
    "NaN among -inf only": lambda row: (row.fill_(float("-inf")), row.__setitem__(5, 1.0),
                                        row.__setitem__(700, float("nan"))),
    "NaN first": lambda row: row.__setitem__(0, float("nan")),
    "NaN at the mask": lambda row: row.__setitem__(MASK, float("nan")),
    "+inf at the mask": lambda row: row.__setitem__(MASK, float("inf")),
}


@pytest.mark.parametrize("place", list(NON_FINITE_PLACES))
def test_non_finite_logits_are_errors_wherever_they_sit(emulator, place):
    """A row with a NaN or +inf logit is an error of every op, as on the CPU (SEDD's x is MASK here),
    and rows whose -inf values fill whole batches are not."""
    V = 3001  # bf16 rows off 16-byte boundaries: chunks straddle the ends
    logits = torch.randn(3, V, generator=gen(3)) * 2
    logits[0, 100:2900] = float("-inf")  # legitimate: most batches of row 0 are -inf only
    NON_FINITE_PLACES[place](logits[2])
    logits = logits.bfloat16()

    def call(ops, name, t, lg):
        rows, x = lg.view(1, -1, V), torch.full((1, lg.shape[0]), MASK)
        if name == "sample_categorical":
            return ops.sample_categorical(lg, torch.full((lg.shape[0],), t), 1.0, generator=gen())[0]
        if name.startswith("predict_masked"):  # the confidence after the colon: each keeps other sums
            return ops.predict_masked(rows, x, MASK, temperature=t, confidence=name.partition(":")[2] or "prob",
                                      generator=gen())[0]
        return ops.sedd_step(rows, x, torch.tensor([1.0]), torch.tensor([0.1]), graph="uniform", method="euler",
                             generator=gen())

    ops = ["sample_categorical", "predict_masked", "predict_masked:margin", "predict_masked:entropy"]
    for name, t in [(op, t) for op in ops for t in (1.0, 0.5, 0.0)] + [("sedd", 1.0)]:
        same_error(lambda: call(EMU, name, t, logits), lambda: call(CPU, name, t, logits))
        assert torch.equal(call(EMU, name, t, logits[:2]), call(CPU, name, t, logits[:2])), (name, t)


def test_graph_capture_paths(emulator):
    """Under CUDA-graph capture the kernels read the Philox key through device pointers (what
    replays refill) and the bindings skip reading the error word back: same draws, no raise."""
    logits, x = masked_batch(2, 37, 3001, "cpu", torch.bfloat16)
    step = (logits[..., :3001], x, torch.tensor([0.8, 2.5]), torch.tensor([0.3, 0.05]))
    calls = [
        lambda ops: ops.sample_categorical(logits, None, 0.9, generator=gen()),
        lambda ops: ops.predict_masked(logits, x, MASK, 1.0, 20, 0.9, "prob", 1, generator=gen()),
        lambda ops: ops.sedd_step(*step, graph="uniform", method="analytic", generator=gen()),
        lambda ops: ops.sample_transition(x, torch.tensor([0.3, 2.0]), graph="absorb", num_classes=3002,
                                          generator=gen()),
    ]
    nan_logits = logits.clone()
    nan_logits[1, 3, 5] = float("nan")
    emulator.set_capturing(True)
    try:
        for call in calls:
            got, want = emulated(emulator, call, EMU), call(CPU)
            if isinstance(got, tuple):  # (tokens, log-probability or confidence)
                torch.testing.assert_close(got[1], want[1], rtol=1e-5, atol=1e-5)
                got, want = got[0], want[0]
            assert torch.equal(got, want)
        emulated(emulator, EMU.sample_categorical, nan_logits, None, 1.0)  # the NaN row is not read back
    finally:
        emulator.set_capturing(False)
    emulator.raise_pending_errors()  # nor left to raise later
    with pytest.raises(ValueError, match="NaN"):
        EMU.sample_categorical(nan_logits, None, 1.0)


def cpu_message(call) -> str:
    with pytest.raises(ValueError) as error:
        call()
    return str(error.value)


def test_errors_found_on_the_gpu_raise_at_a_later_call_while_it_runs_behind(emulator):
    """The CUDA bindings never wait for their kernels' checks: while the GPU runs behind the host,
    a bad call returns, and its error raises at the first later call (a checking op's or
    commit_tokens') that finds its word arrived, oldest error first and marked as an earlier
    call's, dropping the checks still queued; raise_pending_errors waits for the words instead."""
    nan_logits, clean = torch.randn(5, 3000, generator=gen(1)), torch.randn(5, 3000, generator=gen(2))
    nan_logits[3, 17] = float("nan")
    masked = torch.full((1, 5), MASK)
    step = (clean.view(1, 5, 3000), torch.full((1, 5), 2999), torch.tensor([-1.0]), torch.tensor([0.1]))
    first, second, third = (
        lambda ops: ops.sample_categorical(nan_logits, None, 1.0),
        lambda ops: ops.predict_masked(nan_logits.view(1, 5, 3000), masked, MASK),
        lambda ops: ops.sedd_step(*step, graph="absorb", method="analytic"),
    )

    def later(call):  # CPU's message, then the note of an error raised by a later call
        return rf"^{re.escape(cpu_message(lambda: call(CPU)))}\W+found on the GPU after that earlier call returned"

    emulator.set_gpu_behind(True)
    try:
        first(EMU), second(EMU)
        x0, conf = EMU.predict_masked(clean.view(1, 5, 3000), masked, MASK)  # arrived: nothing yet
        with pytest.raises(ValueError, match=later(first)):
            emulator.raise_pending_errors()
        emulator.raise_pending_errors()  # the second error, and the clean call's word, went with the first
        third(EMU)
        emulator.set_gpu_behind(False)
        with pytest.raises(ValueError, match=later(third)):
            EMU.commit_tokens(masked.clone(), x0, conf, MASK, num_tokens=torch.tensor([2]))
    finally:
        emulator.set_gpu_behind(False)
    emulator.raise_pending_errors()
    assert EMU.commit_tokens(masked.clone(), x0, conf, MASK, num_tokens=torch.tensor([2])).tolist() == [2]


def test_a_bad_token_raised_later_is_named_only_while_x_is_unchanged(emulator):
    """A later call reads the bad token back from x for the message, unless x was updated in place
    since (commit_tokens, in a sampler), when it may no longer hold it."""
    logits = torch.randn(1, 6, 3000, generator=gen(4))
    x = torch.full((1, 6), MASK)
    x[0, 4] = 3000
    emulator.set_gpu_behind(True)
    try:
        for changed in (False, True):
            x0, conf = EMU.predict_masked(logits, x, MASK)
            token = "held a token" if changed else "holds token 3000"
            if changed:  # dllm's commit_tokens (the emulated one skips the version bump of dllm's dispatch)
                CPU.commit_tokens(x, x0, conf, MASK, num_tokens=torch.tensor([1]))
            with pytest.raises(ValueError, match=rf"^predict_masked: x {token} at position 4 of sequence 0, outside"):
                emulator.raise_pending_errors()
    finally:
        emulator.set_gpu_behind(False)


def test_strided_broadcast_and_unaligned_rows(emulator):
    base = torch.randn(4, 3001, dtype=torch.bfloat16)
    for logits in (base[:, 1:], base.t().contiguous().t(), base[:1].expand(4, 3001)):
        got = emulated(emulator, EMU.sample_categorical, logits, None, 0.9, generator=gen())
        want = CPU.sample_categorical(logits, None, 0.9, generator=gen())
        assert torch.equal(got[0], want[0])
    q, k, v = (t.detach() for t in attention_inputs(1, 40, 40, 2, 2, 64, torch.float16))
    q_strided = torch.randn(1, 2, 40, 64, dtype=torch.float16).transpose(1, 2)  # [B, S, H, D], head-major storage
    q_offset = torch.randn(1 * 40 * 2 * 64 + 3, dtype=torch.float16)[3:].view(1, 40, 2, 64)  # 6 bytes off alignment
    for query in (q_strided, q_offset):
        out, _ = emulated(emulator, EMU.attention_forward, query, k, v, None, None, None, None, 40, 40, 0.125)
        ref = reference_attention(query, k, v, None, None)
        check(out, ref, reference_attention(query, k, v, None, None, upcast=False), 2, "out")


@pytest.mark.parametrize("dtype", DTYPES)
def test_rows_at_every_alignment_and_short_lengths(emulator, dtype):
    """The row kernels load whole 16-byte chunks only inside a row and read the straddling ones
    element by element: rows starting at every element offset, as short as one element, with
    tied maxima (greedy picks the lowest index), must match the CPU ops draw for draw."""
    for vocab in (1, 2, 7, 9, 16, 17, 40):
        for offset in range(8):
            base = torch.randint(-2, 3, (3, vocab + 8), generator=gen(vocab * 8 + offset)).to(dtype)
            logits = base[:, offset:offset + vocab]
            for temperature in (0.0, 1.0):
                got = emulated(emulator, EMU.sample_categorical, logits, None, temperature, generator=gen())
                want = CPU.sample_categorical(logits, None, temperature, generator=gen())
                assert torch.equal(got[0], want[0]), (vocab, offset, temperature)
            if vocab < 2:
                continue
            x = torch.tensor([[vocab - 1, 0, vocab - 1]])
            # the margin tracks the top two element by element; prob finds the max's index apart
            for confidence in ("margin", "prob"):
                got = emulated(emulator, EMU.predict_masked, logits[None], x, vocab - 1, 0.0, 0, 1.0, confidence, 0)
                want = CPU.predict_masked(logits[None], x, vocab - 1, 0.0, 0, 1.0, confidence, 0)
                assert torch.equal(got[0], want[0]), (vocab, offset, confidence)
                torch.testing.assert_close(got[1], want[1], rtol=1e-6, atol=1e-6)
            x0 = torch.zeros(1, 3, dtype=torch.long)
            loss = emulated(emulator, EMU.masked_diffusion_loss, logits[None], x, x0, torch.ones(1), mask_id=vocab - 1)
            want = CPU.masked_diffusion_loss(logits[None], x, x0, torch.ones(1), mask_id=vocab - 1)
            torch.testing.assert_close(loss[0], want[0])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("confidence", ["prob", "margin", "entropy", "random"])
@pytest.mark.parametrize("temperature, top_k, top_p, shift, confidence_from",
                         [(0.0, 0, 1.0, 0, "model"), (1.0, 0, 1.0, 1, "model"), (0.8, 50, 0.9, 0, "model"),
                          (0.0, 50, 0.9, 0, "proposal"), (0.0, 1, 1.0, 0, "proposal"), (0.3, 0, 0.95, 1, "proposal"),
                          # nothing reshapes the proposal: its statistics are the model's (pass B never runs)
                          (0.0, 0, 1.0, 0, "proposal")])
def test_predict_masked(schedule, dtype, confidence, temperature, top_k, top_p, shift, confidence_from):
    logits, x = masked_batch(2, 37, 3001, "cpu", dtype)
    args = (logits, x, MASK, temperature, top_k, top_p, confidence, shift, confidence_from)
    got = emulated(schedule, EMU.predict_masked, *args, generator=gen())
    want = CPU.predict_masked(*args, generator=gen())
    assert torch.equal(got[0], want[0])
    torch.testing.assert_close(got[1], want[1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("confidence_from", ["model", "proposal"])
def test_predict_masked_large_logits_and_tiny_temperatures(emulator, confidence_from):
    logits, x = masked_batch(2, 19, 3001, "cpu")
    logits += 1e7
    for temperature, top_p in ((1.0, 1.0), (0.5, 0.9), (1e-38, 1.0), (1e-45, 0.9), (1e-46, 1.0), (1e39, 0.9)):
        for confidence in ("prob", "margin", "entropy"):
            args = (logits, x, MASK, temperature, 0, top_p, confidence, 0, confidence_from)
            got = emulated(emulator, EMU.predict_masked, *args, generator=gen())
            want = CPU.predict_masked(*args, generator=gen())
            assert torch.equal(got[0], want[0])
            torch.testing.assert_close(got[1], want[1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("confidence", ["prob", "margin"])
def test_predict_masked_greedy_ties_go_to_the_lowest_index(emulator, confidence):
    """A row's maximum repeated 8192 elements apart (one thread's consecutive batches in the greedy
    row loop, whose thread finds its index only in the batch that raises its maximum) and in other
    threads: the lowest index wins, as on the CPU."""
    V = 20000
    logits = torch.randn(1, 3, V, generator=gen(5)).bfloat16()
    for row, first in enumerate((100, 4099, 8191)):
        logits[0, row, first::8192] = 9.0
    x = torch.full((1, 3), MASK)
    got = emulated(emulator, EMU.predict_masked, logits, x, MASK, 0.0, 0, 1.0, confidence, 0)
    want = CPU.predict_masked(logits, x, MASK, 0.0, 0, 1.0, confidence, 0)
    assert got[0].tolist() == want[0].tolist() == [[100, 4099, 8191]]
    torch.testing.assert_close(got[1], want[1], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
def test_predict_masked_with_l2_prefetch(schedule, dtype, monkeypatch):
    """DLLM_L2_PREFETCH=1 asks L2 for what pass A reads ahead (groups when fused, the block's loop
    iterations otherwise: greedy, filtered) and for the next position's first round:
    a hint, so the same proposals and confidences, and every prefetch aligned and (the ASan run
    checks) inside the logits. V = 40009: 20 groups and 5-10 loop iterations, so that prefetches
    reach a partial last group or iteration; bf16 rows off 16-byte boundaries; a shifted head; the
    lagging schedule's 3 blocks take several positions each, so the next position's row is asked
    for too."""
    monkeypatch.setenv("DLLM_L2_PREFETCH", "1")
    logits, x = masked_batch(2, 9, 40009, "cpu", dtype)
    for temperature, top_k, shift in ((1.0, 0, 0), (1.0, 0, 1), (0.0, 0, 1), (0.8, 50, 0)):
        args = (logits, x, MASK, temperature, top_k, 1.0, "prob", shift, "model")
        got = emulated(schedule, EMU.predict_masked, *args, generator=gen())
        want = CPU.predict_masked(*args, generator=gen())
        assert torch.equal(got[0], want[0])
        torch.testing.assert_close(got[1], want[1], rtol=1e-5, atol=1e-6)
    monkeypatch.setenv("DLLM_L2_PREFETCH", "yes")
    with pytest.raises(RuntimeError, match='DLLM_L2_PREFETCH must be "0" or "1", got "yes"'):
        EMU.predict_masked(logits, x, MASK, 1.0)


def assert_sampling_kernels_match_cpu(schedule, logits):
    """sample_categorical over the rows of logits [2, 9, K] (row 3 greedy) and sedd_step's analytic
    step on both graphs draw what the CPU ops draw; returns sedd_step's (x, sigma, dsig)."""
    K = logits.shape[-1]
    temperature = torch.rand(18, generator=gen(1)) + 0.2
    temperature[3] = 0.0
    got = emulated(schedule, EMU.sample_categorical, logits.view(18, K), temperature, 1.0, generator=gen())
    want = CPU.sample_categorical(logits.view(18, K), temperature, 1.0, generator=gen())
    assert torch.equal(got[0], want[0])
    torch.testing.assert_close(got[1], want[1], rtol=1e-5, atol=1e-5)
    x = torch.randint(0, K, (2, 9), generator=gen(2))
    x[:, ::2] = K - 1  # absorbing: the masked positions' rows are read, the others not
    sigma, dsig = torch.tensor([0.8, 2.5]), torch.tensor([0.3, 0.05])
    for graph in ("absorb", "uniform"):
        got = emulated(schedule, EMU.sedd_step, logits, x, sigma, dsig, graph=graph, method="analytic", generator=gen())
        assert torch.equal(got, CPU.sedd_step(logits, x, sigma, dsig, graph=graph, method="analytic", generator=gen()))
    return x, sigma, dsig


@pytest.mark.parametrize("dtype", DTYPES)
def test_sample_categorical_and_sedd_step_with_l2_prefetch(schedule, dtype, monkeypatch):
    """DLLM_L2_PREFETCH=1 in the other two streaming kernels' pass 1 (groups a round ahead, a later
    row's first round: under the absorbing graph only a masked one): the same draws, and every
    prefetch aligned and inside the logits, as in predict_masked's test."""
    monkeypatch.setenv("DLLM_L2_PREFETCH", "1")
    K = 40009
    logits = (torch.randn(2, 9, K, generator=gen(0)) * 3).to(dtype)
    x, sigma, dsig = assert_sampling_kernels_match_cpu(schedule, logits)
    monkeypatch.setenv("DLLM_L2_PREFETCH", "2")
    with pytest.raises(RuntimeError, match='DLLM_L2_PREFETCH must be "0" or "1", got "2"'):
        EMU.sample_categorical(logits.view(18, K), None, 1.0)
    with pytest.raises(RuntimeError, match='DLLM_L2_PREFETCH must be "0" or "1", got "2"'):
        EMU.sedd_step(logits, x, sigma, dsig, graph="absorb", method="analytic")


def test_l2_prefetch_reaches_every_path(emulator, monkeypatch):
    """Each place that prefetches does (the emulator counts the bytes asked of L2), and only where it
    should: rows of 40009 prefetch ahead within the row (fused and greedy predict_masked,
    sample_categorical); rows of 3001 (2 groups, less than a loop iteration) have nothing ahead, so
    only a later row's first round is asked for, which exists when the grid is cut to 3 blocks (a
    grid-stride loop) and not when each of the 18 positions has its block (the later row is 264
    blocks on); sedd_step's absorbing graph skips a later row that is not masked; and nothing is
    asked with the variable at 0."""
    def asked(call):
        before = emulator.prefetched_bytes()
        emulated(emulator, call)
        return emulator.prefetched_bytes() - before

    long_logits, x = masked_batch(2, 9, 40009, "cpu", torch.bfloat16)
    short_logits = long_logits[..., :3001].contiguous()
    masked_x = torch.full((2, 9), 3000)
    try:
        monkeypatch.setenv("DLLM_L2_PREFETCH", "1")
        for grid_blocks in (0, 3):
            emulator.configure(0, True, grid_blocks, 0)
            assert asked(lambda: EMU.predict_masked(long_logits, x, MASK, 1.0)) > 0
            assert asked(lambda: EMU.predict_masked(long_logits, x, MASK, 0.0)) > 0
            assert asked(lambda: EMU.sample_categorical(long_logits.view(18, -1), None, 1.0)) > 0
            later = grid_blocks > 0
            assert (asked(lambda: EMU.predict_masked(short_logits, masked_x, 3000, 1.0)) > 0) == later
            assert (asked(lambda: EMU.predict_masked(short_logits, masked_x, 3000, 0.0)) > 0) == later
            assert (asked(lambda: EMU.sample_categorical(short_logits.view(18, -1), None, 1.0)) > 0) == later
            sigma = torch.tensor([0.8, 2.5])
            assert (asked(lambda: EMU.sedd_step(short_logits, masked_x, sigma, sigma, graph="absorb",
                                                method="analytic")) > 0) == later
        one_masked = torch.randint(0, 3000, (2, 9), generator=gen(4))
        one_masked[0, 0] = 3000  # read by block 0, whose later rows (3, 6, ...) are not masked
        assert asked(lambda: EMU.sedd_step(short_logits, one_masked, sigma, sigma, graph="absorb",
                                           method="analytic")) == 0
        monkeypatch.setenv("DLLM_L2_PREFETCH", "0")
        assert asked(lambda: EMU.predict_masked(long_logits, x, MASK, 1.0)) == 0
    finally:
        emulator.configure(0, True, 0, 0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_streaming_kernels_with_async_copies(schedule, dtype, monkeypatch):
    """DLLM_ASYNC_COPIES=1: the first passes over a row (sample_categorical's and sedd_step's pass 1,
    predict_masked's pass A, by warp groups when fused, by the block when greedy or filtered; the
    losses' forward, a slice a warp) read through each thread's ring of cp.async copies, batches
    ahead and across the ends of groups: the same draws, proposals, confidences and losses as the
    CPU ops. V = 40009: 20 groups, 2 or 3 a warp, bf16 rows off 16-byte boundaries, 5-10 block
    iterations; V = 4196: 3 groups, the last of 100 elements, fewer whole chunks than lanes; the
    lagging schedule's 3 blocks take several rows each, through the same ring."""
    monkeypatch.setenv("DLLM_ASYNC_COPIES", "1")
    for K in (40009, 4196):
        logits, x = masked_batch(2, 9, K, "cpu", dtype)
        for temperature, top_k, shift, confidence in ((1.0, 0, 0, "prob"), (0.7, 0, 1, "margin"),
                                                      (1.0, 0, 0, "entropy"), (0.0, 0, 1, "prob"),
                                                      (0.8, 50, 0, "prob")):
            args = (logits, x, MASK, temperature, top_k, 1.0, confidence, shift, "model")
            got = emulated(schedule, EMU.predict_masked, *args, generator=gen())
            want = CPU.predict_masked(*args, generator=gen())
            assert torch.equal(got[0], want[0])
            torch.testing.assert_close(got[1], want[1], rtol=1e-5, atol=1e-6)
        x, sigma, dsig = assert_sampling_kernels_match_cpu(schedule, logits)
        x0 = torch.randint(0, K - 1, (2, 9), generator=gen(3))
        for graph in ("absorb", "uniform"):
            loss = emulated(schedule, EMU.score_entropy_loss, logits, x, x0, sigma, dsig, graph=graph)
            torch.testing.assert_close(loss, CPU.score_entropy_loss(logits, x, x0, sigma, dsig, graph=graph),
                                       rtol=1e-5, atol=1e-5)
        loss, lse = emulated(schedule, EMU.masked_diffusion_loss, logits, x, x0, sigma, mask_id=K - 1)
        want_loss, want_lse = CPU.masked_diffusion_loss(logits, x, x0, sigma, mask_id=K - 1)
        torch.testing.assert_close(loss, want_loss, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(lse[x == K - 1], want_lse[x == K - 1], rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("async_copies", ["0", "1"])
def test_sample_categorical_greedy_ties_go_to_the_lowest_index(emulator, async_copies, monkeypatch):
    """Temperature 0 finds the argmax after pass 1: the first group holding the row's max, then that
    group's first element at it. Ties across groups, at a group boundary, a row of one value, a
    row whose first 4000 entries are -inf; rows of 6001 off 16-byte boundaries in 16-bit dtypes."""
    monkeypatch.setenv("DLLM_ASYNC_COPIES", async_copies)
    logits = torch.randn(5, 6001, generator=gen(3))
    logits[1, [5000, 2100, 5999]] = 10.0
    logits[2] = -3.0
    logits[3, :4000] = float("-inf")
    logits[4, [2048, 2047]] = 9.0
    for dtype in DTYPES:
        z = logits.to(dtype)
        got = emulated(emulator, EMU.sample_categorical, z, None, 0.0)
        want = CPU.sample_categorical(z, None, 0.0)
        assert torch.equal(got[0], want[0]) and got[0][[1, 2, 4]].tolist() == [2100, 0, 2047]
        torch.testing.assert_close(got[1], want[1], rtol=1e-6, atol=1e-6)


def test_async_copies_reach_every_first_pass(emulator, monkeypatch):
    """The ring is taken where it should be (the emulator counts the bytes cp.async copies): by the
    three samplers' first passes, predict_masked's fused, greedy and filtered alike, and the losses'
    forward, and not with the variable at 0, which refuses anything but "0" and "1"."""
    def copied(call):
        before = emulator.async_copied_bytes()
        emulated(emulator, call)
        return emulator.async_copied_bytes() - before

    logits, x = masked_batch(2, 9, 40009, "cpu", torch.bfloat16)
    sigma = torch.tensor([0.8, 2.5])
    masked_x = torch.full((2, 9), 40008)
    monkeypatch.setenv("DLLM_ASYNC_COPIES", "1")
    assert copied(lambda: EMU.predict_masked(logits, x, MASK, 1.0)) > 0
    assert copied(lambda: EMU.sample_categorical(logits.view(18, -1), None, 1.0)) > 0
    assert copied(lambda: EMU.sedd_step(logits, masked_x, sigma, sigma, graph="absorb", method="analytic")) > 0
    assert copied(lambda: EMU.predict_masked(logits, x, MASK, 0.0)) > 0
    assert copied(lambda: EMU.predict_masked(logits, x, MASK, 1.0, top_k=5)) > 0
    assert copied(lambda: EMU.masked_diffusion_loss(logits, masked_x, x, sigma, mask_id=40008)) > 0
    assert copied(lambda: EMU.score_entropy_loss(logits, masked_x, x, sigma, sigma, graph="absorb")) > 0
    monkeypatch.setenv("DLLM_ASYNC_COPIES", "0")
    assert copied(lambda: EMU.predict_masked(logits, x, MASK, 1.0)) == 0
    assert copied(lambda: EMU.sample_categorical(logits.view(18, -1), None, 1.0)) == 0
    monkeypatch.setenv("DLLM_ASYNC_COPIES", "on")
    for call in (lambda: EMU.sample_categorical(logits.view(18, -1), None, 1.0),
                 lambda: EMU.predict_masked(logits, x, MASK, 1.0),
                 lambda: EMU.sedd_step(logits, masked_x, sigma, sigma, graph="absorb", method="analytic"),
                 lambda: EMU.masked_diffusion_loss(logits, masked_x, x, sigma, mask_id=40008)):
        with pytest.raises(RuntimeError, match='DLLM_ASYNC_COPIES must be "0" or "1", got "on"'):
            call()


def test_predict_masked_llada_vocabulary(emulator):
    logits, x = masked_batch(1, 5, 126464, "cpu", torch.bfloat16)
    for temperature in (0.0, 1.0):
        got = emulated(emulator, EMU.predict_masked, logits, x, MASK, temperature, generator=gen())
        want = CPU.predict_masked(logits, x, MASK, temperature, generator=gen())
        assert torch.equal(got[0], want[0])
        torch.testing.assert_close(got[1], want[1])


@pytest.mark.parametrize(
    "rule",
    [
        dict(num_tokens=torch.tensor([0, 3, 500])),
        dict(threshold=0.6),
        dict(prob=torch.tensor([0.1, 0.5, 1.0])),
        dict(num_tokens=torch.tensor([4, 9, 1]), position_temperature=0.3),
        dict(num_tokens=torch.tensor([4, 9, 1]), position_temperature=1e-40),  # clamped to 1e-36 by both
    ],
    ids=["top-k", "threshold", "prob", "position-temperature", "tiny-position-temperature"],
)
@pytest.mark.parametrize("windowed", [False, True])
def test_commit_tokens(schedule, rule, windowed):
    x, x0, conf = commit_inputs(3, 1023, "cpu")
    if windowed:
        window = torch.tensor([[0, 300], [40, 90], [1000, 1023]])
        rule = dict(rule, window=window)
        for b, (start, end) in enumerate(window.tolist()):  # the most confident positions lie just outside
            for i in (start - 1, end):
                if 0 <= i < x.shape[1]:
                    x[b, i], conf[b, i] = MASK, 1.0
    x_emu, x_cpu = x.clone(), x.clone()
    got = emulated(schedule, EMU.commit_tokens, x_emu, x0, conf, MASK, generator=gen(), **rule)
    want = CPU.commit_tokens(x_cpu, x0, conf, MASK, generator=gen(), **rule)
    assert torch.equal(got, want)
    assert torch.equal(x_emu, x_cpu)


# ---- SEDD / MDLM -------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("graph", ["absorb", "uniform"])
@pytest.mark.parametrize("method", ["analytic", "euler", "denoise"])
@pytest.mark.parametrize("K", [37, 50258])
def test_sedd_step(schedule, dtype, graph, method, K):
    B, L = 2, 7 if K > 1000 else 113
    logits = (torch.randn(B, L, K, generator=gen(1)) * 2).to(dtype)
    x = torch.randint(0, K, (B, L), generator=gen(2))
    sigma, dsig = torch.tensor([0.8, 2.5]), torch.tensor([0.3, 0.05])
    kwargs = dict(graph=graph, method=method)
    got = emulated(schedule, EMU.sedd_step, logits, x, sigma, dsig, generator=gen(), **kwargs)
    want = CPU.sedd_step(logits, x, sigma, dsig, generator=gen(), **kwargs)
    assert torch.equal(got, want)


@pytest.mark.parametrize("graph, method", [("absorb", "analytic"), ("uniform", "analytic"), ("uniform", "euler")])
def test_sedd_step_ignores_the_input_tokens_own_logit(emulator, graph, method):
    """SEDD's log-score at the input token is 0 whatever the network gives there: a logit of 40 at x,
    which would outweigh the rest of any sum that counted it, leaves every draw as it was."""
    B, L, K = 2, 7, 50258
    logits = (torch.randn(B, L, K, generator=gen(1)) * 2).bfloat16()
    x = torch.randint(0, K - 1, (B, L), generator=gen(2))
    x[:, ::2] = K - 1  # masked positions: the only ones the absorbing graph moves
    loud = logits.scatter(2, x[..., None], 40.0)
    sigma, dsig = torch.tensor([0.8, 2.5]), torch.tensor([0.3, 0.05])
    kwargs = dict(graph=graph, method=method)
    quiet = CPU.sedd_step(logits, x, sigma, dsig, generator=gen(), **kwargs)
    assert torch.equal(CPU.sedd_step(loud, x, sigma, dsig, generator=gen(), **kwargs), quiet)
    assert torch.equal(emulated(emulator, EMU.sedd_step, loud, x, sigma, dsig, generator=gen(), **kwargs), quiet)


def test_sedd_step_with_logits_far_from_zero(emulator):
    """Mixture rows' log-weights relative to the row's maximum, as on the CPU: near 1e7 the Gumbel
    noise added to a raw float32 log-weight kept only its integer part (test_sedd_step's
    frequencies test shows what that did to the distribution)."""
    B, L, K = 2, 9, 4099
    logits = torch.randn(B, L, K, generator=gen(8)) * 2 + 1e7
    x = torch.randint(0, K, (B, L), generator=gen(9))
    sigma, dsig = torch.tensor([0.8, 2.5]), torch.tensor([0.3, 0.05])
    for graph, method in (("absorb", "analytic"), ("absorb", "euler"), ("absorb", "denoise"), ("uniform", "euler")):
        masked = x.masked_fill(torch.rand(B, L, generator=gen(10)) < 0.7, K - 1) if graph == "absorb" else x
        kwargs = dict(graph=graph, method=method)
        got = emulated(emulator, EMU.sedd_step, logits, masked, sigma, dsig, generator=gen(), **kwargs)
        assert torch.equal(got, CPU.sedd_step(logits, masked, sigma, dsig, generator=gen(), **kwargs)), (graph, method)


def test_row_kernels_read_the_padded_head_rows(emulator):
    """On CUDA the models' head (VocabProjection) gives logits as a view of rows padded to 64
    entries: 128-byte aligned rows whose last chunk runs past V into the padding, poisoned here
    (NaN, and 1e4 for the samplers' maxima), which no kernel may read."""
    B, L, V = 2, 7, 3001
    for poison in (float("nan"), 1e4):
        rows = torch.full((B, L, 3008), poison, dtype=torch.bfloat16)
        rows[..., :V] = torch.randn(B, L, V, generator=gen(1)) * 2
        logits, whole = rows[..., :V], rows[..., :V].contiguous()
        x = torch.randint(0, V - 1, (B, L), generator=gen(2))
        x[:, ::2] = V - 1
        sigma, dsig = torch.tensor([0.8, 2.5]), torch.tensor([0.3, 0.05])
        for graph, method in (("absorb", "analytic"), ("uniform", "euler")):
            got = emulated(emulator, EMU.sedd_step, logits, x, sigma, dsig, generator=gen(), graph=graph, method=method)
            assert torch.equal(got, CPU.sedd_step(whole, x, sigma, dsig, generator=gen(), graph=graph, method=method))
        for temperature in (0.0, 1.0):
            got = emulated(emulator, EMU.predict_masked, logits, x, V - 1, temperature, 0, 1.0, "prob", 0, generator=gen())
            want = CPU.predict_masked(whole, x, V - 1, temperature, 0, 1.0, "prob", 0, generator=gen())
            assert torch.equal(got[0], want[0])
            torch.testing.assert_close(got[1], want[1], rtol=1e-6, atol=1e-6)
            got = emulated(emulator, EMU.sample_categorical, logits[0], None, temperature, generator=gen())
            assert torch.equal(got[0], CPU.sample_categorical(whole[0], None, temperature, generator=gen())[0])


@pytest.mark.parametrize("graph", ["absorb", "uniform"])
def test_sample_transition(schedule, graph):
    x0 = torch.randint(0, 500, (3, 1023), generator=gen(3))
    sigma = torch.tensor([0.01, 0.7, 6.0])
    got = emulated(schedule, EMU.sample_transition, x0, sigma, graph=graph, num_classes=501, generator=gen())
    want = CPU.sample_transition(x0, sigma, graph=graph, num_classes=501, generator=gen())
    assert torch.equal(got, want)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("graph", ["absorb", "uniform"])
@pytest.mark.parametrize("shape", [(2, 113, 37), (1, 3, 50258)])
def test_score_entropy_loss(schedule, dtype, graph, shape):
    logits, x_t, x0, sigma, dsigma = loss_inputs(shape, graph, dtype, "cpu")
    args = (logits, x_t, x0, sigma, dsigma)
    loss = emulated(schedule, EMU.score_entropy_loss, *args, graph=graph)
    torch.testing.assert_close(loss, CPU.score_entropy_loss(*args, graph=graph), rtol=1e-5, atol=1e-5)
    grad_loss = torch.randn(shape[0], generator=gen(4))
    grad = emulated(schedule, EMU.score_entropy_loss_backward, grad_loss, *args, graph=graph, scale_by_sigma=True)
    want = CPU.score_entropy_loss_backward(grad_loss, *args, graph=graph, scale_by_sigma=True)
    torch.testing.assert_close(grad.float(), want.float(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("graph", ["absorb", "uniform"])
@pytest.mark.parametrize("sbs", [True, False])
def test_sedd_at_huge_sigma_like_the_cpu(emulator, graph, sbs):
    """sigma and dsig past 709.78, where expm1 overflows float64, up to 3e38: the kernels share
    sedd.h's per-row constants with the CPU ops (tested against float64 in test_sedd_losses and
    test_sedd_step), and add them to their sums and Gumbel keys in their own precision."""
    B, L, K = 4, 7, 4099  # three groups of the step's draw
    logits = torch.randn(B, L, K, generator=gen(1)) - 1
    x = torch.randint(0, K, (B, L), generator=gen(2))
    x[:, ::2] = K - 1  # absorb: masked positions
    sigma = torch.tensor([0.3, 710.0, 1e6, 3e38])
    for method in ("analytic", "euler", "denoise"):
        kwargs = dict(graph=graph, method=method, scale_by_sigma=sbs)
        got = emulated(emulator, EMU.sedd_step, logits, x, sigma, sigma, generator=gen(), **kwargs)
        assert torch.equal(got, CPU.sedd_step(logits, x, sigma, sigma, generator=gen(), **kwargs)), method
    x0 = torch.randint(0, K - 1, (B, L), generator=gen(3))
    args = (logits, x, x0, sigma, torch.rand(B, generator=gen(4)) + 0.5)
    loss = emulated(emulator, EMU.score_entropy_loss, *args, graph=graph, scale_by_sigma=sbs)
    want = CPU.score_entropy_loss(*args, graph=graph, scale_by_sigma=sbs)
    torch.testing.assert_close(loss, want, rtol=1e-5, atol=1e-5)  # inf alike where past float32's range
    grad_loss = torch.randn(B, generator=gen(5))
    grad = emulated(emulator, EMU.score_entropy_loss_backward, grad_loss, *args, graph=graph, scale_by_sigma=sbs)
    want = CPU.score_entropy_loss_backward(grad_loss, *args, graph=graph, scale_by_sigma=sbs)
    assert grad.isfinite().all()
    torch.testing.assert_close(grad, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("graph", ["absorb", "uniform"])
def test_loss_backward_fills_rows_of_tokens_out_of_range_with_nan(emulator, dtype, graph):
    """The CUDA backward does not sync, so tokens no forward checked give NaN rows where the CPU
    op raises; the other rows are the CPU op's on valid tokens (up to __expf's rounding)."""
    x_t, x0, calls = backward_calls("cpu", graph, dtype, ops=EMU)
    for call, cpu_call in zip(calls, backward_calls("cpu", graph, dtype)[2]):
        want = cpu_call(x_t, x0)
        for which, bad_token in [("x_t", -3), ("x_t", 11), ("x0", 10**9), ("x0", -1)]:
            for row in (0, 1):  # a masked position and an unmasked one, rows 5 and 6: full 16-byte chunks
                tokens = {"x_t": x_t.clone(), "x0": x0.clone()}
                tokens[which][1, row] = bad_token
                got = emulated(emulator, call, tokens["x_t"], tokens["x0"])
                assert got[1, row].isnan().all()
                got[1, row] = want[1, row]
                torch.testing.assert_close(got.float(), want.float(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(2, 113, 37), (1, 3, 50258)])
def test_masked_diffusion_loss(schedule, dtype, shape):
    B, L, K = shape
    mask = K // 3  # inside the vocabulary: a kernel that skipped column K - 1 instead would show
    logits = (torch.randn(shape, generator=gen(5)) * 2).to(dtype)
    x0 = torch.randint(0, K - 1, (B, L), generator=gen(6))
    x0 = torch.where(x0 == mask, K - 1, x0)
    x_t = torch.where(torch.rand(B, L, generator=gen(8)) < 0.5, mask, x0)
    x_t[:, 0] = mask  # every sequence has a masked position
    weight = torch.rand(B, generator=gen(9)) + 0.5
    loss, lse = emulated(schedule, EMU.masked_diffusion_loss, logits, x_t, x0, weight, mask_id=mask)
    want_loss, want_lse = CPU.masked_diffusion_loss(logits, x_t, x0, weight, mask_id=mask)
    torch.testing.assert_close(loss, want_loss, rtol=1e-5, atol=1e-5)
    masked = x_t == mask  # the CPU op computes the log-sum-exp where the loss needs it
    torch.testing.assert_close(lse[masked], want_lse[masked], rtol=1e-6, atol=1e-5)
    grad_loss = torch.randn(B, generator=gen(10))
    grad = emulated(schedule, EMU.masked_diffusion_loss_backward, grad_loss, logits, lse, x_t, x0, weight,
                    mask_id=mask)
    want = CPU.masked_diffusion_loss_backward(grad_loss, logits, want_lse, x_t, x0, weight, mask_id=mask)
    torch.testing.assert_close(grad.float(), want.float(), rtol=1e-5, atol=1e-6)
    assert not grad[..., mask].any() and grad[masked][:, K - 1].all()  # SUBS: the mask's column only is out


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("case", SKIPPED_COLUMN_CASES)
def test_losses_ignore_the_column_they_leave_out_like_the_cpu(emulator, case, value):
    logits, x_t, x0, sigma, dsigma = skipped_column_inputs(case, value, "cpu")
    g = torch.tensor([1.0, -0.5])
    graph = "uniform" if case.startswith("uniform") else "absorb"

    def loss_and_grad(ops):
        if case == "masked_diffusion":
            loss, lse = ops.masked_diffusion_loss(logits, x_t, x0, dsigma, mask_id=12)
            return loss, ops.masked_diffusion_loss_backward(g, logits, lse, x_t, x0, dsigma, mask_id=12)
        loss = ops.score_entropy_loss(logits, x_t, x0, sigma, dsigma, graph=graph)
        return loss, ops.score_entropy_loss_backward(g, logits, x_t, x0, sigma, dsigma, graph=graph, scale_by_sigma=True)

    (loss, grad), (want_loss, want_grad) = emulated(emulator, loss_and_grad, EMU), loss_and_grad(CPU)
    assert loss.isfinite().all() and grad.isfinite().all()
    torch.testing.assert_close(loss, want_loss, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad, want_grad, rtol=1e-5, atol=1e-6)


# ---- RoPE --------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["vector", "odd-half", "misaligned", "per-sequence"])
def test_rotary(schedule, dtype, layout):
    """The 16-byte path (D 64, q read in place from a fused qkv), the one-pair path (half 35; x one
    element off a 16-byte boundary) and per-sequence tables, against the float64 rotation, both ways.
    Six heads: a thread's full group of four, and a group of two."""
    x, cos, sin = rotary_inputs("cpu", dtype, batch=2, seq=13, heads=6, dim=70 if layout == "odd-half" else 64,
                                per_sequence=layout == "per-sequence")
    if layout == "misaligned":
        x = torch.randn(2, 13, 6, 65, generator=gen(4)).to(dtype)[..., 1:]
    for inverse in (False, True):
        out = emulated(schedule, EMU.rotary, x, cos, sin, inverse)
        rotary_check(out, rotary_reference(x, cos, sin, inverse), dtype)
        assert torch.equal(out, CPU.rotary(x, cos, sin, inverse))


# ---- adaLN -------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
# the 16-byte path and element by element, each with the row in registers (64, 70) and in three
# passes (1096, 130)
@pytest.mark.parametrize("dim", [64, 70, 130, 1096])
def test_adaln(schedule, dtype, dim):
    """Both ops, a warp a row over more rows than warps (the grid-stride loop), against the float64
    norm; the residual's stream as CPU rounds it."""
    x, update, gate, weight, shift, scale = adaln_inputs("cpu", dtype, batch=3, seq=11, dim=dim)
    for eps in (1e-5, 0.5):  # 0.5: large beside the variance, where dropping it shows
        out = emulated(schedule, EMU.adaln, x, weight, shift, scale, eps)
        adaln_check(out, adaln_reference(x, weight, shift, scale, eps), dtype)
        x_next, out = emulated(schedule, EMU.adaln_residual, x, update, gate, weight, shift, scale, eps)
        assert torch.equal(x_next, CPU.adaln_residual(x, update, gate, weight, shift, scale, eps)[0])
        adaln_check(out, adaln_reference(x_next, weight, shift, scale, eps), dtype)


# ---- attention ---------------------------------------------------------------------------------

class EmulatedAttention(torch.autograd.Function):
    """The emulated forward and backward kernels behind autograd, as dllm.ops.attention has them."""

    @staticmethod
    def forward(ctx, q, k, v, kv_len, q_len, cu_q, cu_k, max_q, max_k, scale):
        out, lse = EMU.attention_forward(q, k, v, kv_len, q_len, cu_q, cu_k, max_q, max_k, scale)
        ctx.save_for_backward(q, k, v, out, lse, kv_len, q_len, cu_q, cu_k)
        ctx.sizes = max_q, max_k, scale
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, lse, kv_len, q_len, cu_q, cu_k = ctx.saved_tensors
        grads = EMU.attention_backward(grad_out, q, k, v, out, lse, kv_len, q_len, cu_q, cu_k, *ctx.sizes)
        return *grads, None, None, None, None, None, None, None


# The kernels the binding launches (DLLM_ATTENTION_KERNEL): mma.sync, or Hopper's wgmma with its
# two warpgroups half a tile apart (the default) or in lock step (DLLM_ATTENTION_PINGPONG=0), or
# with dQ added by the dK/dV kernel (DLLM_ATTENTION_DQ=atomic): the three variables' values.
ATTENTION_VARIABLES = ("DLLM_ATTENTION_KERNEL", "DLLM_ATTENTION_PINGPONG", "DLLM_ATTENTION_DQ")
ATTENTION_VARIANTS = {
    "mma": ("mma", "1", "separate"),
    "wgmma": ("wgmma", "1", "separate"),
    "wgmma lock-step": ("wgmma", "0", "separate"),
    "wgmma atomic-dq": ("wgmma", "1", "atomic"),
}


@pytest.fixture(params=list(ATTENTION_VARIANTS))
def attention_kernel(request, emulator, monkeypatch):
    for name, value in zip(ATTENTION_VARIABLES, ATTENTION_VARIANTS[request.param]):
        monkeypatch.setenv(name, value)
    return request.param


def attention_inputs(B, Sq, Sk, H, Hkv, D, dtype):
    g = gen(11)
    make = lambda *s: torch.randn(*s, generator=g).to(dtype).requires_grad_()  # noqa: E731
    return make(B, Sq, H, D), make(B, Sk, Hkv, D), make(B, Sk, Hkv, D)


@pytest.mark.parametrize("Sq", [1, 9, 130])  # decoding, a query block split over the keys, the tiled forward
def test_attention_never_reads_keys_past_kv_len(emulator, attention_kernel, Sq):
    """NaN in the padding of k and v (a KV-cache buffer's unwritten tail) reaches neither the
    output nor the gradients, whichever kernel the shape takes (0 * NaN is NaN)."""
    B, Sk, H, Hkv, D = 3, 300, 4, 2, 64
    q, k, v = (t.detach() for t in attention_inputs(B, Sq, Sk, H, Hkv, D, torch.bfloat16))
    kv_len = torch.tensor([300, 133, 0], dtype=torch.int32)
    keep = torch.arange(Sk)[None, :] < kv_len[:, None]
    k_nan, v_nan = (t.masked_fill(~keep[:, :, None, None], float("nan")).requires_grad_() for t in (k, v))
    q.requires_grad_()
    out = emulated(emulator, EmulatedAttention.apply, q, k_nan, v_nan, kv_len, None, None, None, Sq, Sk, D**-0.5)
    check(out, reference_attention(q, k, v, kv_len), reference_attention(q, k, v, kv_len, upcast=False), 2, "out")
    grads = torch.autograd.grad(out.float().square().sum(), (q, k_nan, v_nan))
    assert all(torch.isfinite(g).all() for g in grads)
    assert (grads[1][~keep] == 0).all() and (grads[2][~keep] == 0).all()


@pytest.mark.parametrize("Sq", [1, 9, 260])  # decoding, a query block split over the keys, the tiled forward
def test_attention_rows_without_work_are_stored_as_zeros_and_minus_inf(emulator, attention_kernel, Sq):
    """A padded batch's outputs start unfilled (poisoned here): the rows no attention kernel computes
    (queries past q_len, whole 128-query tiles of them too; every row of a sequence without keys;
    the key gradients past kv_len, and all of them for a sequence without queries) come out as
    zeros, and lse as -inf, whichever kernels run; the other rows' lse against float64."""
    B, Sk, H, Hkv, D = 4, 300, 4, 2, 64
    q, k, v = (t.detach().requires_grad_() for t in attention_inputs(B, Sq, Sk, H, Hkv, D, torch.bfloat16))
    kv_len = torch.tensor([300, 0, 77, 40], dtype=torch.int32)
    q_len = torch.tensor([Sq, Sq, max(Sq // 50, 1), 0], dtype=torch.int32)
    scale = D**-0.5
    rows = torch.arange(Sq)[None, :] < q_len[:, None]  # [B, Sq]
    worked = rows & (kv_len > 0)[:, None]
    _, lse = emulated(emulator, EMU.attention_forward, q.detach(), k.detach(), v.detach(), kv_len, q_len, None, None,
                      Sq, Sk, scale)
    want = lse_reference(q.detach(), k.detach(), kv_len, scale).masked_fill(~rows.flatten()[None, :], float("-inf"))
    torch.testing.assert_close(lse.double(), want, rtol=1e-5, atol=1e-5)
    out = emulated(emulator, EmulatedAttention.apply, q, k, v, kv_len, q_len, None, None, Sq, Sk, scale)
    assert (out[~worked] == 0).all() and out[worked].ne(0).any(-1).all()
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), torch.randn(out.shape, generator=gen(3)).to(out))
    keys = (torch.arange(Sk)[None, :] < kv_len[:, None]) & (q_len > 0)[:, None]
    assert (dq[~worked] == 0).all() and (dk[~keys] == 0).all() and (dv[~keys] == 0).all()
    assert dq[worked].ne(0).any(-1).all() and dv[keys].ne(0).any(-1).all()


@pytest.mark.parametrize("Sq", [1, 9, 130])  # decoding, a query block split over the keys, the tiled forward
@pytest.mark.parametrize("width", [torch.int32, torch.int64, torch.int16])
def test_attention_clamps_lengths_of_any_integer_width_to_the_sequence(emulator, attention_kernel, Sq, width):
    """The kernels read int32 and int64 lengths as given (the binding converts other widths) and clamp
    them to [0, S] themselves: a length past S is S, a negative one 0, as the CPU's check would have it."""
    B, Sk, H, Hkv, D = 3, 200, 4, 2, 64
    q, k, v = (t.detach().requires_grad_() for t in attention_inputs(B, Sq, Sk, H, Hkv, D, torch.bfloat16))
    kv_len, q_len = torch.tensor([Sk + 40, -3, 77], dtype=width), torch.tensor([-1, Sq + 9, max(Sq // 2, 1)], dtype=width)
    fit = lambda t, S: t.long().clamp(0, S)  # noqa: E731
    out = emulated(emulator, EmulatedAttention.apply, q, k, v, kv_len, q_len, None, None, Sq, Sk, D**-0.5)
    ref = reference_attention(q, k, v, fit(kv_len, Sk), fit(q_len, Sq))
    low = reference_attention(q, k, v, fit(kv_len, Sk), fit(q_len, Sq), upcast=False)
    check(out, ref, low, 2, "out")
    check_gradients(out, ref, low, (q, k, v))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize(
    "B, Sq, Sk, H, Hkv, D, lengths",
    [
        (2, 113, 203, 4, 2, 64, True),  # GQA, Sq != Sk, an empty and a partial sequence
        (1, 1, 113, 2, 2, 128, False),  # one query row
        (2, 203, 1, 2, 1, 64, True),  # one key
        (1, 130, 130, 1, 1, 128, True),  # full lengths, tiles of 64 plus a remainder
        (1, 1023, 1023, 1, 1, 64, False),  # 16 key tiles: the double-buffered pipeline in steady state
        # without lengths the outputs and gradients start unfilled (poisoned here): every row is stored
        (3, 9, 300, 4, 2, 64, False),  # GQA, a query block split over the keys
        (2, 3, 200, 4, 1, 128, False),  # MQA, a decoding step
    ],
)
def test_attention_forward_and_backward_match_float64(emulator, attention_kernel, dtype, B, Sq, Sk, H, Hkv, D, lengths):
    q, k, v = attention_inputs(B, Sq, Sk, H, Hkv, D, dtype)
    kv_len = q_len = None
    if lengths:
        kv_len = torch.tensor([0, Sk // 2 + 1][:B] if B > 1 else [Sk], dtype=torch.int32)
        q_len = torch.tensor([Sq, max(Sq - 7, 1)][:B] if B > 1 else [Sq], dtype=torch.int32)
    out = emulated(emulator, EmulatedAttention.apply, q, k, v, kv_len, q_len, None, None, Sq, Sk, D**-0.5)
    ref = reference_attention(q, k, v, kv_len, q_len)
    low = reference_attention(q, k, v, kv_len, q_len, upcast=False)
    check(out, ref, low, 2, "out")
    check_gradients(out, ref, low, (q, k, v))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("Sq, scores", [(1, "random"), (4, "random"), (2, "far_negative"), (3, "climbing"),
                                        (1, "steep")])
def test_attention_decoding_step_splits_the_keys(emulator, dtype, D, Sq, scores):
    """At most four queries a sequence (a decoding step) take the split-key kernels: chunks of 128
    keys (the last partial) merged per query, a sequence without keys, one shorter than a chunk,
    queries past q_len, GQA; scores whose exp(-lse) leaves float32's range, and ("steep") scores
    whose chunks' maxima lie more than 2^128 apart, so that only a merge against their common
    maximum stays finite. The log-sum-exp (which the tensor-core backward then reads) against
    float64, and the packed layout against the padded one."""
    B, Sk, H, Hkv = 4, 300, 6, 2
    make = attention_inputs if scores == "random" else \
        (lambda *a: growing_scores_inputs(*a, "cpu", reach=32.0)) if scores == "steep" else \
        (lambda *a: EXTREME_SCORES[scores](*a, "cpu"))  # noqa: E731
    q, k, v = make(B, Sq, Sk, H, Hkv, D, dtype)
    kv_len = torch.tensor([0, 300, 129, 5], dtype=torch.int32)
    q_len = torch.tensor([Sq, Sq, max(Sq - 2, 1), Sq], dtype=torch.int32)
    scale = 0.9 * D**-0.5
    out = emulated(emulator, EmulatedAttention.apply, q, k, v, kv_len, q_len, None, None, Sq, Sk, scale)
    ref = reference_attention(q, k, v, kv_len, q_len, softmax_scale=scale)
    low = reference_attention(q, k, v, kv_len, q_len, softmax_scale=scale, upcast=False)
    check(out, ref, low, 2, "out")
    check_gradients(out, ref, low, (q, k, v))
    qd, kd, vd = (t.detach() for t in (q, k, v))
    _, lse = EMU.attention_forward(qd, kd, vd, kv_len, None, None, None, Sq, Sk, scale)
    torch.testing.assert_close(lse.double(), lse_reference(qd, kd, kv_len, scale), rtol=1e-5, atol=1e-5)
    cu_q = torch.tensor([0, Sq, 2 * Sq, 3 * Sq, 4 * Sq], dtype=torch.int32)
    cu_k = torch.cat([torch.zeros(1, dtype=torch.int32), kv_len.cumsum(0, dtype=torch.int32)])
    packed = torch.cat([kd[b, :n] for b, n in enumerate(kv_len.tolist())]), \
        torch.cat([vd[b, :n] for b, n in enumerate(kv_len.tolist())])
    varlen, _ = EMU.attention_forward(qd.flatten(0, 1), *packed, None, None, cu_q, cu_k, Sq, Sk, scale)
    padded, _ = EMU.attention_forward(qd, kd, vd, kv_len, None, None, None, Sq, Sk, scale)
    assert torch.equal(varlen.view_as(padded), padded)


@pytest.mark.parametrize("dtype, D", [(torch.bfloat16, 128), (torch.float16, 64)])
@pytest.mark.parametrize("Sq, scores", [(5, "random"), (33, "random"), (64, "random"), (17, "far_negative"),
                                        (32, "climbing"), (8, "steep")])
def test_attention_query_block_splits_the_keys(emulator, dtype, D, Sq, scores):
    """5 to 64 queries a sequence over many keys on few heads (a Fast-dLLM cached block) take the
    tensor-core forward split into key chunks: here 4 chunks of 192 keys for 12 (sequence, head)
    pairs on the emulated 132 SMs, the last chunk partial, a sequence without keys, one within one
    chunk, queries past q_len, GQA; the chunks merged by the decoding merge kernel, whatever
    maximum each chunk's conditional rescaling left it at ("climbing", "steep": maxima far apart).
    The log-sum-exp (which the backward reads) against float64, packed against padded."""
    B, Sk, H, Hkv = 3, 600, 4, 2
    make = attention_inputs if scores == "random" else \
        (lambda *a: growing_scores_inputs(*a, "cpu", reach=32.0)) if scores == "steep" else \
        (lambda *a: EXTREME_SCORES[scores](*a, "cpu"))  # noqa: E731
    q, k, v = make(B, Sq, Sk, H, Hkv, D, dtype)
    kv_len = torch.tensor([600, 0, 150], dtype=torch.int32)
    q_len = torch.tensor([Sq, Sq, max(Sq - 3, 1)], dtype=torch.int32)
    scale = 0.9 * D**-0.5
    qd, kd, vd = (t.detach() for t in (q, k, v))
    out, lse = emulated(emulator, EMU.attention_forward, qd, kd, vd, kv_len, q_len, None, None, Sq, Sk, scale)
    ref = reference_attention(qd, kd, vd, kv_len, q_len, softmax_scale=scale)
    low = reference_attention(qd, kd, vd, kv_len, q_len, softmax_scale=scale, upcast=False)
    check(out, ref, low, 2, "out")
    rows = (torch.arange(Sq)[None, :] < q_len[:, None]).flatten()
    torch.testing.assert_close(lse.double()[:, rows], lse_reference(qd, kd, kv_len, scale)[:, rows], rtol=1e-5, atol=1e-5)
    if Sq == 33:
        grad_out = emulated(emulator, EmulatedAttention.apply, q, k, v, kv_len, q_len, None, None, Sq, Sk, scale)
        check_gradients(grad_out, reference_attention(q, k, v, kv_len, q_len, softmax_scale=scale),
                        reference_attention(q, k, v, kv_len, q_len, softmax_scale=scale, upcast=False), (q, k, v))
    cu_q = torch.cat([torch.zeros(1, dtype=torch.int32), q_len.cumsum(0, dtype=torch.int32)])
    cu_k = torch.cat([torch.zeros(1, dtype=torch.int32), kv_len.cumsum(0, dtype=torch.int32)])
    packed = [torch.cat([t[b, :n] for b, n in enumerate(lens.tolist())]) for t, lens in ((qd, q_len), (kd, kv_len),
                                                                                       (vd, kv_len))]
    varlen, _ = EMU.attention_forward(*packed, None, None, cu_q, cu_k, Sq, Sk, scale)
    assert torch.equal(varlen, torch.cat([out[b, :n] for b, n in enumerate(q_len.tolist())]))


def test_attention_query_block_split_is_schedule_independent(schedule):
    """The split forward: every chunk's partial rows through the workspace, then the merge."""
    q, k, v = (t.detach() for t in attention_inputs(1, 20, 300, 2, 1, 64, torch.bfloat16))
    out, lse = emulated(schedule, EMU.attention_forward, q, k, v, None, None, None, None, 20, 300, 0.125)
    schedule.configure(0, True, 0, 0)
    out0, lse0 = EMU.attention_forward(q, k, v, None, None, None, None, 20, 300, 0.125)
    assert torch.equal(out, out0) and torch.equal(lse, lse0)


@pytest.mark.parametrize("scores", list(EXTREME_SCORES))
def test_attention_extreme_scores_with_a_softmax_scale(emulator, attention_kernel, scores):
    """A scale other than 1/sqrt(D) (the kernels fold it into the exponent), with scores whose
    exp(-lse) overflows float32 (the dQ kernels must zero the padded keys' dS, not multiply) or
    whose row maxima climb from key tile to key tile (a stale maximum stands only while P stays
    below 2^8, kRescaleThreshold, else float16 P overflows)."""
    q, k, v = EXTREME_SCORES[scores](2, 113, 203, 2, 1, 64, torch.float16, "cpu")
    kv_len = torch.tensor([203, 102], dtype=torch.int32)
    out = emulated(emulator, EmulatedAttention.apply, q, k, v, kv_len, None, None, None, 113, 203, 0.9)
    ref = reference_attention(q, k, v, kv_len, None, softmax_scale=0.9)
    low = reference_attention(q, k, v, kv_len, None, softmax_scale=0.9, upcast=False)
    check(out, ref, low, 2, "out")
    check_gradients(out, ref, low, (q, k, v))


def test_attention_is_schedule_independent_and_deterministic(schedule, attention_kernel):
    # 5 key tiles of 64: a buffer is refilled while the product of the tile 3 before may still read it
    q, k, v = attention_inputs(2, 70, 270, 2, 1, 64, torch.bfloat16)
    kv_len = torch.tensor([270, 66], dtype=torch.int32)
    out = emulated(schedule, EmulatedAttention.apply, q, k, v, kv_len, None, None, None, 70, 270, 0.125)
    grads = torch.autograd.grad(out, (q, k, v), torch.randn(out.shape, generator=gen(12)).to(out))
    schedule.configure(0, True, 0, 0)
    out0 = EmulatedAttention.apply(q, k, v, kv_len, None, None, None, 70, 270, 0.125)
    grads0 = torch.autograd.grad(out0, (q, k, v), torch.randn(out.shape, generator=gen(12)).to(out))
    assert torch.equal(out, out0)
    for a, b in zip(grads, grads0):
        assert torch.equal(a, b)


def test_attention_decoding_step_is_schedule_independent(schedule):
    """The split-key kernels: scores and values shared through shared memory between barriers, a
    partial chunk, three queries."""
    q, k, v = (t.detach() for t in attention_inputs(2, 3, 270, 4, 2, 128, torch.float16))
    kv_len = torch.tensor([270, 100], dtype=torch.int32)
    out, lse = emulated(schedule, EMU.attention_forward, q, k, v, kv_len, None, None, None, 3, 270, 0.1)
    schedule.configure(0, True, 0, 0)
    out0, lse0 = EMU.attention_forward(q, k, v, kv_len, None, None, None, 3, 270, 0.1)
    assert torch.equal(out, out0) and torch.equal(lse, lse0)


@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("dq", ["separate", "atomic"])
def test_attention_atomic_dq_adds_dq_inside_the_dkdv_kernel(emulator, monkeypatch, D, dq):
    """DLLM_ATTENTION_DQ=atomic takes its own path (float atomics from the dK/dV kernel); by
    default the dQ kernel runs. Either way dQ is the same function of the inputs, so the float64
    tests alone could not tell the paths apart."""
    monkeypatch.setenv("DLLM_ATTENTION_KERNEL", "wgmma")
    monkeypatch.setenv("DLLM_ATTENTION_DQ", dq)
    q, k, v = attention_inputs(2, 70, 130, 2, 1, D, torch.bfloat16)
    kv_len = torch.tensor([130, 66], dtype=torch.int32)
    out = EmulatedAttention.apply(q, k, v, kv_len, None, None, None, 70, 130, 0.125)
    before = emulator.float_atomics()
    torch.autograd.grad(out.float().square().sum(), (q, k, v))
    # 2 CTAs of 128 keys, then 1; each of their 2 warpgroups adds 70 x D a head, for each of 2 heads
    expected = (2 + 1) * 2 * 2 * 70 * D if dq == "atomic" else 0
    assert emulator.float_atomics() - before == expected


def test_attention_varlen_equals_padded(emulator, attention_kernel):
    lengths = [5, 70, 1]
    q, k, v = attention_inputs(3, 70, 70, 2, 2, 64, torch.bfloat16)
    q, k, v = (t.detach() for t in (q, k, v))
    packed = [torch.cat([t[b, :n] for b, n in enumerate(lengths)]) for t in (q, k, v)]
    cu = torch.tensor([0, 5, 75, 76], dtype=torch.int32)
    out_varlen, _ = emulated(emulator, EMU.attention_forward, *packed, None, None, cu, cu, 70, 70, 0.125)
    n = torch.tensor(lengths, dtype=torch.int32)
    out_padded, _ = EMU.attention_forward(q, k, v, n, n, None, None, 70, 70, 0.125)
    assert torch.equal(out_varlen, torch.cat([out_padded[b, :m] for b, m in enumerate(lengths)]))


def test_attention_malformed_cu_seqlens_stay_inside_the_packed_tokens(emulator, attention_kernel):
    """The CUDA binding does not check cu_seqlens (that would sync with the host) but clamps them:
    a sequence running past the packed tokens attends over the tokens that exist, and nothing
    outside q, k, v, out and lse is read or written (unclamped, the second sequence's query rows
    would be read past q, and its lse rows written over the next head's)."""
    storage = torch.full((3, 100, 2, 64), float("nan"), dtype=torch.bfloat16)  # poison past the 50 tokens
    q, k, v = (storage[i, :50] for i in range(3))
    for t in (q, k, v):
        t.copy_(torch.randn(t.shape, generator=gen(14)))
    claimed = torch.tensor([0, 30, 100, 120]), torch.tensor([0, 30, 90, 95])  # the third starts past the end
    out, lse = emulated(emulator, EMU.attention_forward, q, k, v, None, None, *claimed, 100, 100, 0.125)
    clamped = torch.tensor([0, 30, 50, 50])
    want_out, want_lse = EMU.attention_forward(q, k, v, None, None, clamped, clamped, 100, 100, 0.125)
    assert torch.equal(out, want_out) and torch.equal(lse, want_lse)
    assert out.isfinite().all() and lse.isfinite().all()


def clamped_ranges(cu: torch.Tensor, tokens: int, max_seqlen: int) -> list[tuple[int, int]]:
    """(start, count) of each sequence as the CUDA binding reads a malformed cu_seqlens: the start
    clamped into the tokens, the count (int64's wrapping difference, as torch's diff) into
    [0, max_seqlen] and the tokens after the start."""
    ranges = []
    for lo, hi in zip(cu.tolist(), cu.tolist()[1:]):
        start, n = min(max(lo, 0), tokens), (hi - lo + 2**63) % 2**64 - 2**63
        ranges.append((start, min(max(n, 0), max_seqlen, tokens - start)))
    return ranges


@pytest.mark.parametrize("cu_k", [
    torch.tensor([-3, 20, 5, 45], dtype=torch.int16),  # a negative start; a sequence ending before it starts
    torch.tensor([0, 2**62, -2**63 + 10, 2**62]),  # 2**62 - (-2**63 + 10) wraps negative: no keys
])
def test_attention_decreasing_cu_seqlens_are_clamped_sequence_by_sequence(emulator, attention_kernel, cu_k):
    """cu_seqlens of any integer width that decrease, start below 0 or lie far apart: each
    sequence attends over the keys its clamped range names (ranges may overlap), and query rows
    that no sequence holds, or whose sequence has no keys, are zero with a -inf log-sum-exp."""
    g = gen(16)
    q = torch.randn(30, 2, 64, generator=g).to(torch.bfloat16)
    k, v = (torch.randn(50, 1, 64, generator=g).to(torch.bfloat16) for _ in range(2))
    cu_q = torch.tensor([0, 10, 10, 26], dtype=torch.int16)  # rows 26-29 in no sequence
    out, lse = emulated(emulator, EMU.attention_forward, q, k, v, None, None, cu_q, cu_k, 20, 64, 0.125)
    zero_rows = torch.ones(30, dtype=torch.bool)
    for (qs, qn), (ks, kn) in zip(clamped_ranges(cu_q, 30, 20), clamped_ranges(cu_k, 50, 64)):
        if qn == 0 or kn == 0:
            continue
        zero_rows[qs:qs + qn] = False
        sq, sk, sv = q[None, qs:qs + qn], k[None, ks:ks + kn], v[None, ks:ks + kn]
        ref = reference_attention(sq, sk, sv, softmax_scale=0.125)
        check(out[None, qs:qs + qn], ref, reference_attention(sq, sk, sv, softmax_scale=0.125, upcast=False), 2, "out")
        torch.testing.assert_close(lse[:, qs:qs + qn].double(), lse_reference(sq, sk, torch.tensor([kn]), 0.125), rtol=1e-5, atol=1e-5)
    assert zero_rows[26:].all() and not zero_rows.all()
    assert out[zero_rows].eq(0).all() and lse[:, zero_rows].eq(-torch.inf).all()


@pytest.mark.parametrize("n", [4, 9, 130])  # max_seqlen_q: decoding, a query block split over the keys, tiled
def test_attention_varlen_rows_without_work_are_stored_as_zeros_and_minus_inf(emulator, attention_kernel, n):
    """A varlen batch's outputs start unfilled too (poisoned here): query rows before the first
    sequence, past one clamped to max_seqlen_q, after the last, and of a sequence without keys come
    out as zeros (lse -inf); key gradient rows before the first sequence, of one without queries
    and after the last as zeros; the rest against float64. A sequence lying in an earlier one's
    gap (cu_seqlens_q decreasing) keeps its attention: the gaps are stored before the attention
    kernels run."""
    H, Hkv, D, scale = 4, 2, 64, 0.125
    cu_q = torch.tensor([2, n + 5, 2 * n + 5, n + 3, n + 5])  # 0: n + 3 rows, clamped to n; 2: none; 3: in 0's gap
    cu_k = torch.tensor([1, 301, 301, 331, 361])  # 1: no keys
    g = gen(17)
    q, k, v = (torch.randn(rows, heads, D, generator=g).to(torch.bfloat16).requires_grad_()
               for rows, heads in ((2 * n + 8, H), (365, Hkv), (365, Hkv)))
    q_ranges, k_ranges = clamped_ranges(cu_q, len(q), n), clamped_ranges(cu_k, len(k), 300)
    worked = [b for b, ((_, qn), (_, kn)) in enumerate(zip(q_ranges, k_ranges)) if qn and kn]
    assert worked == [0, 3]
    q_rows, k_rows = ([torch.arange(s, s + c) for s, c in (ranges[b] for b in worked)] for ranges in (q_ranges, k_ranges))

    def pad(t, rows, S):  # the worked sequences' rows, [len(rows), S, heads, D]
        return torch.stack([torch.cat([t[r], t.new_zeros(S - len(r), *t.shape[1:])]) for r in rows])

    q_len, kv_len = (torch.tensor([len(r) for r in rows]) for rows in (q_rows, k_rows))

    def reference(upcast):  # the worked sequences' attention in their packed rows, zeros elsewhere
        out = reference_attention(pad(q, q_rows, n), pad(k, k_rows, 300), pad(v, k_rows, 300), kv_len, q_len, scale,
                                  upcast)
        rows = torch.cat([out[i, :len(r)] for i, r in enumerate(q_rows)])
        return rows.new_zeros(q.shape).index_copy(0, torch.cat(q_rows), rows)

    out = emulated(emulator, EmulatedAttention.apply, q, k, v, None, None, cu_q, cu_k, n, 300, scale)
    idle_q, idle_k = torch.ones(len(q), dtype=torch.bool), torch.ones(len(k), dtype=torch.bool)
    idle_q[torch.cat(q_rows)], idle_k[torch.cat(k_rows)] = False, False
    assert (out[idle_q] == 0).all() and out[~idle_q].ne(0).any(-1).all()
    grad_out = torch.randn(out.shape, generator=gen(3)).to(out)
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), grad_out, retain_graph=True)
    assert (dq[idle_q] == 0).all() and (dk[idle_k] == 0).all() and (dv[idle_k] == 0).all()
    assert dq[~idle_q].ne(0).any(-1).all() and dv[~idle_k].ne(0).any(-1).all()
    check(out, reference(True), reference(False), 2, "out")
    check_gradients(out, reference(True), reference(False), (q, k, v))
    _, lse = emulated(emulator, EMU.attention_forward, q.detach(), k.detach(), v.detach(), None, None, cu_q, cu_k, n,
                      300, scale)
    want = lse_reference(pad(q.detach(), q_rows, n), pad(k.detach(), k_rows, 300), kv_len, scale).view(H, -1, n)
    want = torch.cat([want[:, i, :len(r)] for i, r in enumerate(q_rows)], 1)
    torch.testing.assert_close(lse[:, ~idle_q].double(), want, rtol=1e-5, atol=1e-5)
    assert lse[:, idle_q].eq(-torch.inf).all()


def test_attention_generous_max_seqlen_is_clamped_to_the_packed_tokens(emulator, attention_kernel):
    """max_seqlen_* only bound the lengths: bounds past 2^31 (a caller's "no limit") give the exact
    bounds' result. Unclamped they sized the grids and key chunks, and overflowed the kernels'
    32-bit positions in a sequence: a query block over 600 keys at max_seqlen_k = 2^32 split the
    keys into 132 chunks of 32537632, chunk * chunk_keys wrapped negative and the kernel read
    keys before k (a segfault in the emulator); past max_seqlen_q = 2^31 the one-pass forward's
    query tile offset wrapped likewise."""
    g = gen(15)
    for q_lens, k_lens in (([3, 5], [600, 250]), ([70, 5], [100, 30])):  # the key split; one pass
        q = torch.randn(sum(q_lens), 2, 64, generator=g).to(torch.bfloat16)
        k, v = (torch.randn(sum(k_lens), 2, 64, generator=g).to(torch.bfloat16) for _ in range(2))
        cq, ck = (torch.tensor([0, n[0], n[0] + n[1]]) for n in (q_lens, k_lens))
        exact = (max(q_lens), max(k_lens))
        want = EMU.attention_forward(q, k, v, None, None, cq, ck, *exact, 0.125)
        dout = torch.randn(q.shape, generator=g).to(torch.bfloat16)
        want_grads = EMU.attention_backward(dout, q, k, v, *want, None, None, cq, ck, *exact, 0.125)
        for bounds in ((exact[0], 2**32), (2**32, 2**32), (2**40, 2**62)):
            got = emulated(emulator, EMU.attention_forward, q, k, v, None, None, cq, ck, *bounds, 0.125)
            assert all(torch.equal(a, b) for a, b in zip(got, want)), (q_lens, bounds)
            grads = EMU.attention_backward(dout, q, k, v, *want, None, None, cq, ck, *bounds, 0.125)
            assert all(torch.equal(a, b) for a, b in zip(grads, want_grads)), (q_lens, bounds)


def test_attention_refuses_sequences_past_32_bit_positions(emulator):
    """The CUDA kernels count positions in a sequence in 32 bits; only an expanded (stride-0) k
    and v reach 2^31 keys, which the binding refuses rather than returning NaN (the count wrapped
    negative, so no chunk read a key)."""
    q = torch.zeros(1, 8, 1, 64, dtype=torch.bfloat16)
    k = torch.zeros(1, 1, 1, 64, dtype=torch.bfloat16).expand(1, 2**31, 1, 64)
    with pytest.raises(ValueError, match="at most 2147483392 queries and keys, got 8 and 2147483648"):
        EMU.attention_forward(q, k, k, None, None, None, None, 8, 2**31, 0.125)


def test_offsets_past_32_bits_are_read_in_place(emulator):
    """Rows of logits, tokens and heads more than 2^31 elements apart, in the CUDA kernels."""
    check_far_apart_offsets(EMU)


def test_attention_degenerate_sizes_launch_nothing_invalid(emulator, attention_kernel):
    """Zero heads is an empty result on both devices (a launch with gridDim.y = 0 is an error on a
    GPU, and in the emulator); a negative max_seqlen is refused on both."""
    q = torch.randn(1, 8, 0, 64, dtype=torch.bfloat16, requires_grad=True)
    kv = torch.randn(1, 8, 1, 64, dtype=torch.bfloat16, requires_grad=True)
    for out in (EmulatedAttention.apply(q, kv, kv, None, None, None, None, 8, 8, 0.125), dllm.ops.attention(q, kv, kv)):
        assert out.shape == q.shape
        out.sum().backward()
        assert kv.grad.abs().sum() == 0
    # no keys: zeros out and dq (unfilled, so poisoned, before the atomic path's rounding pass)
    q = torch.randn(2, 8, 4, 64, dtype=torch.bfloat16, requires_grad=True)
    no_keys = torch.randn(2, 0, 2, 64, dtype=torch.bfloat16, requires_grad=True)
    out = EmulatedAttention.apply(q, no_keys, no_keys, None, None, None, None, 8, 0, 0.125)
    out.backward(torch.randn_like(out))
    assert out.eq(0).all() and q.grad.eq(0).all()
    packed = torch.randn(4, 2, 64, dtype=torch.bfloat16)
    cu = torch.tensor([0, 4])
    for op in (EMU.attention_forward, CPU.attention_forward):
        with pytest.raises(ValueError, match="max_seqlen_q and max_seqlen_k must be >= 0"):
            op(packed, packed, packed, None, None, cu, cu, -1, 4, 0.125)


def test_row_kernels_refuse_a_vocabulary_past_their_shared_memory(emulator):
    """Two floats per group of 2048 entries must fit the default 48 KB of shared memory: the
    largest vocabulary each binding takes launches (predict_masked's limit once assumed one float
    a group: vocabularies up to 20.48M passed its check, and those past about 11.6M then failed the
    launch with "invalid argument", their 2 x 4 bytes a group of dynamic shared memory and the
    static scratch past 48 KB)."""
    def refused(op, vocab, call):
        logits = torch.empty(1, 1, vocab + 1, dtype=torch.bfloat16).uniform_()
        with pytest.raises(ValueError, match=f"{op}: CUDA supports a vocabulary of up to {vocab} entries, got {vocab + 1}"):
            call(logits, torch.full((1, 1), vocab))
        logits = logits[..., :vocab]
        mask = torch.full((1, 1), vocab - 1)
        assert emulated(emulator, call, logits, mask)[0].shape[-1] == 1  # launched within the shared memory

    refused("sample_categorical", 10240000, lambda z, x: EMU.sample_categorical(z[0], None, 1.0))
    refused("predict_masked", 10240000, lambda z, x: EMU.predict_masked(z, x, x.item()))
    refused("sedd_step", 10240000, lambda z, x: EMU.sedd_step(z, x, torch.ones(1), torch.ones(1), graph="absorb",
                                                              method="euler"))


def test_attention_binding_refuses_what_the_kernels_do_not_take(emulator):
    q = torch.randn(1, 8, 2, 40, dtype=torch.bfloat16)
    with pytest.raises(NotImplementedError, match="head dimension 64 or 128"):
        EMU.attention_forward(q, q, q, None, None, None, None, 8, 8, 0.1)
    q = torch.randn(1, 8, 2, 64)
    with pytest.raises(NotImplementedError, match="float32 runs on the CPU only"):
        EMU.attention_forward(q, q, q, None, None, None, None, 8, 8, 0.1)
    assert dllm.ops.attention(q, q, q).shape == q.shape  # the CPU op takes both


def test_attention_kernel_choice_is_checked(emulator, monkeypatch):
    q = torch.randn(1, 8, 2, 64, dtype=torch.bfloat16)
    monkeypatch.setenv("DLLM_ATTENTION_KERNEL", "flash")
    with pytest.raises(RuntimeError, match='DLLM_ATTENTION_KERNEL must be "mma" or "wgmma", got "flash"'):
        EMU.attention_forward(q, q, q, None, None, None, None, 8, 8, 0.1)
    monkeypatch.setenv("DLLM_ATTENTION_KERNEL", "wgmma")
    monkeypatch.setenv("DLLM_ATTENTION_PINGPONG", "yes")
    with pytest.raises(RuntimeError, match='DLLM_ATTENTION_PINGPONG must be "0" or "1", got "yes"'):
        EMU.attention_forward(q, q, q, None, None, None, None, 8, 8, 0.1)
    monkeypatch.setenv("DLLM_ATTENTION_PINGPONG", "1")
    out, lse = EMU.attention_forward(q, q, q, None, None, None, None, 8, 8, 0.1)
    monkeypatch.setenv("DLLM_ATTENTION_DQ", "fused")
    with pytest.raises(RuntimeError, match='DLLM_ATTENTION_DQ must be "separate" or "atomic", got "fused"'):
        EMU.attention_backward(out, q, q, q, out, lse, None, None, None, None, 8, 8, 0.1)


def test_rows_past_2_gib(emulator):
    """Byte offsets past 2^31 (LLaDA's B=8, L=1024 logits are 2.07 GB in bf16): two rows of a
    strided view, the second one 2 GiB after the first, read without any 32-bit overflow. Only
    the two rows' pages are ever touched."""
    V, gap = 50258, (1 << 30) + 17
    storage = torch.empty(gap + V, dtype=torch.bfloat16)
    logits = storage.as_strided((1, 2, V), (2 * gap, gap, 1))
    logits.copy_((torch.randn(1, 2, V, generator=gen(13)) * 3).to(torch.bfloat16))
    compact = logits.contiguous()
    rows = logits.view(2, V)
    got = emulated(emulator, EMU.sample_categorical, rows, None, 0.8, generator=gen())
    assert torch.equal(got[0], CPU.sample_categorical(compact.view(2, V), None, 0.8, generator=gen())[0])
    x = torch.full((1, 2), MASK)
    got = emulated(emulator, EMU.predict_masked, logits, x, MASK, 1.0, generator=gen())
    assert torch.equal(got[0], CPU.predict_masked(compact, x, MASK, 1.0, generator=gen())[0])
    x = torch.tensor([[V - 1, 5]])
    sigma, dsig = torch.tensor([1.5]), torch.tensor([0.2])
    got = emulated(emulator, EMU.sedd_step, logits, x, sigma, dsig, graph="absorb", method="analytic", generator=gen())
    want = CPU.sedd_step(compact, x, sigma, dsig, graph="absorb", method="analytic", generator=gen())
    assert torch.equal(got, want)


def test_commit_tokens_threshold_ties_and_rows_below_it(emulator):
    """The threshold rule on its edges: a confidence equal to the threshold commits (>=); a row
    with no confidence at or above it still commits its most confident position, the lowest index
    of a tie (Fast-dLLM's progress guarantee); an all -inf row its lowest eligible index."""
    x, x0, conf = commit_inputs(3, 517, "cpu")  # confidences on a 1/8 grid: many at 0.625 exactly
    conf[1] *= 0.5  # at most 0.5, reached at several positions
    conf[2] = float("-inf")
    x_emu, x_cpu = x.clone(), x.clone()
    got = emulated(emulator, EMU.commit_tokens, x_emu, x0, conf, MASK, threshold=0.625)
    want = CPU.commit_tokens(x_cpu, x0, conf, MASK, threshold=0.625)
    assert torch.equal(got, want) and torch.equal(x_emu, x_cpu)
    masked = x == MASK
    assert got[0] == (masked[0] & (conf[0] >= 0.625)).sum() and ((conf[0] == 0.625) & masked[0]).any()
    assert got[1] == got[2] == 1
    top = torch.where(masked[1] & (conf[1] == conf[1][masked[1]].max()))[0]
    assert len(top) > 1 and x_emu[1, top[0]] == x0[1, top[0]]
    assert x_emu[2, torch.where(masked[2])[0][0]] == x0[2, torch.where(masked[2])[0][0]]


@pytest.mark.parametrize("case", ["negative-count", "window-reversed", "window-past-end", "prob-nan", "prob-above-1",
                                  "nan-confidence"])
def test_commit_tokens_bad_rows_report_minus_one(emulator, case):
    """The CUDA op never syncs: a row with an invalid value is left unchanged and counts -1, where
    the CPU op raises; the other rows commit as on the CPU. A NaN confidence outside the row's
    eligible positions (unmasked, or outside its window) is no error."""
    B, L = 3, 203
    x, x0, conf = commit_inputs(B, L, "cpu")
    rule = {"negative-count": dict(num_tokens=torch.tensor([5, -1, 7])),
            "window-reversed": dict(num_tokens=torch.tensor([5, 4, 7]), window=torch.tensor([[0, L], [60, 50], [3, 90]])),
            "window-past-end": dict(threshold=0.5, window=torch.tensor([[0, L], [10, L + 1], [3, 90]])),
            "prob-nan": dict(prob=torch.tensor([0.5, float("nan"), 0.25])),
            "prob-above-1": dict(prob=torch.tensor([0.5, 1.5, 0.25])),
            "nan-confidence": dict(num_tokens=torch.tensor([5, 4, 7]), window=torch.tensor([[0, L], [0, L], [3, 90]]))}[case]
    if case == "nan-confidence":
        conf[1, torch.where(x[1] == MASK)[0][3]] = float("nan")  # eligible: the row is rejected
        conf[0, torch.where(x[0] != MASK)[0][0]] = float("nan")  # not masked: no error
        conf[2, 150] = float("nan")  # outside row 2's window: no error
    x_emu = x.clone()
    got = emulated(emulator, EMU.commit_tokens, x_emu, x0, conf, MASK, generator=gen(), **rule)
    assert got[1] == -1 and torch.equal(x_emu[1], x[1])
    with pytest.raises(ValueError, match="row 1 has"):
        CPU.commit_tokens(x.clone(), x0, conf, MASK, generator=gen(), **rule)
    # the valid rows, as the CPU commits them (each row draws from its own counters)
    keep = [0, 2]
    x_cpu = x.clone()
    for name in ("num_tokens", "prob", "window"):
        if name in rule:
            rule[name] = rule[name].clone()
            rule[name][1] = {"num_tokens": 0, "prob": 0.0, "window": torch.tensor([0, 0])}[name]
    conf_ok = conf.clone()
    conf_ok[1] = 0.0
    want = CPU.commit_tokens(x_cpu, x0, conf_ok, MASK, generator=gen(), **rule)
    assert torch.equal(got[keep], want[keep]) and torch.equal(x_emu[keep], x_cpu[keep])
    assert (got[keep] > 0).all()


def test_kernel_errors_for_bad_temperatures_tokens_sigmas_and_nan_at_skipped_columns(emulator):
    """The per-row checks of the kernels, read back like the CPU ops' errors: an infinite or NaN
    temperature; sedd_step's token outside [0, K), sigma 0, and a NaN at x's own logit (x's
    log-score is fixed, but the CPU op rejects the row's NaN all the same); predict_masked's NaN
    mask logit; sample_transition's token at num_classes and infinite sigma; the losses' masked
    target and bad sigma."""
    logits = torch.randn(3, 3000, generator=gen(1))
    for bad in (float("inf"), float("nan")):
        t = torch.tensor([1.0, bad, 0.5])
        same_error(lambda: EMU.sample_categorical(logits, t, 1.0), lambda: CPU.sample_categorical(logits, t, 1.0))
    z = logits.view(1, 3, 3000)
    sigma, dsig = torch.tensor([1.0]), torch.tensor([0.1])
    for graph in ("absorb", "uniform"):
        for x, s in ((torch.tensor([[2999, 3000, 5]]), sigma), (torch.tensor([[2999, 4, 5]]), torch.zeros(1))):
            same_error(lambda: EMU.sedd_step(z, x, s, dsig, graph=graph, method="analytic"),
                       lambda: CPU.sedd_step(z, x, s, dsig, graph=graph, method="analytic"))
        nan_at_x = z.clone()
        nan_at_x[0, 1, 2999] = float("nan")  # row 1's x (absorb: the mask, which the row reads)
        x = torch.tensor([[5, 2999, 6]])
        same_error(lambda: EMU.sedd_step(nan_at_x, x, sigma, dsig, graph=graph, method="euler"),
                   lambda: CPU.sedd_step(nan_at_x, x, sigma, dsig, graph=graph, method="euler"))
    nan_mask = z.clone()
    nan_mask[0, 2, MASK] = float("nan")
    x = torch.full((1, 3), MASK)
    same_error(lambda: EMU.predict_masked(nan_mask, x, MASK), lambda: CPU.predict_masked(nan_mask, x, MASK))
    for x0, s in ((torch.tensor([[3, 501, 4]]), torch.ones(1)), (torch.tensor([[3, 5, 4]]), torch.tensor([float("inf")]))):
        same_error(lambda: EMU.sample_transition(x0, s, graph="absorb", num_classes=501),
                   lambda: CPU.sample_transition(x0, s, graph="absorb", num_classes=501))
    x_t, x0 = torch.tensor([[MASK, 3, MASK]]), torch.tensor([[5, 3, MASK]])
    same_error(lambda: EMU.masked_diffusion_loss(z, x_t, x0, torch.ones(1), mask_id=MASK),
               lambda: CPU.masked_diffusion_loss(z, x_t, x0, torch.ones(1), mask_id=MASK))
    x_t, x0 = torch.tensor([[2999, 3, 2999]]), torch.tensor([[5, 3, 8]])
    for s in (torch.tensor([float("nan")]), torch.tensor([-1.0])):
        same_error(lambda: EMU.score_entropy_loss(z, x_t, x0, s, torch.ones(1), graph="absorb"),
                   lambda: CPU.score_entropy_loss(z, x_t, x0, s, torch.ones(1), graph="absorb"))


def test_sedd_step_at_dsigma_zero(emulator):
    """dsigma = 0 (a schedule's flat end) is a valid step on both devices."""
    logits = torch.randn(2, 9, 3001, generator=gen(1)).bfloat16()
    x = torch.randint(0, 3001, (2, 9), generator=gen(2))
    x[:, ::2] = 3000
    sigma, dsig = torch.tensor([0.8, 2.5]), torch.tensor([0.0, 0.3])
    for graph in ("absorb", "uniform"):
        for method in ("analytic", "euler", "denoise"):
            kwargs = dict(graph=graph, method=method)
            got = emulated(emulator, EMU.sedd_step, logits, x, sigma, dsig, generator=gen(), **kwargs)
            assert torch.equal(got, CPU.sedd_step(logits, x, sigma, dsig, generator=gen(), **kwargs)), kwargs


@pytest.mark.parametrize("confidence", ["prob", "margin", "entropy"])
def test_predict_masked_model_confidence_under_filtering_and_long_shifts(emulator, confidence):
    """The model's confidence (LLaDA's) is the unfiltered softmax's even when the draw is filtered
    to the top 1 or 2 (the margin keeps the second largest value the filter drops); a logits shift
    past 1 reads row i - shift (row 0 for the first positions)."""
    logits, x = masked_batch(2, 11, 3001, "cpu", torch.bfloat16)
    x[:, :3] = MASK
    for temperature, top_k, top_p, shift in ((0.7, 1, 1.0, 0), (1.3, 2, 1.0, 0), (0.7, 0, 1e-6, 0), (0.9, 0, 1.0, 3),
                                              (0.0, 0, 1.0, 2)):
        args = (logits, x, MASK, temperature, top_k, top_p, confidence, shift, "model")
        got = emulated(emulator, EMU.predict_masked, *args, generator=gen())
        want = CPU.predict_masked(*args, generator=gen())
        assert torch.equal(got[0], want[0])
        torch.testing.assert_close(got[1], want[1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("batch_seq_head_strides", [(1000, 200, 66), (1000, 194, 64), (962, 192, 64)],
                         ids=["head", "seq", "batch"])
def test_rotary_strides_off_the_16_byte_grid(emulator, dtype, batch_seq_head_strides):
    """x's first element on a 16-byte boundary but one of its head, position or batch strides
    (elements) not a whole number of 16-byte chunks: the one-pair path (16-byte loads there would
    be misaligned, a fault on the GPU)."""
    B, S, H, D = 2, 5, 3, 64
    _, cos, sin = rotary_inputs("cpu", dtype, batch=B, seq=S, heads=H, dim=D)
    storage = torch.randn(B * 1000 + 8, generator=gen(4)).to(dtype)
    x = storage.as_strided((B, S, H, D), (*batch_seq_head_strides, 1))
    assert x.data_ptr() % 16 == 0
    for inverse in (False, True):
        out = emulated(emulator, EMU.rotary, x, cos, sin, inverse)
        assert torch.equal(out, CPU.rotary(x.contiguous(), cos, sin, inverse))


def test_bad_rows_under_graph_capture_come_back_marked(emulator):
    """Inside CUDA-graph capture the bindings read no error back, so a bad row's outputs are its
    only sign: sample_categorical's token -1 and NaN logprob, sedd_step's -1, predict_masked's
    unchanged token and NaN confidence, a loss's NaN; the other rows as usual."""
    logits = torch.randn(2, 3, 3000, generator=gen(1))
    logits[0, 1, 5] = float("nan")
    emulator.set_capturing(True)
    try:
        tokens, logprob = emulated(emulator, EMU.sample_categorical, logits[0], None, 1.0, generator=gen())
        assert tokens[1] == -1 and logprob[1].isnan()
        assert (tokens[[0, 2]] >= 0).all() and logprob[[0, 2]].isfinite().all()
        x = torch.tensor([[2999, 2999, 5], [2999, 2999, 2999]])
        step = emulated(emulator, EMU.sedd_step, logits, x, torch.ones(2), torch.full((2,), 0.1), graph="absorb",
                        method="analytic", generator=gen())
        assert step[0, 1] == -1 and step[0, 2] == 5 and (step[0, 0] >= 0) and (step[1] >= 0).all()
        x = torch.full((2, 3), MASK)
        x0, conf = emulated(emulator, EMU.predict_masked, logits, x, MASK)
        assert x0[0, 1] == MASK and conf[0, 1].isnan()
        assert (x0[:, [0, 2]] != MASK).all() and conf[:, [0, 2]].isfinite().all()
        x_t, x0 = torch.tensor([[2999, 3, 2999], [2999, 2999, 4]]), torch.tensor([[5, 3, 8], [6, 10**9, 4]])
        sigma = torch.ones(2)
        loss = emulated(emulator, EMU.score_entropy_loss, logits.nan_to_num(), x_t, x0, sigma, sigma, graph="absorb")
        assert loss[1].isnan() and loss[0].isfinite()
        loss, _ = emulated(emulator, EMU.masked_diffusion_loss, logits.nan_to_num(), x_t, x0, sigma, mask_id=2999)
        assert loss[1].isnan() and loss[0].isfinite()
    finally:
        emulator.set_capturing(False)


def test_calls_without_draws_leave_the_generator_alone(emulator):
    """A greedy predict_masked (prob, margin, entropy confidences) and a commit_tokens rule that
    draws nothing take no Philox offset, as on the CPU: the draws after them stay the same."""
    logits, x = masked_batch(2, 9, 301, "cpu")
    x0, conf = CPU.predict_masked(logits, x, MASK)

    calls = [lambda ops, g: ops.predict_masked(logits, x, MASK, 0.0, 0, 1.0, "margin", 0, generator=g),
             lambda ops, g: ops.predict_masked(logits, x, MASK, 0.0, 5, 0.9, "entropy", 0, "proposal", generator=g),
             lambda ops, g: ops.commit_tokens(x.clone(), x0, conf, MASK, num_tokens=torch.tensor([2, 3]), generator=g),
             lambda ops, g: ops.commit_tokens(x.clone(), x0, conf, MASK, threshold=0.5, generator=g)]
    for call in calls:
        g_emu, g_cpu = gen(), gen()
        emulated(emulator, call, EMU, g_emu)
        call(CPU, g_cpu)
        assert torch.equal(g_emu.get_state(), g_cpu.get_state())
        assert torch.equal(g_emu.get_state(), gen().get_state())


def test_rows_of_only_minus_inf_are_errors_on_their_own(emulator):
    """A row that is all -inf (for predict_masked: all but the mask token) read back alone, not
    behind an earlier row's NaN, which the lowest row's error would report instead."""
    logits = torch.randn(1, 4, 3000, generator=gen(1))
    logits[0, 2] = float("-inf")
    same_error(lambda: EMU.sample_categorical(logits[0], None, 0.8), lambda: CPU.sample_categorical(logits[0], None, 0.8))
    same_error(lambda: EMU.sample_categorical(logits[0], None, 0.0), lambda: CPU.sample_categorical(logits[0], None, 0.0))
    logits[0, 2, MASK] = 3.0  # the mask's logit is no candidate
    x = torch.full((1, 4), MASK)
    for temperature in (0.0, 1.0):
        same_error(lambda: EMU.predict_masked(logits, x, MASK, temperature),
                   lambda: CPU.predict_masked(logits, x, MASK, temperature))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_losses_read_the_padded_head_rows(emulator, dtype):
    """The models' head gives logits as a view of rows padded to 64 entries (poisoned here): the
    loss kernels read them in place, and the backward, whose contiguous gradient rows then lie at
    other alignments than the logits' rows, writes every column (outputs start as NaN)."""
    B, L, V = 2, 5, 3001
    rows = torch.full((B, L, 3008), float("nan"), dtype=dtype)
    rows[..., :V] = torch.randn(B, L, V, generator=gen(1)) * 2
    logits, whole = rows[..., :V], rows[..., :V].contiguous()
    x0 = torch.randint(0, V - 1, (B, L), generator=gen(2))
    x_t = x0.clone()
    x_t[:, ::2] = V - 1
    sigma, dsigma, g = torch.tensor([0.8, 2.5]), torch.tensor([0.3, 1.5]), torch.tensor([1.0, -0.5])
    for graph in ("absorb", "uniform"):
        args = (x_t, x0, sigma, dsigma)
        loss = emulated(emulator, EMU.score_entropy_loss, logits, *args, graph=graph)
        torch.testing.assert_close(loss, CPU.score_entropy_loss(whole, *args, graph=graph), rtol=1e-5, atol=1e-5)
        grad = emulated(emulator, EMU.score_entropy_loss_backward, g, logits, *args, graph=graph, scale_by_sigma=True)
        want = CPU.score_entropy_loss_backward(g, whole, *args, graph=graph, scale_by_sigma=True)
        assert grad.isfinite().all()
        torch.testing.assert_close(grad.float(), want.float(), rtol=1e-5, atol=1e-6)
    loss, lse = emulated(emulator, EMU.masked_diffusion_loss, logits, x_t, x0, dsigma, mask_id=V - 1)
    want_loss, want_lse = CPU.masked_diffusion_loss(whole, x_t, x0, dsigma, mask_id=V - 1)
    torch.testing.assert_close(loss, want_loss, rtol=1e-5, atol=1e-5)
    grad = emulated(emulator, EMU.masked_diffusion_loss_backward, g, logits, lse, x_t, x0, dsigma, mask_id=V - 1)
    want = CPU.masked_diffusion_loss_backward(g, whole, want_lse, x_t, x0, dsigma, mask_id=V - 1)
    assert grad.isfinite().all()
    torch.testing.assert_close(grad.float(), want.float(), rtol=1e-5, atol=1e-6)


def test_empty_inputs_launch_nothing(emulator):
    """No rows (an empty batch or sequence), no heads: empty results, as on the CPU, and no launch
    with a grid of 0 blocks (an invalid configuration on a GPU, and in the emulator)."""
    long = dict(dtype=torch.long)
    z = torch.randn(2, 0, 100)
    cases = {
        "sample_categorical": lambda ops: ops.sample_categorical(torch.randn(0, 100), None, 1.0),
        "predict_masked": lambda ops: ops.predict_masked(z, torch.zeros(2, 0, **long), 7, 1.0),
        "commit_tokens": lambda ops: ops.commit_tokens(torch.zeros(0, 5, **long), torch.zeros(0, 5, **long),
                                                       torch.zeros(0, 5), 7, num_tokens=torch.zeros(0, **long)),
        "sedd_step": lambda ops: ops.sedd_step(z, torch.zeros(2, 0, **long), torch.ones(2), torch.ones(2),
                                               graph="uniform", method="analytic"),
        "score_entropy_loss": lambda ops: ops.score_entropy_loss(z, torch.zeros(2, 0, **long), torch.zeros(2, 0, **long),
                                                                 torch.ones(2), torch.ones(2), graph="absorb"),
        "score_entropy_loss_backward": lambda ops: ops.score_entropy_loss_backward(
            torch.ones(2), z, torch.zeros(2, 0, **long), torch.zeros(2, 0, **long), torch.ones(2), torch.ones(2),
            graph="absorb", scale_by_sigma=True),
    }
    x, update, gate, weight, shift, scale = adaln_inputs("cpu", torch.bfloat16, batch=2, seq=0, dim=64)
    cases["adaln"] = lambda ops: ops.adaln(x, weight, shift, scale, 1e-5)
    cases["adaln_residual"] = lambda ops: ops.adaln_residual(x, update, gate, weight, shift, scale, 1e-5)
    q, cos, sin = rotary_inputs("cpu", torch.bfloat16, batch=2, seq=5, heads=3, dim=64)
    cases["rotary, no heads"] = lambda ops: ops.rotary(q[:, :, :0], cos, sin, False)
    cases["rotary, no sequences"] = lambda ops: ops.rotary(q[:0], cos, sin, False)
    for name, call in cases.items():
        got, want = call(EMU), call(CPU)
        for a, b in zip(*((r,) if isinstance(r, torch.Tensor) else r for r in (got, want))):
            assert a.shape == b.shape and torch.equal(a, b), name

