"""dllm.ops.predict_masked and dllm.ops.commit_tokens against float64 references."""

import numpy as np
import pytest
import torch

import dllm
from dllm.reference import unmask as ref
from dllm.unmask_schedule import linear_transfer_counts
from stats import chi_square_pvalue, two_sample_pvalue
from threads import assert_same_under_threads

pytestmark = pytest.mark.usefixtures("poisoned_empty", "seeded")  # outputs start as NaN, not zeros

P_MIN = 1e-4
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
MASK = 7


def masked_batch(B, L, V, device, dtype=torch.float32, frac=0.6, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(B, L, V, generator=g) * 2).to(dtype)
    x = torch.randint(0, V, (B, L), generator=g)
    x[torch.rand(B, L, generator=g) < frac] = MASK
    return logits.to(device), x.to(device)


# ---- predict_masked: deterministic parts ------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["prob", "margin", "entropy"])
@pytest.mark.parametrize("shift", [0, 1])
def test_greedy_proposals_and_confidence_match_reference(device, dtype, kind, shift):
    logits, x = masked_batch(3, 113, 301, device, dtype)
    logits[0, 5, :] = 0.0  # a fully tied row: the lowest index that is not the mask wins
    logits[1, 9, MASK] = 100.0  # the mask token is never proposed, however likely
    x[0, 5] = x[1, 9] = x[0, 6] = x[1, 10] = MASK  # both rows read, by either head (shift 1 reads row i - 1)
    x0, conf = dllm.ops.predict_masked(logits, x, mask_id=MASK, confidence=kind, logits_shift=shift)
    rx0, rconf = ref.predict_masked_greedy(logits, x, MASK, kind, shift)
    masked = x == MASK
    assert torch.equal(x0, rx0)
    assert not (x0[masked] == MASK).any()
    assert torch.equal(x0[~masked], x[~masked]) and torch.isinf(conf[~masked]).all()
    # float32 math against float64: bounded by what plain PyTorch makes in float32
    torch_conf = ref.confidence(ref.shifted(logits, shift).float(), rx0, MASK, kind).float().double()
    torch_err = (torch_conf - rconf)[masked].abs().max()
    assert (conf.double() - rconf)[masked].abs().max() <= 2 * torch_err + 1e-6


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["prob", "margin", "entropy"])
@pytest.mark.parametrize("temperature, top_k, top_p", [(0.0, 0, 1.0), (0.0, 5, 1.0), (0.0, 0, 0.9), (0.5, 0, 1.0),
                                                       (0.2, 0, 0.95), (1.3, 20, 0.9), (1.0, 1, 1.0)])
def test_proposal_confidence_matches_reference(device, dtype, kind, temperature, top_k, top_p):
    # Dream scores a proposal under the distribution it is drawn from: tempered, then filtered.
    logits, x = masked_batch(3, 57, 301, device, dtype)
    g = torch.Generator(device).manual_seed(0)
    x0, conf = dllm.ops.predict_masked(logits, x, mask_id=MASK, temperature=temperature, top_k=top_k, top_p=top_p,
                                       confidence=kind, logits_shift=1, confidence_from="proposal", generator=g)
    masked = x == MASK
    rows = ref.shifted(logits, 1).cpu()
    want = ref.proposal_confidence(rows, x0.cpu(), MASK, kind, temperature, top_k, top_p)
    err = (conf.cpu().double() - want)[masked.cpu()].abs()
    # float32 math against float64 over values up to 1 / temperature times larger
    assert err.max() <= 4e-6 * max(1.0, 1.0 / temperature if temperature else 1.0)
    if temperature == 0.0 and top_k == 0 and top_p == 1.0:  # nothing reshapes: the model's own distribution
        _, model_conf = dllm.ops.predict_masked(logits, x, mask_id=MASK, confidence=kind, logits_shift=1)
        assert torch.equal(conf, model_conf)
    else:
        other = ref.confidence(rows, x0.cpu(), MASK, kind)
        assert (other - want)[masked.cpu()].abs().max() > 1e-2  # the two distributions do differ here


@pytest.mark.parametrize("confidence_from", ["model", "proposal"])
@pytest.mark.parametrize("temperature, top_p", [(1.0, 1.0), (0.5, 0.9), (1e-6, 1.0)])
def test_large_logits_keep_their_distribution_and_confidence(device, confidence_from, temperature, top_p):
    # Values near 1e7 (raw, or 10 / 1e-6 once tempered): the kernels work relative to the row's
    # max, where float32 still resolves the noise and the probabilities.
    V, n = 29, 1 << 18
    g = torch.Generator().manual_seed(9)
    offset = 10.0 if temperature < 1e-3 else 1e7
    row = (offset + torch.randint(-6, 1, (V,), generator=g, dtype=torch.float64) * temperature).float()
    logits = row.to(device).expand(n, 1, V)
    x = torch.full((n, 1), MASK, device=device)
    for kind in ("prob", "margin", "entropy"):
        x0, conf = dllm.ops.predict_masked(logits, x, mask_id=MASK, temperature=temperature, top_p=top_p,
                                           confidence=kind, confidence_from=confidence_from)
        probs = ref.filtered_proposal_probs(row, MASK, temperature, top_p=top_p)
        assert chi_square_pvalue(x0, probs.numpy()) > P_MIN
        tokens = x0[:64, 0].cpu()
        rows = row.expand(64, V)
        want = (ref.proposal_confidence(rows, tokens, MASK, kind, temperature, top_p=top_p)
                if confidence_from == "proposal" else ref.confidence(rows, tokens, MASK, kind))
        assert (conf[:64, 0].cpu().double() - want).abs().max() < 1e-5, kind


