"""Random calls of dllm.generate that no hand-written test combines: every sampler and variant on
a toy model, dllm's DiT (time-conditioned or not) and LLaDA-style networks, and SEDD score models
of both graphs; logits shifted by 0-2 rows; prompts as None, an empty batch, a list of ids, a
tensor, ragged lists, left- or right-padded rows with an attention mask (rows of no real token
too); infill templates (one, one a row, several for one prompt, all known; the mask or -1 as the
marker); block lengths that end the canvas short; every option a sampler takes (temperature,
top-k, top-p, thresholds, alg_temp, guidance, Fast-dLLM's caches) and CUDA-graph replay
(tests/graph_replay.py). Each call must keep what the API promises:

- the canvas: left-padded prompts (their padding as given, a mask id in it replaced by the pad
  id) followed by the generated region, with every known template token in place and no mask left;
- the denoising: masked samplers (and SEDD's absorbing graph) only ever turn a mask into a token,
  which then stays; the history, the callback's canvases and step_times agree step for step;
- each sampler's schedule: LLaDA's linear counts per block (steps that commit nothing skipped, two
  evaluations a guided step), Dream's floor(n * (1 - s / t)), one token a step for first-hitting,
  Fast-dLLM's blocks in order with at least one token a step (all of them at threshold 0), feeding
  the model the span its cache says;
- each sampler's step against a mirror of it (Call, check_mdlm, check_first_hitting, check_sedd):
  the model called as the protocol says (sigma, padding mask, guidance; a fast-dllm step after its
  block's first through a cache refreshed on that first step's canvas), then the ops with the
  sampler's options and rule, drawing from the generator's state before the step (which the
  callback records), so the mirror's canvas must equal the step's exactly; where a cache is exact
  (one layer of a time-agnostic model, greedy, no padding), the uncached call's tokens;
- seeded calls repeat; a row's tokens do not depend on the other rows' prompts (all but
  fast-dllm, whose step count does); a CUDA-graph replay gives the eager call's canvases, and so
  do a later call that replays the same graphs with other prompts and one with another option
  (which must capture its own).

    python fuzz_generate.py --minutes 10        # random cases until the time is up (from tests/)
    python fuzz_generate.py --case 123          # one case again, its choices printed

test_random_calls.py runs the first seeds in the suite."""

import argparse
import math
import time

import pytest
import torch

import dllm
from dllm.sampling.masked import MDLM_EPS, loglinear_sigma
from dllm.sedd import Absorbing, Geometric, LogLinear, Uniform
from fuzz_ops import Case, fuzz_for
from graph_replay import replay_on_cpu
from test_cuda_graph_replay import score_model
from test_generate import TinyModel
from test_kv_cache import make

MASKED = ["mdlm", "first-hitting", "llada", "llada:random", "dream", "dream:origin", "dream:maskgit_plus",
          "dream:topk_margin", "fast-dllm"]
SEDD = ["sedd-analytic", "sedd-euler"]
DREAM_EPS = 1e-3  # dllm.sampling.masked.dream's last time