# 1 / T overflows float32 below 2.9e-39; below 1.4e-45 a float32 is 0 (argmax), so it is clamped
@pytest.mark.parametrize("temperature", [1e-38, 1e-40, 1e-45, 1e-46, 1e-300])
def test_a_tiny_temperature_proposes_the_top_tokens(device, temperature):
    row = torch.tensor([-5.0, -3.0, -4.0, -3.0, -90.0, -3.0 - 2**-20, -6.0, 0.0])  # entry 7 is the mask
    n = 1 << 14
    x0, conf = dllm.ops.predict_masked(row.to(device).expand(1, n, 8), torch.full((1, n), MASK, device=device),
                                       mask_id=MASK, temperature=temperature)
    counts = torch.bincount(x0[0], minlength=8).cpu()
    assert counts[1] + counts[3] == n and abs(counts[1].item() - n / 2) < 4 * (n / 4) ** 0.5
    torch.testing.assert_close(conf.cpu(), ref.confidence(row.expand(1, n, 8), x0.cpu(), MASK, "prob").float())



@pytest.mark.parametrize("temperature", [1e30, 1e39, 1e300])  # float32 ends at 3.4e38: larger ones are clamped
def test_a_huge_temperature_proposes_uniformly_but_never_the_mask(device, temperature):
    row = torch.tensor([5.0, 1.0, float("-inf"), 2.0, 3.0, 0.0, -7.0, 9.0])  # entry 7 is the mask
    n = 1 << 14
    x0, conf = dllm.ops.predict_masked(row.to(device).expand(1, n, 8), torch.full((1, n), MASK, device=device),
                                       mask_id=MASK, temperature=temperature, confidence_from="proposal")
    assert chi_square_pvalue(x0[0], np.array([1, 1, 0, 1, 1, 1, 1, 0]) / 6) > P_MIN
    torch.testing.assert_close(conf.cpu(), torch.full((1, n), 1 / 6))


def test_large_vocab_greedy(device):
    # LLaDA's vocabulary: 62 groups of 2048, the last one ragged. The mask id lies in the last
    # group and holds its row's largest logit (never proposed, and not in the softmax); another
    # row's best token is the vocabulary's last entry, another's the first of a group. Random
    # logits alone give the mask a share of ~1e-6 of the softmax, and any one entry ~1e-5: the
    # confidence is held to the float64 value within 1e-6 relative on the CPU (its error: ~1e-7),
    # 1e-5 on CUDA, whose __expf / __logf err by a few ulps more (the old bound was 1e-4).
    V = 126464
    mask_id = V - 300
    logits, x = masked_batch(1, 5, V, device, torch.bfloat16)
    m = x == MASK
    x = torch.where(m, mask_id, torch.where(x == mask_id, 0, x))
    rows = m[0].nonzero()[:, 0].tolist()
    assert len(rows) == 3
    for row, column in zip(rows, (mask_id, V - 1, 2048)):
        logits[0, row, column] = 12.0
    for kind in ("prob", "margin", "entropy"):
        x0, conf = dllm.ops.predict_masked(logits, x, mask_id=mask_id, confidence=kind)
        rx0, rconf = ref.predict_masked_greedy(logits, x, mask_id, kind)
        assert torch.equal(x0, rx0) and x0[0, rows[1]] == V - 1 and x0[0, rows[2]] == 2048
        exact = rconf[m].cpu()
        err = (conf[m].cpu().double() - exact).abs()
        allowed = 2 * (exact.float().double() - exact).abs() + (1e-6 if device == "cpu" else 1e-5) * exact.abs()
        assert (err <= allowed).all(), (kind, err, allowed)


def test_only_masked_rows_are_read(device):
    logits, x = masked_batch(2, 17, 40, device)
    logits[x != MASK] = float("nan")  # poison every row that must not be read
    x0, conf = dllm.ops.predict_masked(logits, x, mask_id=MASK, temperature=1.0)
    assert torch.isfinite(conf[x == MASK]).all()


def test_random_confidence_is_uniform(device):
    logits, x = masked_batch(4, 1000, 11, device, frac=1.0)
    _, conf = dllm.ops.predict_masked(logits, x, mask_id=MASK, confidence="random")
    bins = (conf.flatten() * 20).long().clamp(max=19)
    assert chi_square_pvalue(bins, torch.full((20,), 0.05, dtype=torch.float64).numpy()) > P_MIN


# ---- predict_masked: proposals in distribution ------------------------------------------------

@pytest.mark.parametrize(
    "temperature, top_k, top_p",
    # top_k 8 cuts between the tied 3 and 4 (ranks 8 and 9): both are kept
    [(1.0, 0, 1.0), (0.5, 0, 1.0), (2.0, 0, 1.0), (1.0, 7, 1.0), (1.0, 8, 1.0), (1.0, 0, 0.8), (0.7, 12, 0.9)],
)
def test_proposals_match_filtered_distribution(device, temperature, top_k, top_p):
    V, n = 40, 1 << 20
    g = torch.Generator().manual_seed(3)
    row = torch.randn(V, generator=g) * 1.5
    row[3] = row[4]  # a tie, kept or dropped together (top_k 8 cuts through it)
    logits = row.to(device).expand(n, 1, V)
    x = torch.full((n, 1), MASK, device=device)
    x0, _ = dllm.ops.predict_masked(logits, x, mask_id=MASK, temperature=temperature, top_k=top_k, top_p=top_p)
    probs = ref.filtered_proposal_probs(row, MASK, temperature, top_k, top_p).numpy()
    assert probs[MASK] == 0
    assert chi_square_pvalue(x0, probs) > P_MIN


def test_proposals_reach_rare_tail_tokens(device):
    # 5000 tail tokens of total mass ~1e-3 behind one head token (each ~2e-7): they must come
    # out at their true rate, as sample_categorical's do.
    V, head, n = 5001, 17, 1 << 19
    row = torch.full((V,), -15.4)
    row[head] = 0.0
    logits = row.to(device).expand(n, 1, V)
    x = torch.full((n, 1), MASK, device=device)
    x0, conf = dllm.ops.predict_masked(logits, x, mask_id=MASK, temperature=1.0)
    p = ref.filtered_proposal_probs(row, MASK, 1.0)
    rare = (x0 != head).sum().item()
    expected = n * (1 - p[head].item())
    assert abs(rare - expected) < 4 * expected**0.5, (rare, expected)
    # "prob" confidence is the untempered probability of the proposal, as accurate as float32
    # softmax gets it
    torch_err = (torch.softmax(row, 0)[head].double() - p[head]).abs()
    assert (conf[x0 == head].double() - p[head]).abs().max() <= 2 * torch_err + 1e-7