class Setup:
    """The model of a case and what its canvas uses: vocabulary, mask (None for a uniform graph)
    and pad ids."""

    def __init__(self, case, sampler, cache):
        self.pad, self.exact_cache = 0, False
        if sampler in SEDD:
            graph = case.pick("graph", ["absorb", "uniform"])
            vocab = case.pick("vocab", [2, 5, 17, 50])
            graph = Absorbing(vocab) if graph == "absorb" else Uniform(vocab)
            schedule = case.pick("noise", ["loglinear", "geometric"])
            torch.manual_seed(case.seed)
            self.model = score_model(graph, LogLinear() if schedule == "loglinear" else Geometric())
            self.vocab, self.mask = vocab, getattr(graph, "mask_id", None)
        else:
            kinds = ["dit", "dit-t", "llada"] + ([] if cache else ["toy", "toy-t"])
            kind = case.pick("model", kinds)
            if kind.startswith("toy"):
                self.model = TinyModel(time_conditioned=kind == "toy-t")
            else:
                config = {"time_conditioning": True} if kind == "dit-t" else {}
                layers = case.pick("layers", [1, 2])
                self.model = make(kind.removesuffix("-t"), layers=layers, seed=case.seed, **config)
                # a layer's keys depend on their own token only: caches are exact, greedy decoding too
                self.exact_cache = layers == 1 and kind != "dit-t"
            self.model.logits_shift = case.pick("logits_shift", [0, 0, 1, 2])
            self.vocab = self.model.head.shape[1] if kind.startswith("toy") else self.model.vocab_size
            self.mask = self.model.mask_id

    def token(self, case, n):
        """n random real tokens (never the mask)."""
        real = torch.tensor([t for t in range(self.vocab) if t != self.mask])
        return real[torch.randint(0, len(real), (n,), generator=case.gen)]


def make_prompt(case, setup):
    """(the prompt and attention_mask arguments, the left-padded prompt rows generate must keep,
    the real-token mask of those rows)."""
    form = case.pick("prompt", ["none", "empty", "ids", "tensor", "ragged", "left-padded", "right-padded"])
    batch = 1 if form in ("none", "ids") else case.pick("batch", [1, 2, 3, 4])
    if form == "none":
        return (None, None), torch.empty(1, 0, dtype=torch.int64), torch.empty(1, 0, dtype=torch.bool)
    if form == "empty":
        empty = torch.empty(batch, 0, dtype=torch.int64)
        return (empty, None), empty, empty.bool()
    lengths = [case.rng.randint(1, 6) for _ in range(batch)]
    if form == "ids":
        ids = setup.token(case, lengths[0])
        return (ids.tolist(), None), ids[None], torch.ones(1, lengths[0], dtype=torch.bool)
    if form == "tensor":
        rows = setup.token(case, batch * lengths[0]).view(batch, lengths[0])
        return (rows, None), rows, torch.ones_like(rows, dtype=torch.bool)
    width = max(lengths)
    if form == "ragged":
        rows = [setup.token(case, n) for n in lengths]
        want = torch.full((batch, width), setup.pad, dtype=torch.int64)
        real = torch.zeros(batch, width, dtype=torch.bool)
        for i, r in enumerate(rows):
            want[i, width - len(r):], real[i, width - len(r):] = r, True
        return ([r.tolist() for r in rows], None), want, real
    # padded to one width, possibly rows of padding only; the padding holds any id, the mask too
    lengths = [n if case.rng.random() < 0.8 else 0 for n in lengths]
    tokens = setup.token(case, batch * width).view(batch, width)
    padding = torch.randint(0, setup.vocab, (batch, width), generator=case.gen)
    if setup.mask is not None and case.rng.random() < 0.5:
        padding[:, 0] = setup.mask
    given_mask = torch.zeros(batch, width, dtype=torch.bool)
    for i, n in enumerate(lengths):
        if form == "left-padded":
            given_mask[i, width - n:] = True
        else:
            given_mask[i, :n] = True
    given = torch.where(given_mask, tokens, padding)
    want, real = torch.empty_like(given), torch.zeros_like(given_mask)
    for i, n in enumerate(lengths):  # rows come back left-padded, the padding as given, in its order
        pads, toks = given[i][~given_mask[i]], given[i][given_mask[i]]
        want[i] = torch.cat([pads, toks])
        real[i, width - n:] = True
    if setup.mask is not None:
        want = torch.where(~real & (want == setup.mask), setup.pad, want)
    as_int = case.pick("attention_mask dtype", ["bool", "int"])
    return (given, given_mask if as_int == "bool" else given_mask.long()), want, real


def make_infill(case, setup, batch, gen_length):
    """(the infill argument, the known-token template [rows, gen_length] with the mask (or -1) at
    unknown positions; None without a template)."""
    form = case.pick("infill", ["none", "none", "some", "rows", "all"])
    if form == "none":
        return None, None
    rows = 1 if form != "rows" else batch if batch > 1 else case.pick("templates for one prompt", [1, 2, 3])
    unknown = -1 if setup.mask is None else case.pick("unknown marker", [setup.mask, -1])
    known = torch.rand(rows, gen_length, generator=case.gen) < (1.0 if form == "all" else case.rng.random())
    template = torch.where(known, setup.token(case, rows * gen_length).view(rows, gen_length), unknown)
    return (template[0] if form != "rows" else template), template


def masked_options(case, sampler, gen_length):
    name, _, variant = sampler.partition(":")
    temperature = case.pick("temperature", [0.0, 0.0, 0.5, 1.0, 2.0])
    options = {"temperature": temperature}
    if temperature > 0 or (name == "dream" and variant != "origin"):
        options["top_k"] = case.pick("top_k", [0, 0, 1, 3, 100])
        options["top_p"] = case.pick("top_p", [1.0, 1.0, 0.5, 0.95])
    if name == "llada":
        divisors = [d for d in range(1, gen_length + 1) if gen_length % d == 0]
        block = case.pick("block_length", [None, *divisors])
        blocks = 1 if block is None else gen_length // block
        options.update(block_length=block, steps=blocks * case.pick("steps per block", [1, 2, 3, 5, 8]))
        options["cfg_scale"] = case.pick("cfg_scale", [0.0, 0.0, 1.0, 3.0])
    else:
        options["steps"] = case.pick("steps", [1, 2, 3, 5, 8, 16, 40])
    if name == "fast-dllm":
        options["block_length"] = case.pick("block_length", [None, 1, 2, 3, 5, 8, 32])
        options["threshold"] = case.pick("threshold", [None, 0.0, 0.3, 0.9, 1.0])
    if name == "dream" and variant != "origin":
        options["alg_temp"] = case.pick("alg_temp", [0.0, 0.0, 0.5, 2.0])
    return options


def varied_option(sampler, options):
    """One option changed, to another value the sampler takes."""
    name = sampler.partition(":")[0]
    if name == "fast-dllm":
        return {"threshold": 0.3 if options["threshold"] in (None, 0.9) else 0.9}
    if name == "first-hitting":  # (it ignores steps)
        return {"temperature": 2 * options["temperature"] or 1.0}
    return {"steps": 2 * options["steps"]}  # (llada's: still a multiple of its block count)


def commits(before, after, mask):
    """[B, L] bool: the positions a step filled; fails if it changed anything else."""
    changed = before != after
    assert not (changed & (before != mask)).any(), "a step changed a token that was not a mask"
    assert not (after[changed] == mask).any()
    return changed