# ---- commit_tokens ----------------------------------------------------------------------------

def commit_inputs(B, L, device, seed=0, ties=True):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 50, (B, L), generator=g)
    x[torch.rand(B, L, generator=g) < 0.7] = MASK
    x0 = torch.randint(100, 200, (B, L), generator=g)
    conf = torch.rand(B, L, generator=g)
    if ties:
        conf = (conf * 8).round() / 8  # many exact ties
    return x.to(device), x0.to(device), conf.to(device)


@pytest.mark.parametrize("L", [1, 203, 1023])
def test_top_k_commit_matches_reference_with_ties_and_windows(device, L):
    B = 6
    x, x0, conf = commit_inputs(B, L, device)
    x[2] = 3  # nothing masked in this row
    k = torch.tensor([0, 1, 5, 10**6, 3, L // 2 + 1], device=device)  # k = 0 and k > #masked
    window = torch.tensor([[0, L], [0, L], [0, L], [L // 3, L], [L // 2, L // 2], [1 % L, L]], device=device)
    for w in (None, window):
        got = x.clone()
        committed = dllm.ops.commit_tokens(got, x0, conf, mask_id=MASK, num_tokens=k, window=w)
        want = ref.commit_tokens(x, x0, conf, MASK, num_tokens=k, window=w)
        assert torch.equal(got, want)
        assert torch.equal(committed, (got != x).sum(-1))


def test_signed_zeros_are_one_value_for_the_filters_and_the_ranking(device):
    """-0.0 == +0.0: two zero logits at the top-k / top-p boundary are both kept, and two zero
    confidences (a margin or an entropy of 0) tie, to the lowest index."""
    for zeros in ([0.0, -0.0], [-0.0, 0.0]):
        logits = torch.tensor([[[4.0, float("-inf"), -3.0, *zeros]]], device=device)  # the mask (id 0) is never proposed
        x = torch.zeros(1, 1, dtype=torch.long, device=device)
        for rule in (dict(top_k=1), dict(top_p=0.3)):
            _, conf = dllm.ops.predict_masked(logits, x, mask_id=0, confidence_from="proposal", **rule)
            assert conf.item() == pytest.approx(0.5), (zeros, rule)
        x = torch.full((1, 4), MASK, device=device)
        conf = torch.tensor([[*zeros, -1.0, -2.0]], device=device)
        got = x.clone()
        dllm.ops.commit_tokens(got, torch.arange(4, device=device)[None], conf, mask_id=MASK, num_tokens=1)
        assert got.tolist() == [[0, MASK, MASK, MASK]], zeros


def test_threshold_commit_matches_reference(device):
    x, x0, conf = commit_inputs(5, 300, device, seed=1)
    conf[4] = 0.1  # nothing reaches the threshold: the single most confident one still commits
    conf[0, ::7] = 0.9  # float32(0.9) < 0.9 in float64: the threshold is compared in float32
    window = torch.tensor([[0, 300], [10, 50], [0, 0], [299, 300], [0, 300]], device=device)
    got = x.clone()
    committed = dllm.ops.commit_tokens(got, x0, conf, mask_id=MASK, threshold=0.9, window=window)
    want = ref.commit_tokens(x, x0, conf, MASK, threshold=0.9, window=window)
    assert torch.equal(got, want)
    assert committed[2] == 0 and committed[4] == 1
    assert torch.equal(committed, (got != x).sum(-1))


@pytest.mark.parametrize("rule", [dict(num_tokens=1000), dict(threshold=0.0), dict(prob=1.0)])
def test_a_commit_of_the_mask_token_counts_and_stays_masked(device, rule):
    # Only a hand-written x0 holds mask_id: the count is of positions written, as documented.
    x, x0, conf = commit_inputs(2, 61, device, seed=4)
    x0[:, ::3] = MASK
    got = x.clone()
    committed = dllm.ops.commit_tokens(got, x0, conf, mask_id=MASK, **rule)
    assert committed.tolist() == (x == MASK).sum(-1).tolist()
    assert torch.equal(got, torch.where(x == MASK, x0, x))


def test_prob_commit_is_bernoulli(device):
    # Each eligible position (masked, inside the row's window) commits independently with its
    # row's probability and takes x0's token there; every other position is left alone. Random
    # tokens, proposals and confidences, so that a wrong position, row or proposal shows.
    B, L = 6, 1 << 16
    g = torch.Generator().manual_seed(12)
    x = torch.randint(0, 50, (B, L), generator=g)
    x[torch.rand(B, L, generator=g) < 0.75] = MASK
    x0 = torch.randint(100, 200, (B, L), generator=g)
    conf = torch.rand(B, L, generator=g)
    p = [0.0, 0.1, 0.5, 0.5, 1.0, 0.3]
    window = torch.tensor([[0, L]] * 5 + [[L // 4 + 1, 3 * L // 4]])
    x, x0, conf, window = x.to(device), x0.to(device), conf.to(device), window.to(device)
    y = x.clone()
    committed = dllm.ops.commit_tokens(y, x0, conf, mask_id=MASK, prob=torch.tensor(p, device=device), window=window)
    eligible = ref.eligible(x, MASK, window)
    changed = y != x
    assert not changed[~eligible].any()
    assert torch.equal(y[changed], x0[changed])
    assert torch.equal(committed, changed.sum(-1))
    n = eligible.sum(-1).tolist()
    for b, q in enumerate(p):
        if q in (0.0, 1.0):
            assert committed[b].item() == q * n[b]
        else:  # 4 sigma: about 5% of the mean at q = 0.1, so a rate off by 10% fails
            assert abs(committed[b].item() - q * n[b]) < 4 * (n[b] * q * (1 - q)) ** 0.5, (b, committed[b].item(), q * n[b])
    # Rows 2 and 3 share q = 1/2 and draw independently: they both commit a quarter of the
    # positions eligible in both (one random stream for every row would give a half).
    both_eligible = (eligible[2] & eligible[3]).sum().item()
    both = (changed[2] & changed[3]).sum().item()
    assert abs(both - both_eligible / 4) < 4 * (both_eligible * 3 / 16) ** 0.5, (both, both_eligible / 4)


def test_prob_commit_is_exact_for_tiny_probabilities(device):
    # A 24-bit uniform commits with probability 2^-24 (6e-8) at any p below it: 16 commits
    # expected over these 2^28 positions at p = 1e-9, where 0.27 are due.
    B, L = 16, 1 << 20
    x0 = torch.zeros(B, L, dtype=torch.int64, device=device)
    conf = torch.zeros(B, L, device=device)
    g = torch.Generator(device).manual_seed(10)
    committed = sum(int(dllm.ops.commit_tokens(torch.full((B, L), MASK, device=device), x0, conf, mask_id=MASK,
                                               prob=1e-9, generator=g).sum()) for _ in range(16))
    assert committed <= 3


def test_position_temperature_draws_without_replacement(device):
    # Choosing 2 of 4 positions by Gumbel-top-k must match sampling without replacement from
    # softmax(conf / T): compare the frequency of each unordered pair with its exact probability.
    import itertools

    T, n = 0.5, 1 << 16
    c = torch.tensor([0.1, 0.5, 0.2, 0.9])
    x = torch.full((n, 4), MASK, device=device)
    x0 = torch.arange(4, device=device).expand(n, 4).contiguous()
    dllm.ops.commit_tokens(x, x0, c.to(device).expand(n, 4).contiguous(), mask_id=MASK,
                           num_tokens=2, position_temperature=T)
    chosen = (x != MASK).cpu()
    assert (chosen.sum(-1) == 2).all()
    w = torch.softmax(c.double() / T, 0)
    pairs = list(itertools.combinations(range(4), 2))
    exact = torch.tensor([w[i] * w[j] / (1 - w[i]) + w[j] * w[i] / (1 - w[j]) for i, j in pairs])
    code = {p: k for k, p in enumerate(pairs)}
    labels = torch.tensor([code[tuple(r.nonzero()[:, 0].tolist())] for r in chosen[:20000]])
    assert chi_square_pvalue(labels, exact.numpy()) > P_MIN


@pytest.mark.parametrize("conf", [[0.5, 0.9, 0.2], [-11.5, -3.0, -11.9]])  # prob-like, entropy-like
@pytest.mark.parametrize("T", [1e-30, 1e-39, 1e-300])
def test_a_tiny_position_temperature_commits_the_most_confident(device, conf, T):
    n = 256
    x = torch.full((n, 3), MASK, device=device)
    x0 = torch.arange(3, device=device).expand(n, 3).contiguous()
    dllm.ops.commit_tokens(x, x0, torch.tensor(conf, device=device).expand(n, 3).contiguous(), mask_id=MASK,
                           num_tokens=1, position_temperature=T)
    assert (x[:, 1] == 1).all() and (x[:, [0, 2]] == MASK).all()


def test_commit_reproducible_with_seed(device):
    x, x0, conf = commit_inputs(3, 100, device)
    outs = []
    for _ in range(2):
        torch.manual_seed(5)
        y = x.clone()
        dllm.ops.commit_tokens(y, x0, conf, mask_id=MASK, prob=0.3)
        outs.append(y)
    assert torch.equal(outs[0], outs[1])


# Sizes that 1, 2 and 3 threads chunk differently: predict_masked's grain is 1 + 65536 / V = 22
# positions (of 3 * 97), commit_tokens' 1 + 16384 / L = 33 rows (of 130).
@pytest.mark.parametrize("kw", [dict(temperature=0.7, top_k=50),
                                dict(temperature=1.3, top_p=0.9, confidence="entropy", confidence_from="proposal"),
                                dict(confidence="random")], ids=["top_k", "top_p", "random"])
def test_predict_masked_draws_do_not_depend_on_threads(kw):
    logits, x = masked_batch(3, 97, 3001, "cpu")
    assert_same_under_threads(lambda g: dllm.ops.predict_masked(logits, x, mask_id=MASK, generator=g, **kw))


@pytest.mark.parametrize("kw", [dict(prob=torch.linspace(0, 1, 130)),
                                dict(num_tokens=17, position_temperature=0.5,
                                     window=torch.tensor([[13, 400]]).expand(130, 2))], ids=["prob", "position_temperature"])
def test_commit_draws_do_not_depend_on_threads(kw):
    x, x0, conf = commit_inputs(130, 509, "cpu")

    def commit(g):
        y = x.clone()
        return y, dllm.ops.commit_tokens(y, x0, conf, mask_id=MASK, generator=g, **kw)

    assert_same_under_threads(commit)


def test_one_value_for_every_row_takes_any_scalar_form(device):
    """An int / float for every row may come as a Python or NumPy number or a 0-d tensor, all alike;
    a count past int64 commits every position, as one of L does."""
    x, x0, conf = commit_inputs(3, 100, device)
    for rule, forms in (("num_tokens", [7, np.int64(7), torch.tensor(7, device=device)]),
                        ("num_tokens", [100, 2**70, np.uint64(2**64 - 1)]),
                        ("prob", [0.25, np.float32(0.25), torch.tensor(0.25, device=device)])):
        outs = []
        for value in forms:
            torch.manual_seed(3)
            y = x.clone()
            counts = dllm.ops.commit_tokens(y, x0, conf, mask_id=MASK, **{rule: value})
            outs.append((y, counts))
        assert all(torch.equal(y, outs[0][0]) and torch.equal(c, outs[0][1]) for y, c in outs[1:])
        assert not torch.equal(outs[0][0], x)


def test_linear_transfer_counts():
    counts = linear_transfer_counts(torch.tensor([10, 3, 0]), 4)
    assert counts.tolist() == [[3, 3, 2, 2], [1, 1, 1, 0], [0, 0, 0, 0]]
    # one step per block (LLaDA with steps == number of blocks) commits the whole block at once
    assert linear_transfer_counts(torch.tensor([5, 0]), 1).tolist() == [[5], [0]]
    assert linear_transfer_counts([3, 1], 2).tolist() == [[2, 1], [1, 0]]  # a list of counts, as typed by hand
    for masked, steps, message in [([1], 0, "steps must be a positive int"), ([1], 2.0, "steps must be a positive int"),
                                   (torch.tensor(3), 2, r"masked must be \[B\]")]:
        with pytest.raises(ValueError, match=message):
            linear_transfer_counts(masked, steps)
    # a negative count would make a row's counts negative (and commit nothing), so it is refused
    with pytest.raises(ValueError, match=">= 0"):
        linear_transfer_counts(torch.tensor([4, -1]), 2)
    assert linear_transfer_counts(torch.tensor([3, 1], dtype=torch.int32), 2).dtype == torch.int64
    for masked in ([2.7, 5.0], torch.tensor([True, False]), torch.tensor([float("nan")])):  # not truncated to ints
        with pytest.raises(TypeError, match="masked must hold integer counts"):
            linear_transfer_counts(masked, 2)


# ---- errors, opcheck, compile -------------------------------------------------------------------

def test_bad_inputs_raise_clear_errors(device):
    logits, x = masked_batch(2, 10, 20, device)
    with pytest.raises(ValueError, match="mask_id 20 is outside"):
        dllm.ops.predict_masked(logits, x, mask_id=20)
    with pytest.raises(RuntimeError, match="x must have the shape"):
        dllm.ops.predict_masked(logits, x[:, :5], mask_id=MASK)
    with pytest.raises(ValueError, match="confidence must be"):
        dllm.ops.predict_masked(logits, x, mask_id=MASK, confidence="best")
    with pytest.raises(ValueError, match="confidence_from must be 'model' or 'proposal'"):
        dllm.ops.predict_masked(logits, x, mask_id=MASK, confidence_from="tempered")
    with pytest.raises(ValueError, match="top_p must be in"):
        dllm.ops.predict_masked(logits, x, mask_id=MASK, top_p=0.0)
    with pytest.raises(ValueError, match="temperature must be finite"):
        dllm.ops.predict_masked(logits, x, mask_id=MASK, temperature=-1.0)
    with pytest.raises(ValueError, match=r"logits_shift must be in \[0, max\(L, 2\)\) with L = 10, got 10"):
        dllm.ops.predict_masked(logits, x, mask_id=MASK, logits_shift=10)
    # one position under a shifted head reads row 0, as position 0 always does
    x0, conf = dllm.ops.predict_masked(logits[:, :1], torch.full_like(x[:, :1], MASK), mask_id=MASK, logits_shift=1)
    assert torch.equal(x0, dllm.ops.predict_masked(logits[:, :1], torch.full_like(x[:, :1], MASK), mask_id=MASK)[0])
    bad = logits.clone()
    bad[1, (x[1] == MASK).nonzero()[0, 0]] = float("nan")
    with pytest.raises(ValueError, match="sequence 1 has NaN"):
        dllm.ops.predict_masked(bad, x, mask_id=MASK)
        dllm.ops.raise_pending_errors()  # CUDA raises the kernel's finds at a later call, or here
    # an unmasked token outside the vocabulary would be carried into x0 and on into the canvas
    kept = (x[1] != MASK).nonzero()[:, 0]
    for token in (20, -1, 2**40):
        y = x.clone()
        y[1, kept[1]] = token
        y[1, kept[2]] = 21  # a later position's error is not the one named
        with pytest.raises(ValueError, match=rf"x holds token {token} at position {kept[1]} of sequence 1, outside the "
                                             r"vocabulary \[0, 20\)"):
            dllm.ops.predict_masked(logits, y, mask_id=MASK)
            dllm.ops.raise_pending_errors()
    # more leading dimensions: the sequence named by its index, not its flat number
    batched, grid = bad.view(1, 2, 10, 20).expand(3, 2, 10, 20), x.view(1, 2, 10).expand(3, 2, 10)
    with pytest.raises(ValueError, match=r"masked position \d+ of sequence \[0, 1\] has NaN"):
        dllm.ops.predict_masked(batched, grid, mask_id=MASK)
        dllm.ops.raise_pending_errors()
    x0, conf = dllm.ops.predict_masked(logits, x, mask_id=MASK)
    with pytest.raises(ValueError, match="exactly one of"):
        dllm.ops.commit_tokens(x.clone(), x0, conf, mask_id=MASK, num_tokens=1, threshold=0.5)
    with pytest.raises(ValueError, match="exactly one of"):
        dllm.ops.commit_tokens(x.clone(), x0, conf, mask_id=MASK)
    with pytest.raises(RuntimeError, match="window must have shape"):
        dllm.ops.commit_tokens(x.clone(), x0, conf, mask_id=MASK, num_tokens=1, window=torch.zeros(2, 3, dtype=torch.long, device=device))
    with pytest.raises(ValueError, match="position_temperature applies only"):
        dllm.ops.commit_tokens(x.clone(), x0, conf, mask_id=MASK, threshold=0.5, position_temperature=1.0)
    # one value for every row is checked before the op (torch.full named nothing past int64 / float32)
    with pytest.raises(ValueError, match=r"commit_tokens: num_tokens must be >= 0, got -1180"):
        dllm.ops.commit_tokens(x.clone(), x0, conf, mask_id=MASK, num_tokens=-2**70)
    with pytest.raises(ValueError, match=r"commit_tokens: prob must be in \[0, 1\], got 1e\+300"):
        dllm.ops.commit_tokens(x.clone(), x0, conf, mask_id=MASK, prob=1e300)
    shared = x.clone()  # committing x0 = x into x would change nothing, and race on CUDA
    with pytest.raises(ValueError, match=r"x0 shares memory with x, which is updated in place; pass a copy"):
        dllm.ops.commit_tokens(shared, shared, conf, mask_id=MASK, num_tokens=1)
    assert torch.equal(shared, x)


def test_a_top_k_past_int64_keeps_every_token(device):
    logits, x = masked_batch(2, 10, 20, device)
    draws = [dllm.ops.predict_masked(logits, x, mask_id=MASK, temperature=1.0, top_k=top_k,
                                     generator=torch.Generator(device).manual_seed(5))
             for top_k in (0, 10**30, np.uint64(2**64 - 1))]
    assert all(torch.equal(draws[0][0], d[0]) and torch.equal(draws[0][1], d[1]) for d in draws[1:])


def assert_row_1_refused(x, x0, conf, why, **rule):
    """commit_tokens refuses row 1 of x: the CPU raises a ValueError saying why; CUDA, which never
    synchronises, counts it -1. Either way the row is left as it was."""
    y = x.clone()
    if x.device.type == "cpu":
        with pytest.raises(ValueError, match=f"row 1 has {why}"):
            dllm.ops.commit_tokens(y, x0, conf, mask_id=MASK, **rule)
    else:
        assert dllm.ops.commit_tokens(y, x0, conf, mask_id=MASK, **rule)[1] == -1
    assert torch.equal(y[1], x[1])


def test_bad_row_values(device):
    # A window with start > end or outside [0, L] is refused, never taken as an empty or shifted
    # window that silently commits nothing or writes another row; a NaN prob (0 / 0 in a schedule)
    # is outside [0, 1], not a row that commits nothing every step.
    logits, x = masked_batch(2, 10, 20, device)
    x0, conf = dllm.ops.predict_masked(logits, x, mask_id=MASK)
    assert_row_1_refused(x, x0, conf, "a negative num_tokens", num_tokens=torch.tensor([1, -1], device=device))
    for window in ([4, 11], [5, 3], [-2, 4]):
        for rule in (dict(num_tokens=2), dict(threshold=0.5), dict(prob=0.5)):
            assert_row_1_refused(x, x0, conf, "a window outside", window=torch.tensor([[0, 10], window], device=device),
                                 **rule)
    for prob in (1.5, float("nan")):
        assert_row_1_refused(x, x0, conf, "a prob outside", prob=torch.tensor([0.5, prob], device=device))


def test_opcheck(device):
    logits, x = masked_batch(2, 9, 30, device)
    torch.library.opcheck(torch.ops.dllm.predict_masked.default, (logits, x, MASK))
    torch.library.opcheck(torch.ops.dllm.predict_masked.default, (logits.bfloat16(), x, MASK, 0.0, 0, 1.0, "margin", 1))
    torch.library.opcheck(torch.ops.dllm.predict_masked.default,
                          (logits, x, MASK, 0.0, 3, 1.0, "entropy", 0, "proposal"))
    x0, conf = dllm.ops.predict_masked(logits, x, mask_id=MASK)
    k = torch.tensor([2, 3], device=device)
    torch.library.opcheck(torch.ops.dllm.commit_tokens.default, (x.clone(), x0, conf, MASK, k))
    torch.library.opcheck(torch.ops.dllm.commit_tokens.default, (x.clone(), x0, conf, MASK, None, 0.5))


def test_compiled_llada_step_matches_eager(device):
    logits, x = masked_batch(2, 64, 100, device)
    window = torch.tensor([[0, 32], [0, 64]], device=device)

    def step(logits, x):
        x0, conf = dllm.ops.predict_masked(logits, x, mask_id=MASK)
        committed = dllm.ops.commit_tokens(x, x0, conf, mask_id=MASK, num_tokens=torch.tensor([3, 4], device=x.device), window=window)
        return x, committed

    compiled = torch.compile(step, fullgraph=True)
    a, ca = compiled(logits, x.clone())
    b, cb = step(logits, x.clone())
    assert torch.equal(a, b) and torch.equal(ca, cb)


def test_compiled_random_step_follows_manual_seed(device):
    """docs/api.md's route for a compiled sampler step that draws: no generator argument (TorchDynamo
    cannot trace one), so torch's default generator, which torch.manual_seed makes repeatable,
    draw for draw with the eager ops."""
    logits, x = masked_batch(2, 64, 100, device)

    def step(logits, x):
        x0, conf = dllm.ops.predict_masked(logits, x, mask_id=MASK, temperature=1.0, top_k=20)
        committed = dllm.ops.commit_tokens(x, x0, conf, mask_id=MASK, prob=0.5)
        return x, committed

    compiled = torch.compile(step, fullgraph=True)
    runs = []
    for fn in (compiled, compiled, step):
        torch.manual_seed(3)
        runs.append(fn(logits, x.clone()))
    assert all(torch.equal(a, b) and torch.equal(ca, cb) for (a, ca), (b, cb) in zip(runs, runs[1:]))
    torch.manual_seed(4)
    assert not torch.equal(compiled(logits, x.clone())[0], runs[0][0])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_and_cpu_calls_that_draw_nothing_still_refuse_a_generator_of_the_other_device():
    for device, other in (("cuda", "cpu"), ("cpu", "cuda")):
        logits, x = masked_batch(2, 10, 20, device)
        wrong = torch.Generator(other)
        with pytest.raises(RuntimeError, match=f"Expected a '{device}' device type for generator"):
            dllm.ops.predict_masked(logits, x, mask_id=MASK, generator=wrong)
        x0, conf = dllm.ops.predict_masked(logits, x, mask_id=MASK)
        with pytest.raises(RuntimeError, match=f"Expected a '{device}' device type for generator"):
            dllm.ops.commit_tokens(x.clone(), x0, conf, mask_id=MASK, num_tokens=1, generator=wrong)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graph_captures_a_full_step():
    logits, x = masked_batch(2, 256, 1000, "cuda")
    static_x = x.clone()
    k = torch.tensor([4, 4], device="cuda")

    def step():
        x0, conf = dllm.ops.predict_masked(logits, static_x, mask_id=MASK, temperature=1.0)
        return dllm.ops.commit_tokens(static_x, x0, conf, mask_id=MASK, num_tokens=k)

    step()  # warm up outside capture
    static_x.copy_(x)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        committed = step()
    static_x.copy_(x)
    masked_before = (static_x == MASK).sum()
    graph.replay()
    graph.replay()
    torch.cuda.synchronize()
    assert (masked_before - (static_x == MASK).sum()).item() == 16
    assert committed.tolist() == [4, 4]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_proposals_agree_with_cpu_in_distribution():
    V, n = 300, 1 << 18
    row = torch.randn(V) * 2
    x = torch.full((n, 1), MASK)
    cpu, _ = dllm.ops.predict_masked(row.expand(n, 1, V), x, mask_id=MASK, temperature=0.8, top_p=0.95)
    gpu, _ = dllm.ops.predict_masked(row.cuda().expand(n, 1, V), x.cuda(), mask_id=MASK, temperature=0.8, top_p=0.95)
    assert two_sample_pvalue(cpu, gpu, V) > P_MIN


def test_prob_zero_for_every_row_commits_nothing():
    # prob is a probability in [0, 1]: 0 (a step that unmasks nothing) is valid, as a Python float
    # as well as a tensor, and commits nothing; just outside [0, 1] is refused.
    g = torch.Generator().manual_seed(5)
    B, L = 3, 13
    x = torch.where(torch.rand(B, L, generator=g) < 0.6, MASK, torch.randint(0, MASK, (B, L), generator=g))
    x0, conf = torch.randint(0, MASK, (B, L), generator=g), torch.rand(B, L, generator=g)
    for zero in (0.0, 0, torch.tensor(0.0), torch.zeros(B)):
        y = x.clone()
        counts = dllm.ops.commit_tokens(y, x0, conf, mask_id=MASK, prob=zero, generator=g)
        assert counts.tolist() == [0] * B and torch.equal(y, x)
    for bad in (-1e-9, 1 + 1e-9):
        with pytest.raises(ValueError, match="prob must be in"):
            dllm.ops.commit_tokens(x.clone(), x0, conf, mask_id=MASK, prob=bad)


def test_linear_transfer_counts_refuses_a_bool_step_count():
    # True is an int to Python, but not a number of steps
    for steps in (True, False):
        with pytest.raises(ValueError, match="steps must be a positive int"):
            linear_transfer_counts(torch.tensor([3, 1]), steps)


@pytest.mark.parametrize("top_k, top_p", [(5, 1.0), (0, 0.9), (20, 0.8)])
def test_temperature_zero_with_filters_and_proposal_confidence_is_greedy(device, top_k, top_p):
    # Dream at temperature 0 takes the argmax of its filtered distribution, which is the argmax of
    # the logits (filtering never drops the top token): no draw, whatever the generator.
    logits, x = masked_batch(3, 41, 301, device)
    greedy, _ = ref.predict_masked_greedy(logits, x, MASK, "prob", 1)
    for seed in range(3):
        x0, conf = dllm.ops.predict_masked(logits, x, mask_id=MASK, top_k=top_k, top_p=top_p, logits_shift=1,
                                           confidence_from="proposal",
                                           generator=torch.Generator(device).manual_seed(seed))
        assert torch.equal(x0, greedy)
        masked = (x == MASK).cpu()
        want = ref.proposal_confidence(ref.shifted(logits, 1).cpu(), x0.cpu(), MASK, "prob", 0.0, top_k, top_p)
        assert (conf.cpu().double() - want)[masked].abs().max() <= 4e-6


def test_random_confidence_draws_fresh_numbers_at_temperature_zero(device):
    # LLaDA's random remasking proposes greedily and ranks positions by uniform scores: each call
    # draws new scores from the generator (torch.manual_seed reproduces them), so that consecutive
    # steps and differently seeded runs do not pick the same positions.
    logits, x = masked_batch(2, 50, 30, device, frac=1.0)
    masked = x == MASK
    g = torch.Generator(device).manual_seed(1)
    _, a = dllm.ops.predict_masked(logits, x, mask_id=MASK, confidence="random", generator=g)
    _, b = dllm.ops.predict_masked(logits, x, mask_id=MASK, confidence="random", generator=g)
    assert not torch.equal(a[masked], b[masked])
    _, c = dllm.ops.predict_masked(logits, x, mask_id=MASK, confidence="random",
                                   generator=torch.Generator(device).manual_seed(1))
    assert torch.equal(a, c)
    runs = []
    for seed in (3, 3, 4):
        torch.manual_seed(seed)
        runs.append(dllm.ops.predict_masked(logits, x, mask_id=MASK, confidence="random")[1])
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0][masked], runs[2][masked])


def test_position_temperature_draws_fresh_numbers_each_call(device):
    # Dream's alg_temp: the k positions are a random draw (Gumbel-top-k), new at every call and
    # reproduced by torch.manual_seed, not one fixed choice for every step and run.
    n, L = 64, 12
    x = torch.full((n, L), MASK, device=device)
    x0 = torch.arange(L, device=device).expand(n, L).contiguous()
    conf = torch.zeros(n, L, device=device)  # all equally likely: only the noise decides

    def chosen(generator=None):
        y = x.clone()
        dllm.ops.commit_tokens(y, x0, conf, mask_id=MASK, num_tokens=3, position_temperature=1.0, generator=generator)
        return y != MASK

    g = torch.Generator(device).manual_seed(0)
    a, b = chosen(g), chosen(g)
    assert not torch.equal(a, b)
    assert torch.equal(a, chosen(torch.Generator(device).manual_seed(0)))
    runs = []
    for seed in (5, 5, 6):
        torch.manual_seed(seed)
        runs.append(chosen())
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])


def test_a_nan_confidence_at_an_eligible_position_is_refused(device):
    # A NaN confidence (a model's NaN logits turned into scores) cannot be ranked: at an eligible
    # position it is an error (CPU: ValueError naming the row; CUDA: the row left alone, count -1);
    # outside the window or at an unmasked position it is never read.
    g = torch.Generator().manual_seed(3)
    B, L = 3, 11
    x = torch.full((B, L), MASK)
    x[:, 0] = 1  # unmasked
    x0, conf = torch.randint(0, MASK, (B, L), generator=g), torch.rand(B, L, generator=g)
    conf[:, 0] = float("nan")  # unmasked: never read
    conf[0, L - 1] = float("nan")  # outside row 0's window: never read
    conf[1, 4] = float("nan")  # eligible
    window = torch.tensor([[0, L - 1], [0, L], [0, L]])
    x, x0, conf, window = x.to(device), x0.to(device), conf.to(device), window.to(device)
    for rule in (dict(num_tokens=3), dict(threshold=0.5), dict(prob=1.0)):
        assert_row_1_refused(x, x0, conf, "a NaN confidence", window=window, **rule)
        # the rows without a NaN where it is read commit as usual
        counts = dllm.ops.commit_tokens(x[[0, 2]].clone(), x0[[0, 2]], conf[[0, 2]], mask_id=MASK,
                                        window=window[[0, 2]], **rule)
        assert (counts > 0).all()


def test_a_negative_mask_id_is_refused_not_taken_as_no_masks(device):
    # A negative mask id (an unset tokenizer id, -1) matches no token: the ops would propose and
    # commit nothing, every step, without a word. Both refuse it, as their fake kernels do.
    logits, x = masked_batch(2, 10, 20, device)
    with pytest.raises(ValueError, match="mask_id -1 is outside the vocabulary"):
        dllm.ops.predict_masked(logits, x, mask_id=-1)
    x0, conf = dllm.ops.predict_masked(logits, x, mask_id=MASK)
    with pytest.raises(ValueError, match="mask_id must be >= 0, got -1"):
        dllm.ops.commit_tokens(x.clone(), x0, conf, mask_id=-1, num_tokens=1)


def test_a_negative_logits_shift_is_refused(device):
    # Position i reads row i - shift: a negative shift would read the next position's row, the
    # next sequence's or, at the batch's last position, past the logits.
    logits, x = masked_batch(2, 10, 20, device)
    for shift in (-1, -9):
        with pytest.raises(ValueError, match=rf"logits_shift must be in \[0, max\(L, 2\)\) with L = 10, got {shift}"):
            dllm.ops.predict_masked(logits, x, mask_id=MASK, logits_shift=shift)


def test_a_non_contiguous_x_is_refused_not_written_at_the_wrong_positions(device):
    # x is updated in place through its memory: a transposed (or otherwise strided) x must be
    # refused, as the fake kernel does, rather than committed at positions it does not hold.
    g = torch.Generator().manual_seed(8)
    base = torch.full((6, 4), MASK)
    x = base.to(device).t()  # [4, 6], strided
    x0 = torch.randint(0, MASK, (4, 6), generator=g).to(device)
    conf = torch.rand(4, 6, generator=g).to(device)
    assert not x.is_contiguous()
    with pytest.raises(RuntimeError, match="x is updated in place and must be contiguous"):
        dllm.ops.commit_tokens(x, x0, conf, mask_id=MASK, num_tokens=2)
    assert (x == MASK).all()


def test_references_leave_float64_logits_untouched():
    # The references set the mask column to -inf in a float64 copy: with float64 logits,
    # .double() is the caller's own tensor, which must not be written to.
    g = torch.Generator().manual_seed(31)
    logits = torch.randn(2, 9, 131, generator=g, dtype=torch.float64)
    x = torch.full((2, 9), MASK)
    tokens = torch.randint(0, MASK, (2, 9), generator=g)
    before = logits.clone()
    ref.clean_log_probs(logits, MASK)
    ref.confidence(logits, tokens, MASK, "prob")
    ref.predict_masked_greedy(logits, x, MASK, "margin", 1)
    ref.filtered_proposal_probs(logits, MASK, 0.7, top_k=5, top_p=0.9)
    ref.proposal_confidence(logits, tokens, MASK, "entropy", 1.0)
    assert torch.equal(logits, before)


def test_linear_transfer_counts_refuses_a_batch_of_more_than_one_dimension():
    # (x == mask_id).sum(-1, keepdim=True) gives [B, 1]: a clear error, not torch's expand failure
    for masked in (torch.tensor([[3], [1]]), torch.tensor([[3, 1], [2, 2]])):
        with pytest.raises(ValueError, match=r"masked must be \[B\], one count per row"):
            linear_transfer_counts(masked, 2)


def test_a_shift_of_one_over_a_single_position_traces_on_meta_and_under_compile():
    # logits_shift must lie in [0, max(L, 2)): with L = 1 a shift of 1 is allowed (position 0
    # reads row 0), and the fake (meta kernel, torch.compile's) must take what the kernel takes
    g = torch.Generator().manual_seed(5)
    B, V, mask = 3, 13, 12
    logits = torch.randn(B, 1, V, generator=g)
    x = torch.full((B, 1), mask)
    eager = dllm.ops.predict_masked(logits, x, mask_id=mask, logits_shift=1)
    assert torch.equal(eager[0], dllm.ops.predict_masked(logits, x, mask_id=mask)[0])  # row 0 either way
    x0, conf = dllm.ops.predict_masked(logits.to("meta"), x.to("meta"), mask_id=mask, logits_shift=1)
    assert x0.shape == conf.shape == (B, 1) and x0.dtype == torch.int64 and conf.dtype == torch.float32
    torch._dynamo.reset()
    compiled = torch.compile(lambda lg, t: dllm.ops.predict_masked(lg, t, mask_id=mask, logits_shift=1),
                             backend="eager", fullgraph=True)(logits, x)
    assert torch.equal(compiled[0], eager[0]) and torch.equal(compiled[1], eager[1])
    # a shift of 2 over one position stays refused on meta as on the CPU
    for lg, t in ((logits, x), (logits.to("meta"), x.to("meta"))):
        with pytest.raises(ValueError, match="logits_shift"):
            dllm.ops.predict_masked(lg, t, mask_id=mask, logits_shift=2)


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_an_unknown_confidence_source_is_refused_on_meta_too(device):
    g = torch.Generator().manual_seed(9)
    logits, x = torch.randn(2, 4, 11, generator=g).to(device), torch.full((2, 4), 10).to(device)
    with pytest.raises(ValueError, match="confidence_from must be 'model' or 'proposal', got 'tempered'"):
        dllm.ops.predict_masked(logits, x, mask_id=10, temperature=0.5, confidence_from="tempered")
    x0, conf = dllm.ops.predict_masked(logits, x, mask_id=10, temperature=0.5, confidence_from="proposal")
    assert x0.shape == conf.shape == (2, 4) and conf.dtype == torch.float32