class Call:
    """One generate call's setting, and a mirror of its steps: the model called as the protocol
    says, then the sampler's ops, drawing from the generator's state before the step (kept by the
    callback; without one only deterministic steps are mirrored)."""

    def __init__(self, setup, sampler, options, start, gen_length, real, initial):
        self.setup, self.sampler, self.options, self.start, self.gen_length = setup, sampler, options, start, gen_length
        self.mask, self.time_conditioned = setup.mask, getattr(setup.model, "time_conditioned", False)
        # the model sees the prompts' padding mask over the whole canvas, or none without padding
        canvas_mask = torch.cat([real, torch.ones(real.shape[0], gen_length, dtype=torch.bool)], 1)
        self.canvas_mask = None if canvas_mask.all() else canvas_mask
        self.given = (initial != self.mask) & canvas_mask  # guidance's condition: prompts' and infill's tokens
        self.name, _, self.variant = sampler.partition(":")
        self.random = self.name in ("mdlm", "first-hitting") or options.get("temperature", 1.0) > 0 or \
            self.variant in ("random", "origin") or options.get("alg_temp")

    def generator(self, state):
        """The generator of a mirrored step, or False where the step cannot be mirrored."""
        if self.random and state is None:
            return False
        return None if state is None else torch.Generator().set_state(state)

    def forward(self, x, sigma=None, stacked=1, **cache):
        kwargs = cache if self.canvas_mask is None else {"attention_mask": self.canvas_mask.repeat(stacked, 1), **cache}
        return self.setup.model(x, sigma, **kwargs) if self.time_conditioned else self.setup.model(x, **kwargs)

    def canvas_sigma(self, x, stacked=1):
        """The samplers without a clock: log-linear sigma at the masked fraction of real tokens."""
        real = x.shape[1] if self.canvas_mask is None else self.canvas_mask.sum(-1).repeat(stacked)
        return loglinear_sigma((x == self.mask).sum(-1) / real)

    def propose(self, logits, x, generator, **kw):
        options = {"temperature": self.options["temperature"], "top_k": self.options.get("top_k", 0),
                   "top_p": self.options.get("top_p", 1.0), "generator": generator, **kw}
        return dllm.ops.predict_masked(logits.float(), x, mask_id=self.mask,
                                       logits_shift=min(self.setup.model.logits_shift, x.shape[1] - 1), **options)

    @torch.no_grad()  # as generate calls the model (with gradients, dllm's models take other kernels)
    def expect(self, before, after, state, **commit):
        """llada, dream and fast-dllm: fails unless the step from ``before`` is ``after``. state:
        the generator's before the step (None: unknown); commit: the commit rule."""
        generator = self.generator(state)
        if generator is False:
            return
        x, cfg = before.clone(), self.options.get("cfg_scale")
        if cfg:
            both = torch.cat([x, x.masked_fill(self.given, self.mask)])
            cond, uncond = self.forward(both, self.canvas_sigma(both, 2), stacked=2).chunk(2)
            logits = torch.lerp(uncond, cond, cfg + 1)
        else:
            logits = self.forward(x, self.canvas_sigma(x))
        confidence = {"llada": "random" if self.variant == "random" else "prob", "fast-dllm": "prob", "dream": {
            "origin": "prob", "maskgit_plus": "prob", "topk_margin": "margin", "": "entropy", "entropy": "entropy"}.get(
                self.variant)}[self.name]
        x0, conf = self.propose(logits, x, generator, confidence=confidence,
                                **({"confidence_from": "proposal"} if self.name == "dream" else {}))
        dllm.ops.commit_tokens(x, x0, conf, mask_id=self.mask, generator=generator, **commit)
        assert torch.equal(x, after), f"a step differs from its mirror ({commit})"

    @torch.no_grad()
    def expect_cached(self, before, after, state, refreshed, span, threshold, window):
        """fast-dllm with a cache: the block's refresh, a forward over ``refreshed`` (the canvas at
        the block's first step), and for a later step of the block its forward over the positions
        ``span`` = (first, end) with every other position's keys from the refresh."""
        generator = self.generator(state)
        if generator is False:
            return
        kv = self.setup.model.new_kv_cache(*before.shape)
        logits = self.forward(refreshed, self.canvas_sigma(refreshed), cache=kv, start=0)
        x = before.clone()
        part = x if span is None else x[:, span[0]:span[1]].clone()
        if span is not None:  # sigma: the whole canvas's masked fraction
            logits = self.forward(part, self.canvas_sigma(x), cache=kv, start=span[0])
            window = window - span[0]
        x0, conf = self.propose(logits, part, generator)
        dllm.ops.commit_tokens(part, x0, conf, mask_id=self.mask, threshold=threshold, window=window,
                               generator=generator)
        if span is not None:
            x[:, span[0]:span[1]] = part
        assert torch.equal(x, after), f"a cached step differs from its mirror ({span})"

    def window(self, batch, lo, hi):
        return torch.tensor([[lo, min(hi, self.start + self.gen_length)]] * batch)


def check_llada(call, steps_taken, nfe):
    steps, block = call.options["steps"], call.options["block_length"] or call.gen_length
    blocks = call.gen_length // block
    per_block = min(steps // blocks, block)
    canvas, taken = steps_taken[0][0], iter(steps_taken)
    run = 0
    for b in range(blocks):
        lo, hi = call.start + b * block, call.start + (b + 1) * block
        m = (canvas[:, lo:hi] == call.mask).sum(-1)
        for j in range(per_block):  # LLaDA's get_num_transfer_tokens, worked out here
            want = m // per_block + (j < m % per_block).long()
            if not want.any():
                continue  # skipped: no row commits
            before, after, state = next(taken)
            filled = commits(before, after, call.mask)
            assert not filled[:, :lo].any() and not filled[:, hi:].any(), "llada committed outside its block"
            assert torch.equal(filled.sum(-1), want), f"block {b} step {j}: {filled.sum(-1).tolist()} != {want.tolist()}"
            call.expect(before, after, state, num_tokens=want, window=call.window(len(want), lo, hi))
            canvas, run = after, run + 1
    assert next(taken, None) is None, "llada ran more steps than its schedule"
    assert nfe == run * (2 if call.options["cfg_scale"] else 1)


def check_dream(call, steps_taken):
    times = torch.linspace(1, DREAM_EPS, call.options["steps"] + 1).tolist()
    for i, (before, after, state) in enumerate(steps_taken):
        rate = 1.0 if i == len(steps_taken) - 1 else 1 - times[i + 1] / times[i]
        if call.variant == "origin":  # each mask with probability rate
            call.expect(before, after, state, prob=torch.full((len(before),), rate))
            continue
        k = [min(math.floor(float(n) * rate), int(n)) for n in (before == call.mask).sum(-1)]
        assert commits(before, after, call.mask).sum(-1).tolist() == k, f"dream step {i}"
        call.expect(before, after, state, num_tokens=torch.tensor(k), position_temperature=call.options["alg_temp"])


def check_fast_dllm(call, steps_taken, widths):
    """widths: the callback's logits' lengths, the positions each step fed (None: no callback)."""
    block, threshold, cache = call.options["block_length"] or 32, call.options["threshold"], call.options.get("cache")
    length, shift = call.start + call.gen_length, call.setup.model.logits_shift
    last_block = refreshed = None
    for i, (before, after, state) in enumerate(steps_taken):
        filled = commits(before, after, call.mask)
        lo = next(b for b in range(call.start, length, block) if (before[:, b:b + block] == call.mask).any())
        hi = min(lo + block, length)
        assert last_block is None or lo >= last_block, "fast-dllm went back a block"
        assert not filled[:, :lo].any() and not filled[:, hi:].any(), "fast-dllm left its block"
        left = (before[:, lo:hi] == call.mask).sum(-1)
        assert (filled.sum(-1) >= (left > 0).long()).all(), "a row with masks in the block committed none"
        if threshold == 0.0:
            assert torch.equal(filled.sum(-1), left), "threshold 0 commits every mask of the block"
        rule = {"threshold": 0.9 if threshold is None else threshold, "window": call.window(len(left), lo, hi)}
        # a block's first step refreshes the cache over the whole canvas; a shifted head reads
        # position i from row i - 1, so a later step's span starts shift positions early
        refreshed = before if lo != last_block else refreshed
        span = None if cache is None or lo != last_block else (lo - min(shift, lo), length if cache == "prefix" else hi)
        if cache is None:
            call.expect(before, after, state, **rule)
        else:
            call.expect_cached(before, after, state, refreshed, span, **rule)
        if widths is not None:
            assert widths[i] == (length if span is None else span[1] - span[0]), f"step {i} fed {widths[i]} positions"
        last_block = lo


@torch.no_grad()
def check_mdlm(call, steps_taken):
    """MDLM's ancestral steps: each mask commits with probability (t - s) / t to a draw of the
    proposal; masks left at the last step take the argmax of a forward at time s."""
    times = torch.linspace(1, MDLM_EPS, len(steps_taken) + 1, dtype=torch.float64).tolist()
    for i, (before, after, state) in enumerate(steps_taken):
        generator = call.generator(state)
        if generator is False:
            continue
        t, s = times[i], times[i + 1]
        x, batch = before.clone(), len(before)
        sigma = loglinear_sigma(torch.full((batch,), t))
        x0, conf = call.propose(call.forward(x, sigma), x, generator)
        dllm.ops.commit_tokens(x, x0, conf, mask_id=call.mask, prob=torch.full((batch,), (t - s) / t),
                               generator=generator)
        if i == len(steps_taken) - 1 and (x == call.mask).any():
            sigma = loglinear_sigma(torch.full((batch,), s))
            x0, conf = call.propose(call.forward(x, sigma), x, None, temperature=0.0, top_k=0, top_p=1.0)
            dllm.ops.commit_tokens(x, x0, conf, mask_id=call.mask, threshold=0.0)
        assert torch.equal(x, after), f"mdlm step {i} differs from its mirror"


@torch.no_grad()
def check_first_hitting(call, steps_taken):
    """One uniformly chosen mask a step, at the time t * u^(1/n) (n masks left)."""
    for before, after, _ in steps_taken:
        assert torch.equal(commits(before, after, call.mask).sum(-1), (before == call.mask).any(-1).long())
    t = torch.ones(len(steps_taken[0][0]), dtype=torch.float64)
    for i, (before, after, state) in enumerate(steps_taken):
        generator = call.generator(state)
        if generator is False:
            return
        x = before.clone()
        n = (x == call.mask).sum(-1).clamp(min=1)
        t = t * torch.rand(len(x), dtype=torch.float64, generator=generator) ** (1.0 / n)
        x0, conf = call.propose(call.forward(x, loglinear_sigma(t).float()), x, generator, confidence="random")
        dllm.ops.commit_tokens(x, x0, conf, mask_id=call.mask, num_tokens=torch.ones(len(x), dtype=torch.int64),
                               generator=generator)
        assert torch.equal(x, after), f"first-hitting step {i} differs from its mirror"


@torch.no_grad()
def check_sedd(call, seen, initial, seed):
    """SEDD's predictor steps on the time grid linspace(1, 1e-5, steps + 1), then the denoising
    step, each one sedd_step with the known tokens projected back, against a mirror drawing from
    the generator's state before the step; a uniform graph's canvas starts with a draw of its limit."""
    model, graph = call.setup.model, call.setup.model.graph
    generator = torch.Generator().manual_seed(seed)
    known = initial != (-1 if call.mask is None else call.mask)
    if call.mask is None:
        initial = torch.where(known, initial, torch.randint(0, graph.num_classes, initial.shape, generator=generator))
    states = [generator.get_state(), *(state for *_, state in seen)]
    canvases = [initial, *(x for _, x, _, _ in seen)]
    steps, eps = call.options["steps"], 1e-5
    times = torch.linspace(1, eps, steps + 1)
    sigma, dsigma = model.noise(times)
    method = call.sampler.removeprefix("sedd-")
    dsig = sigma[:-1] - model.noise(times[:-1] - (1 - eps) / steps)[0] if method == "analytic" else \
        (1 - eps) / steps * dsigma[:-1]
    kwargs = {} if call.canvas_mask is None else {"attention_mask": call.canvas_mask}
    for i, (before, after, state) in enumerate(zip(canvases, canvases[1:], states)):
        level, increment = (sigma[i], dsig[i]) if i < steps else (sigma[-1], sigma[-1])
        level, increment = level.expand(len(before)).contiguous(), increment.expand(len(before)).contiguous()
        x = graph.step(model(before, level, **kwargs), before, level, increment,
                       method=method if i < steps else "denoise", generator=torch.Generator().set_state(state))
        assert torch.equal(torch.where(known, initial, x), after), f"SEDD step {i} differs from its mirror"


def check_steps(call, out, seen, initial, seed):
    """The history, the callback's canvases and step_times, and each sampler's schedule. seen: the
    callback's (step, canvas, logits, the generator's state after the step)."""
    mask, options = call.mask, call.options
    history = out.history if out.history is not None else [x for _, x, _, _ in seen]
    if seen:
        assert [step for step, _, _, _ in seen] == list(range(len(seen)))
        if out.history is not None:
            assert len(seen) == len(out.history) and all(torch.equal(a, x) for (_, x, _, _), a in zip(seen, out.history))
        assert all(logits.dim() == 3 and logits.shape[0] == x.shape[0] for _, x, logits, _ in seen)
    assert len(out.step_times) == len(history)
    if not history:
        assert out.nfe == 0 and torch.equal(out.sequences, initial), "nothing to generate returns the canvas"
        return
    assert torch.equal(history[-1], out.sequences)
    assert not (out.sequences == mask).any(), "masks left"
    # the masked samplers draw nothing before their first step
    states = [torch.Generator().manual_seed(seed).get_state(), *(state for *_, state in seen)] if seen else \
        [None] * len(history)
    steps_taken = list(zip([initial, *history[:-1]], history, states))
    for before, after, _ in steps_taken:
        commits(before, after, mask)
    name = call.sampler.partition(":")[0]
    if name == "llada":
        check_llada(call, steps_taken, out.nfe)
    elif name == "dream":
        assert len(steps_taken) == options["steps"] == out.nfe
        check_dream(call, steps_taken)
    elif name == "first-hitting":
        assert len(steps_taken) == int((initial == mask).sum(-1).max()) == out.nfe
        check_first_hitting(call, steps_taken)
    elif name == "fast-dllm":
        assert out.nfe == len(steps_taken)
        check_fast_dllm(call, steps_taken, [logits.shape[1] for _, _, logits, _ in seen] if seen else None)
    elif name == "mdlm":
        assert len(steps_taken) == options["steps"] and 1 <= out.nfe <= options["steps"] + 1
        check_mdlm(call, steps_taken)
    else:
        assert name.startswith("sedd-") and len(steps_taken) == options["steps"] + 1 == out.nfe  # and denoising


def fuzz_generate(case):
    sampler = case.pick("sampler", MASKED + SEDD + ["fast-dllm"] * 3)  # its caches and blocks: the most paths
    cache = case.pick("cache", [None, "prefix", "dual"]) if sampler == "fast-dllm" else None
    setup = Setup(case, sampler, cache)
    (prompt, attention_mask), want_prompt, real = make_prompt(case, setup)
    gen_length = case.pick("gen_length", [1, 2, 3, 5, 8, 12, 24, 33])
    batch = want_prompt.shape[0]
    infill, template = make_infill(case, setup, batch, gen_length)
    if template is not None and batch == 1 < template.shape[0]:  # several templates complete copies of one prompt
        batch = template.shape[0]
        want_prompt, real = want_prompt.expand(batch, -1), real.expand(batch, -1)
    options = masked_options(case, sampler, gen_length) if sampler in MASKED else \
        {"steps": case.pick("steps", [1, 2, 5, 12])}
    if cache is not None:
        options["cache"] = cache
    replay = case.pick("cuda_graph", [False, False, True]) and cache != "prefix"
    keep = case.pick("history", ["history", "callback", "both"])
    start = want_prompt.shape[1]
    placeholder = -1 if setup.mask is None else setup.mask
    region = torch.full((batch, gen_length), placeholder, dtype=torch.int64) if template is None else \
        torch.where(template == -1, placeholder, template).expand(batch, -1)
    initial = torch.cat([want_prompt, region], 1)
    kw = dict(prompt=prompt, attention_mask=attention_mask, infill=infill, gen_length=gen_length, sampler=sampler,
              return_history=keep != "callback", **options)
    known = None if template is None else (template != -1) & (template != placeholder)
    if options.get("cfg_scale") and not real.any() and (known is None or not known.any()):
        with pytest.raises(ValueError, match="cfg_scale needs a prompt"):
            dllm.generate(setup.model, **kw)
        return
    generator = torch.Generator()  # one object, as a server's: graphs are kept per generator

    def call(**changes):
        seen = []
        callback = None if keep == "history" else lambda step, x, logits: seen.append(
            (step, x.clone(), logits.clone(), generator.get_state()))
        out = dllm.generate(setup.model, generator=generator.manual_seed(case.seed), callback=callback,
                            **{**kw, **changes})
        return out, seen

    out, seen = call()
    assert out.sequences.shape == (batch, start + gen_length) and out.sequences.dtype == torch.int64
    assert torch.equal(out.sequences[:, :start], want_prompt), "the prompts are not kept, left-padded"
    if known is not None:
        assert torch.equal(out.sequences[:, start:][known.expand(batch, -1)], template.expand(batch, -1)[
            known.expand(batch, -1)]), "an infill token moved"
    assert ((out.sequences[:, start:] >= 0) & (out.sequences[:, start:] < setup.vocab)).all()
    checked = Call(setup, sampler, options, start, gen_length, real, initial)
    if setup.mask is not None:  # (a uniform graph's canvas starts from random tokens)
        check_steps(checked, out, seen, initial, case.seed)
    if sampler in SEDD and seen:
        check_sedd(checked, seen, initial, case.seed)

    again, _ = call()
    assert torch.equal(again.sequences, out.sequences) and again.nfe == out.nfe, "a seeded call did not repeat"
    # (with padding, cached and uncached forwards take different attention kernels, whose rounding
    # tips the exact ties of a row of masks with no real prompt token)
    if cache is not None and setup.exact_cache and options["temperature"] == 0 and checked.canvas_mask is None:
        uncached, _ = call(cache=None)
        assert torch.equal(uncached.sequences, out.sequences) and uncached.nfe == out.nfe, "an exact cache differs"
    others = None
    if isinstance(prompt, torch.Tensor) and real.any():  # the same shapes and padding, other tokens
        row_real = (attention_mask if attention_mask is not None else torch.ones_like(prompt)).bool()
        others = torch.where(row_real, setup.token(case, prompt.numel()).view_as(prompt), prompt)
    if replay:
        with pytest.MonkeyPatch.context() as monkeypatch:
            replay_on_cpu(monkeypatch)
            replayed, _ = call(cuda_graph=True)
            # the next call with new prompts replays the graphs the first captured
            replayed_others = None if others is None else call(cuda_graph=True, prompt=others)[0]
            # and a call with another option captures graphs of its own
            varied = varied_option(sampler, options)
            replayed_varied = call(cuda_graph=True, **varied)[0]
        assert torch.equal(replayed_varied.sequences, call(**varied)[0].sequences), f"the replay with {varied} differs"
        assert torch.equal(replayed.sequences, out.sequences) and replayed.nfe == out.nfe, "the replay differs"
        if out.history is not None:
            assert all(torch.equal(a, b) for a, b in zip(replayed.history, out.history))
        if others is not None:
            eager_others, _ = call(prompt=others)
            assert torch.equal(replayed_others.sequences, eager_others.sequences), "a later call's replay differs"
    if others is not None and batch > 1 and sampler != "fast-dllm":
        others[0] = prompt[0]
        moved, _ = call(prompt=others)
        assert torch.equal(moved.sequences[0], out.sequences[0]), "row 0 depends on the other rows' prompts"


def run_case(seed):
    case = Case("generate", seed)
    try:
        fuzz_generate(case)
    except Exception as error:
        raise AssertionError(f"{case}") from error
    return case


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--case", type=int, help="seed: one case again")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.case is not None:
        print(run_case(args.case), "passed")
        return
    fuzz_for(args.minutes, args.seed, lambda i, seed: run_case(seed), lambda i, seed: f"generate:{seed}")

if __name__ == "__main__":
    main()
