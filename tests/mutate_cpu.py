"""Checks that the tests catch bugs in the Python API, the C++ CPU kernels and the benchmark
scripts: plants one known bug at a time (a sampler's rule, a schedule, a default, a kernel's
tie-break or masking) in a copy of the sources and reports whether a test it names failed.
tests/cuda_emulator/mutate.py does the same for the CUDA kernels. Hours on 2 cores: each mutant
runs its named test modules whole, and the C++ ones rebuild first.

    python tests/mutate_cpu.py [INDEX ...]

Runs in a temporary git worktree of HEAD with its own CPU-only build (about two minutes); a C++
mutant is rebuilt with ninja. The working tree is not touched. Three C++ changes are known to
survive, since nothing a caller sees depends on them: dropping sedd_step's clamp of the reference
to the score shift on clip rows (it keeps a float from overflowing only when every logit lies 88
below the shift, where the clipped weights are all zero either way), and letting the CPU attention
backward's P cover one column past a sequence's last key (that key's dK and dV rows are never
stored, and dQ's product stops before it). A third survives since the loss gradient's exp has its
own underflow: dropping exp_poly's flush to 0 below -87.3 (common.h) only turns weights smaller
than exp(-87.3) = 1.2e-38, -inf's included, into 1.2e-38.
"""

from __future__ import annotations

import glob
import os
import subprocess
import sys
from pathlib import Path

MASKED, SCORE, GENERATE, OPTIONS, CANVAS = (f"python/dllm/sampling/{name}.py" for name in (
    "masked", "score", "generate", "options", "canvas"))
SCHEDULES, OBJECTIVES = "python/dllm/sedd/schedules.py", "python/dllm/objectives/diffusion.py"
COMMIT, PREDICT, SEDD, ATTENTION = (f"csrc/kernels/{name}_cpu.cpp"
                                    for name in ("commit_tokens", "predict_masked", "sedd", "attention"))
RULES, GEN, KV, UNMASK = "test_sampler_rules", "test_generate", "test_kv_cache", "test_unmask"
E2E, E2E_PARTIAL = "python/dllm/benchmarks/e2e.py", "python/dllm/benchmarks/e2e_partial.py"
# (file, text, replacement, test modules that must catch it)
MUTANTS = [
    # the samplers' rules: time conditioning, guidance, remasking, MDLM's schedule and cache,
    # first-hitting's time and position, Dream's counts and confidences, Fast-dLLM's caches
    (MASKED, "return loglinear_sigma((x == mask_id).sum(-1) / real)",
     "return loglinear_sigma((x == mask_id).sum(-1) / x.shape[1])", [RULES]),
    (MASKED, "logits = torch.lerp(uncond, cond, cfg_scale + 1)", "logits = torch.lerp(uncond, cond, cfg_scale)", [RULES]),
    (MASKED, "unconditional = x.masked_fill(given, mask_id)", "unconditional = x.clone()", [GEN]),
    (MASKED, "loop.forward(part, _canvas_sigma(loop, x, mask_id)",
     "loop.forward(part, _canvas_sigma(loop, part, mask_id)", [KV]),
    (GENERATE, "given[:, :start] &= attention_mask[:, :start]", "pass", [GEN]),
    (MASKED, 'confidence = "random" if remasking == "random" else "prob"', 'confidence = "prob"', [RULES]),
    (MASKED, "rate = per_row((t - s) / t)", "rate = per_row(t - s)", [GEN]),
    (MASKED, "        if latest and not time_conditioned:\n", "        if latest:\n", [GEN]),
    (MASKED, "        if not time_conditioned and bool(unmasked):\n            latest.clear()\n", "", [GEN]),
    (MASKED, "        t.mul_(u ** n.reciprocal())", "        t.mul_(u)", [RULES]),
    (MASKED, 'confidence="random", logits_shift=shift, generator=generator)\n        ops.commit_tokens(x, x0, conf, '
             'mask_id=mask_id, num_tokens=one',
     'confidence="prob", logits_shift=shift, generator=generator)\n        ops.commit_tokens(x, x0, conf, '
     'mask_id=mask_id, num_tokens=one', [RULES]),
    (MASKED, ".mul_(rate).long()", ".mul_(rate).ceil().long()", [GEN]),
    (MASKED, 'confidence_from="proposal",\n', "\n", [GEN]),
    (MASKED, '"topk_margin": "margin"', '"topk_margin": "prob"', [RULES, GEN]),
    (MASKED, "position_temperature=alg_temp,", "position_temperature=0.0,", [RULES]),
    (MASKED, "1.0 if i == steps - 1 else 1 - s / t", "1 - s / t", [GEN]),
    (MASKED, "q_lo = lo - min(shift, lo)", "q_lo = lo", [KV]),
    (MASKED, 'torch.arange(q_lo, length if cache == "prefix" else hi, device=x.device)',
     "torch.arange(q_lo, hi, device=x.device)", [KV]),
    (MASKED, "            refresh = False\n", "", [KV]),
    # steps that are right when run eagerly and wrong when replayed from a CUDA graph: llada's block
    # window, Dream's rate and first-hitting's clock read from the enclosing scope instead of the
    # step's arguments (frozen at the capture; the clock also advanced by the warm-up run)
    (MASKED, "    def step(x, num_tokens, window):", "    def step(x, num_tokens, _):", ["test_cuda_graph_replay"]),
    (MASKED, "    def step(x, rate):", "    def step(x, _):", ["test_cuda_graph_replay"]),
    (MASKED, "    def step(x, t):", "    def step(x, _):", ["test_cuda_graph_replay"]),
    # ... and a dual-cached fast-dllm span at the capture's position, in the model or in the cache
    (MASKED, "at = positions[:1] if loop.cuda_graph else q_lo", "at = q_lo", ["test_cuda_graph_replay"]),
    ("python/dllm/models/layers.py", "lambda: start.reshape(1) + torch.arange(k.shape[1], device=k.device))",
     "lambda: torch.arange(k.shape[1], device=k.device))", ["test_cuda_graph_replay"]),
    # graphs kept across calls reading the first call's tensors (stale or freed) instead of their
    # session's: the padding mask, llada's prompt, first-hitting's counts, SEDD's known tokens, the
    # dual cache, the autoregressive cache
    ("python/dllm/sampling/loop.py", 'self.attention_mask = self.buffer("attention_mask", attention_mask)',
     "self.attention_mask = attention_mask", ["test_cuda_graph_replay"]),
    (MASKED, '    given = loop.buffer("given", given)\n', "", ["test_cuda_graph_replay"]),
    (MASKED, 'one = loop.keep("one", lambda: torch.ones(x.shape[0], dtype=torch.int64, device=x.device))',
     "one = torch.ones(x.shape[0], dtype=torch.int64, device=x.device)", ["test_cuda_graph_replay"]),
    (SCORE, 'template, known = loop.buffer("template", x.clone()), loop.buffer("known", known)', "template = x.clone()",
     ["test_cuda_graph_replay"]),
    (MASKED, 'kv = loop.keep("kv", lambda: loop.new_kv_cache(x)) if', "kv = loop.new_kv_cache(x) if",
     ["test_cuda_graph_replay"]),
    ("python/dllm/models/dit.py", 'session.keep("kv", lambda: self.new_cache(B, length))',
     "self.new_cache(B, length)", ["test_cuda_graph_replay"]),
    # ... or a model's graphs replayed over weights that model.to(dtype) replaced
    ("python/dllm/sampling/cuda_graph.py", "torch.is_grad_enabled(), _tensor_addresses(model),",
     "torch.is_grad_enabled(),", ["test_cuda_graph_replay"]),
    # ... or captured with dropout on and replayed after model.eval()
    ("python/dllm/sampling/cuda_graph.py", "           tuple(m.training for m in model.modules()))",
     "           ())", ["test_cuda_graph_replay"]),
    # ... or handed to a call on another stream before the last call's queued work has run
    ("python/dllm/sampling/cuda_graph.py", "        session._enter()\n", "", ["test_cuda_graph_replay"]),
    # SEDD's noise increments and conditioning; the schedules' derivatives
    (SCORE, "dsig = (1 - eps) / steps * dsigma[:-1]", "dsig = dsigma[:-1]", [RULES]),
    (SCORE, "noise(times[:-1] - (1 - eps) / steps)[0]", "noise((times[:-1] - 2 * (1 - eps) / steps).clamp(min=0))[0]",
     [RULES]),
    (SCORE, "torch.where(known, template, x_next, out=x)", "x.copy_(x_next)", [GEN]),
    (SCHEDULES, "-torch.log(rest)), a / rest", "-torch.log(rest)), 1 / rest",
     ["test_objectives"]),
    (SCHEDULES, "return sigma, sigma * (log_max - log_min)", "return sigma, sigma", ["test_objectives"]),
    # LLaDA's transfer counts; generate's defaults, padding and bookkeeping
    ("python/dllm/unmask_schedule.py", "[None, :] < (masked % steps)", "[None, :] <= (masked % steps)", [GEN]),
    (GENERATE, "threshold=0.9 if threshold is None else threshold", "threshold=0.5 if threshold is None else threshold",
     [RULES]),
    (GENERATE, "FAST_DLLM_BLOCK = 32", "FAST_DLLM_BLOCK = 16", [RULES]),
    (CANVAS, "prompt[i, width - r.numel():] = r", "prompt[i, :r.numel()] = r", [GEN]),
    (CANVAS, "stable=True).indices", "stable=True, descending=True).indices", [GEN]),
    ("python/dllm/sampling/loop.py", "        self.nfe += evaluations\n        if not (", "        self.nfe += 1\n        if not (",
     [GEN]),
    ("python/dllm/sampling/loop.py", "self.history.append(x.detach().clone())", "self.history.append(x.detach())", [GEN]),
    # the objectives' weights and SEDD's output scaling per graph
    (OBJECTIVES, "x0, dsigma / torch.expm1(sigma),", "x0, 1.0 / torch.expm1(sigma),", ["test_objectives"]),
    (OBJECTIVES, "x0, 1.0 / p, mask_id", 'x0, 1.0 / draws["t"].to(x0.device).clamp(min=1e-3), mask_id',
     ["test_objectives"]),
    (OBJECTIVES, "graph=self.graph, scale_by_sigma=False)", "graph=self.graph, scale_by_sigma=True)", ["test_objectives"]),
    # training: an ignored SIGINT taken over, the accumulated gradient not averaged (Adam hides its
    # scale), a resume's new betas and weight decay dropped, a started-over run's stale checkpoint
    # kept, the cosine's last step above its final lr, SEDD's EMA warm-up, one batch order for every
    # epoch, documents run together, the validation split's hash threshold and its tail cut
    ("python/dllm/training/trainer.py", " and signal.getsignal(signal.SIGINT) is not signal.SIG_IGN", "",
     ["test_training"]),
    ("python/dllm/training/trainer.py", "loss = self.objective.train_loss(nll, L) / cfg.grad_accum",
     "loss = self.objective.train_loss(nll, L)", ["test_training"]),
    ("python/dllm/training/trainer.py",
     '            g["betas"], g["weight_decay"] = (self.cfg.beta1, self.cfg.beta2), self.cfg.weight_decay\n',
     "            pass\n", ["test_training"]),
    ("python/dllm/training/trainer.py",
     "                    shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()\n",
     "                    pass\n", ["test_training"]),
    ("python/dllm/training/trainer.py", "span = cfg.steps - 1 - cfg.warmup", "span = cfg.steps - cfg.warmup",
     ["test_training"]),
    ("python/dllm/training/ema.py", "(1 + self.num_updates) / (10 + self.num_updates)",
     "(1 + self.num_updates) / (1 + self.num_updates)", ["test_training"]),
    ("python/dllm/data/dataset.py", "np.random.default_rng([self.seed, self.epoch])", "np.random.default_rng([self.seed, 0])",
     ["test_data"]),
    ("python/dllm/data/dataset.py", "for p in (e, eos)]", "for p in (e,)]", ["test_data"]),
    ("python/dllm/data/corpus.py", "return (h / 2**64) < val_fraction", "return (h / 2**64) <= val_fraction * 2",
     ["test_data"]),
    ("python/dllm/data/corpus.py", "train.append((rel, text[:k]))", "train.append((rel, text[:k + 1]))", ["test_data"]),
    # the e2e report's code metrics: entropy in nats, blank text as code, a whole sample never
    # parseable, the stop token kept, any parseable fill accepted
    ("python/dllm/benchmarks/code_quality.py", "math.log2(n / c)", "math.log(n / c)", ["test_e2e"]),
    ("python/dllm/benchmarks/code_quality.py", "return tree is not None and len(tree.body) > 0", "return tree is not None",
     ["test_e2e"]),
    ("python/dllm/benchmarks/code_quality.py", "for k in range(len(lines), 0, -1):", "for k in range(len(lines) - 1, 0, -1):",
     ["test_e2e"]),
    ("python/dllm/benchmarks/code_quality.py", "return ids[:ids.index(stop_id)] if", "return ids[:ids.index(stop_id) + 1] if",
     ["test_e2e"]),
    ("python/dllm/benchmarks/code_quality.py", 'return self._statements(body_text) > self._statements("pass") - 1',
     "return self._statements(body_text) >= 0", ["test_e2e"]),
    # padded batches reaching attention as lengths: RoPE at the moved positions, the padding
    # attended, the output left in the moved order
    ("python/dllm/models/attention.py", "cos, sin = rotary.at(ragged.positions + start)",
     "cos, sin = rotary(start, tokens.shape[1], tokens.device)", ["test_models"]),
    ("python/dllm/models/attention.py", "return ragged, cos, sin, None, ragged.lengths",
     "return ragged, cos, sin, None, torch.full_like(ragged.lengths, tokens.shape[1])", ["test_models"]),
    ("python/dllm/models/attention.py", "return torch.empty_like(h).scatter_(1, self._index(h), h)",
     "return h.gather(1, self._index(h))", ["test_models"]),
    # the C++ CPU kernels: tie-breaks, Dream's position temperature, the shifted head, the
    # confidences, top-k / top-p filtering, SUBS, the losses' special entries, attention's dS
    (COMMIT, "(a.key == b.key && a.index < b.index)", "(a.key == b.key && a.index > b.index)", [UNMASK]),
    (COMMIT, "c.key = c.key / p.position_temperature +", "c.key = c.key * p.position_temperature +", [UNMASK]),
    (PREDICT, "std::max<int64_t>(i - p.logits_shift, 0)", "i", [UNMASK]),
    (PREDICT, "std::max(max_of(v, greedy), max_of(v + greedy + 1, vocab - greedy - 1))", "max_of(v, vocab)", [UNMASK]),
    (PREDICT, "return float(t_sum / s_sum - std::log(s_sum));", "return float(t_sum / s_sum);", [UNMASK]),
    (PREDICT, "if (keys[j] < level.prefix) y[j] = -kInf;", "if (keys[j] <= level.prefix) y[j] = -kInf;", [UNMASK]),
    (PREDICT, "n += y[j] != -kInf && (keys[j] >> 24) == (level.prefix >> 24);", "n += y[j] != -kInf;", [UNMASK]),
    (PREDICT, "count[0][d] += count[c][d], mass[0][d] += mass[c][d];", "count[0][d] += count[c][d];", [UNMASK]),
    (PREDICT, "} else if (p.temperature == 1.0f && !filtered) {", "} else if (!filtered) {", [UNMASK]),
    (SEDD, "        buf[x] = -kInf;  // x's own", "        // x's own", ["test_sedd_step"]),
    (SEDD, "        buf[p.mask_id] = -kInf;  // SUBS", "        // SUBS", ["test_sedd_losses"]),
    (SEDD, "          buf[xt] = 0.0f;\n", "", ["test_sedd_losses"]),
    (SEDD, "    grad[gr.skip] = Loader<D>::store(0.0f);\n", "", ["test_sedd_losses"]),
    # the loss gradient's exp overflowing from 88.38 instead of 88.72 (exp_poly's 2^n factor)
    (SEDD, "return v > 88.72f ? kInf : (p + p) * bits_to_float(uint32_t(n + 126) << 23);", "return v > 88.72f ? kInf : exp_poly(v);",
     ["test_sedd_losses"]),
    (ATTENTION, "      for (float& value : dq) value *= p.scale;\n", "", ["test_attention"]),
    (ATTENTION, "const float pij = j < nj && row_lse != -kInf ?", "const float pij = j < nj ?", ["test_attention"]),
    # the few-queries forward (a decoding step): its K/V head, the exponent's maximum, the key rows
    (ATTENTION, "hk = h / (p.heads / p.kv_heads);", "hk = h % p.kv_heads;", ["test_attention"]),
    (ATTENTION, "scores[j] = exp_poly(scores[j] - m);", "scores[j] = exp_poly(scores[j]);", ["test_attention"]),
    (ATTENTION, "float_row<D>(p.k, k_first + (j + (g < n ? g : 0)) * p.k_token_stride",
     "float_row<D>(p.k, k_first + (j + (g < n ? g : 0)) * dim", ["test_attention"]),
    (ATTENTION, "if (g < n) w[g] = scores[j + g];", "w[g] = scores[j + g < kn ? j + g : j];", ["test_attention"]),
    ("csrc/kernels/sample_categorical_cpu.cpp", "p.logprob[r] = (v[token] - m) * scale - log_sum_exp(",
     "p.logprob[r] = (v[token] - m) * scale - (greedy ? 0.0f : 1e-3f) - log_sum_exp(", ["test_sample_categorical"]),
    # large logits and tiny temperatures (tempering relative to the row's max, 1 / T capped), tiny
    # commit probabilities, exp's underflow
    ("csrc/kernels/cpu_rows.h", "-kInf : (group_max - m) * scale +", "-kInf : group_max * scale +",
     ["test_sample_categorical", UNMASK]),
    ("csrc/include/dllm/sample_categorical.h", "return s < 3.4028234663852886e38f ? s : 3.4028234663852886e38f;",
     "return s;", ["test_sample_categorical"]),
    (COMMIT, "uniform53_at(p.rng.seed", "uniform_at(p.rng.seed", [UNMASK]),
    # the loss gradient's exp of a -inf logit (exactly 0, not NaN)
    (SEDD, "exp_reduced(v < -87.3f ? -87.3f : v, n)", "exp_reduced(v, n)", ["test_sedd_losses"]),
    # found by a systematic sweep of the Python layer (one AST change at a time): the absorbing graph
    # object's sampler step left unscaled by sigma, one step per LLaDA block refused, mdlm's steps
    # missing from the history and callbacks, a misspelt SEDD graph trained as the uniform one, a
    # restarted run's lost final validation taken as done because an earlier step was validated
    ("python/dllm/sedd/graphs.py", '    name = "absorb"\n    scale_by_sigma = True\n',
     '    name = "absorb"\n    scale_by_sigma = False\n', ["test_sedd_step"]),
    ("python/dllm/unmask_schedule.py", "or steps <= 0:", "or steps <= 1:", [UNMASK]),
    (MASKED, "        loop.end(x, latest[0])\n        # Reading unmasked", "        # Reading unmasked", [GEN]),
    (OBJECTIVES, '        if graph not in ("absorb", "uniform"):\n', "        if False:\n", ["test_objectives"]),
    ("python/dllm/training/trainer.py", 'r["step"] == self.step and "val_bpb" in r',
     'r["step"] == self.step or "val_bpb" in r', ["test_training"]),
    # llada's skip of steps that commit nothing, LLaDA's random-length steps, earlier starts' records
    (MASKED, "            if busy_step:\n                loop.run_step(", "            if True:\n                loop.run_step(",
     [GEN]),
    (OBJECTIVES, "    random_length = 0.01", "    random_length = 0.0", ["test_training"]),
    ("python/dllm/training/trainer.py", "return length if cut else L", "return L", ["test_training"]),
    ("python/dllm/training/trainer.py", '+ ([before["provenance"]] if', '+ ([] if', ["test_training"]),
    # the models and their loaders: a padded batch turning the AR model bidirectional, a save that
    # leaves the process umask at 0, LLaDA's residual init, the kind load_for_sampling reports for a
    # published folder, Dream's end-of-text id; the training clock a resumed max_time run counts on
    ("python/dllm/models/dit.py", "if causal and (cache is not None or mask is not None):",
     "if causal and (cache is not None or mask is None):", ["test_models"]),
    ("python/dllm/models/io.py", "        os.umask(umask)\n", "", ["test_models"]),
    ("python/dllm/models/llada.py", "std=0.02 / (2 * cfg.layers) ** 0.5", "std=0.2 / (2 * cfg.layers) ** 0.5",
     ["test_models"]),
    ("python/dllm/sampling/pretrained.py", '"score" if model.layout == "sedd" else "masked"',
     '"score" if model.layout != "sedd" else "masked"', ["test_published_checkpoints"]),
    ("python/dllm/models/hub/dream.py", "    if eos is not None:\n", "    if eos is None:\n",
     ["test_published_checkpoints"]),
    ("python/dllm/training/trainer.py",
     '            win_tokens += cfg.batch_size * last["seq_len"]\n            self.elapsed = time.perf_counter() - t_run\n',
     '            win_tokens += cfg.batch_size * last["seq_len"]\n', ["test_training"]),
    # RoPE (CPU kernel and binding): the second half rotated the wrong way, per-sequence tables
    # read as one, a strided x read as contiguous; adaLN's norm weight and the DiT's MLP gate lost
    ("csrc/kernels/rotary_cpu.cpp", "out[i + half] = L::store(x2 * c + x1 * sn);",
     "out[i + half] = L::store(x2 * c - x1 * sn);", ["test_rotary"]),
    ("csrc/kernels/rotary_cpu.cpp", "p.cos + b * p.table_batch_stride + s * half", "p.cos + s * half", ["test_rotary"]),
    ("csrc/torch/rotary.cpp", "p.x_seq_stride = call.x.stride(1);", "p.x_seq_stride = heads * dim;", ["test_rotary"]),
    # a decoding step's lengths kept from an earlier step whose position tensor was updated in place since
    ("python/dllm/models/layers.py", "if layer == 0 or kept is None or kept[0] is not position or kept[1] != step:",
     "if kept is None or kept[0] is not position:", ["test_models"]),
    ("python/dllm/models/layers.py", "w = self.weight.to(acc) * (1 + scale.to(acc))", "w = 1 + scale.to(acc)",
     ["test_layers"]),
    ("python/dllm/models/dit.py", "torch.addcmul(x, gate2[:, None], self.dropout(self._mlp(h)))",
     "x + self.dropout(self._mlp(h))", ["test_layers"]),
    # the e2e verdict's entropies at equal token counts
    ("python/dllm/benchmarks/e2e_verdict.py", "if not counts or not ar_counts:", "if True:", ["test_e2e_verdict"]),
    # the head's padded rows: the view of the wrong columns; padded while autograd records
    ("python/dllm/models/layers.py", "return F.linear(h, *self.padded_parameters())[..., :self.out_features]",
     "return F.linear(h, *self.padded_parameters())[..., -self.out_features:]", ["test_models"]),
    ("python/dllm/models/layers.py", "or records_autograd(h, *self.parameters())", "or records_autograd(h)",
     ["test_models"]),
    # adaLN (CPU kernel and binding): the norm of the stream before the update; the scale not
    # offset by one
    ("csrc/kernels/adaln_cpu.cpp", "row[i] = L::load(x[i]) + g[i] * L::load(u[i]);", "row[i] = L::load(x[i]);",
     ["test_adaln"]),
    ("csrc/kernels/cpu_rows.h", "for (; i < n; ++i) sum += x[i] * x[i];", "", ["test_adaln"]),
    ("csrc/kernels/cpu_rows.h", "h = u > 0x7f800000u ? 0x7e00u : 0x7c00u;", "h = 0x7c00u;", ["test_rotary"]),
    ("csrc/kernels/cpu_rows.h", "if (u >= 0x47800000u) {", "if (u >= 0x47800000u + (1u << 13)) {", ["test_rotary"]),
    ("csrc/torch/adaln.cpp", "at::addcmul(weight_f, weight_f, scale)", "at::mul(weight_f, scale)", ["test_adaln"]),
    ("csrc/torch/attention.cpp", "return {t, token_stride, t.stride(-2)};", "return {t, token_stride, t.size(-1)};",
     ["test_attention"]),
    ("csrc/torch/attention.cpp", "t.stride(0) == t.size(1) * t.stride(1)", "true", ["test_attention"]),
    # found by reviews of the API, the loaders and the trainer: generate's option checks, a published
    # model's vocabulary, a gradient overflow applied, ~ left unexpanded, a kept model's relative
    # corpus path, a tail split's copies, SentencePiece byte counts
    (OPTIONS, "if temperature < 0 or alg_temp < 0 or top_k < 0:", "if top_k < 0:", [GEN]),
    ("python/dllm/models/hub/published.py", "return self.net.config.vocab_size", "return None",
     ["test_published_checkpoints"]),
    ("python/dllm/training/trainer.py", "if not math.isfinite(gnorm):", "if False:", ["test_training"]),
    ("python/dllm/training/config.py", "str(Path(value).expanduser().resolve())", "str(Path(value).resolve())",
     ["test_training"]),
    ("python/dllm/training/timed.py", '("data", path_as_recorded("data", data))', '("data", data)', ["test_e2e"]),
    ("python/dllm/data/corpus.py", "side[rel] = train if k == len(text) else", "side[rel] = train if True else",
     ["test_data"]),
    ("python/dllm/data/tokenizer.py", "else [lead, i]).encode", "else [i]).encode", ["test_data"]),
    ("csrc/include/dllm/unmask.h", "if (bits == 0x80000000u) bits = 0u;", "", [UNMASK]),
    # the uniform score entropy reading x0's raw logit where x0 == x_t holds the log-score's 0
    ("csrc/include/dllm/sedd.h", "(s.x0_coef != 0.0 ? s.x0_coef * (l_x0 - s.shift) : 0.0)",
     "s.x0_coef * (l_x0 - s.shift)", ["test_sedd_losses"]),
    ("csrc/torch/unmask.cpp", "overlap != at::MemOverlapStatus::Full && ", "", [UNMASK]),
    ("python/dllm/training/trainer.py", "        self._seed_dropout_per_rank()\n", "", ["test_training"]),
    (GENERATE, "@_on_the_models_device\n", "", [GEN]),
    # padding that holds the mask id keeps it (refused as a masked prompt); a 0-d sigma goes to the op as it is
    (CANVAS, "prompt = prompt.masked_fill(masks_in_padding, pad_id)", "prompt = prompt", [GEN]),
    ("python/dllm/ops/_checks.py", "return v.expand(like.shape[0]) if v.dim() == 0 else v", "return v", ["test_op_contracts"]),
    ("python/dllm/ops/_checks.py", "if FLOAT32_MAX < magnitude < math.inf or", "if False and", ["test_op_contracts"]),
    # the T-step bound's sigma, a float64 model's logits, the gated residual's dtype, a shard's weight dtype
    (OBJECTIVES, "loglinear_sigma(t), self.mask_id, x0, 1.0 / t,", "self.noise(t)[0], self.mask_id, x0, 1.0 / t,",
     ["test_objectives"]),
    ("python/dllm/sampling/model_protocol.py", "return logits.float() if logits.dtype == torch.float64 else logits",
     "return logits", [GEN]),
    ("python/dllm/models/layers.py", "x = torch.addcmul(x, gate[:, None], update).to(x.dtype)",
     "x = torch.addcmul(x, gate[:, None], update)", ["test_layers"]),
    ("python/dllm/models/hub/loader.py", "if not tensor.is_floating_point():", "if False:",
     ["test_published_checkpoints"]),
    ("csrc/torch/unmask.cpp", "  }\n  x.unsafeGetTensorImpl()->bump_version();\n}", "  }\n}", ["test_op_contracts"]),
    # options every masked sampler hands to predict_masked, MDLM's final step at sigma(eps) and shifted
    (MASKED, "temperature=temperature, top_k=top_k, top_p=top_p,\n                                      logits_shift=shift",
     "temperature=temperature,\n                                      logits_shift=shift", ["test_sampler_laws"]),
    (MASKED, 'confidence="random", logits_shift=shift, generator=generator)',
     'confidence="random", generator=generator)', ["test_sampler_laws"]),
    (MASKED, 'top_k=top_k, top_p=top_p,\n                                      confidence="random"',
     '\n                                      confidence="random"', ["test_sampler_laws"]),
    (MASKED, "top_p=top_p, confidence=confidence, logits_shift=shift, generator=generator)",
     "top_p=top_p, confidence=confidence, generator=generator)", ["test_sampler_laws"]),
    (MASKED, "top_p=top_p, confidence=confidence, logits_shift=shift, generator=generator)",
     "confidence=confidence, logits_shift=shift, generator=generator)", ["test_sampler_laws"]),
    (MASKED, "temperature=temperature, top_k=top_k,\n                                      top_p=top_p, logits_shift=min(",
     "temperature=temperature,\n                                      top_p=top_p, logits_shift=min(", ["test_sampler_laws"]),
    (MASKED, "loop.logits(x, loglinear_sigma(per_row(s))", "loop.logits(x, loglinear_sigma(per_row(t))", [GEN]),
    (MASKED, "ops.predict_masked(latest[0], x, mask_id=mask_id, logits_shift=shift)",
     "ops.predict_masked(latest[0], x, mask_id=mask_id)", [GEN]),
    # training, objectives, models and data: a clip of 0, the uniform bound's prior, its jump targets
    # and strata, SEDD's times, epochs and their resume, a split's last window and hash, suffixes,
    # dropout, norm_eps, a cut step's counts, the MLP widths, SEDD's sizes and embedding
    ("python/dllm/training/trainer.py", "if cfg.grad_clip > 0:", "if cfg.grad_clip >= 0:", ["test_training"]),
    (OBJECTIVES, "return integral + L * prior.to(integral)", "return integral + prior.to(integral)",
     ["test_objectives"]),
    (OBJECTIVES, 'd["y"] = torch.randint(0, self.model_vocab_size, (batch, seq_len)',
     'd["y"] = torch.randint(0, self.model_vocab_size - 1, (batch, seq_len)', ["test_objectives"]),
    (OBJECTIVES, "sample_t(batch, generator, self.sampling_eps, antithetic=False)",
     "sample_t(batch, generator, self.sampling_eps, antithetic=True)", ["test_objectives"]),
    (OBJECTIVES, "strata = torch.rand(batch, generator=generator, dtype=torch.float64) + torch.randperm(batch, "
     "generator=generator)", "strata = torch.rand(batch, generator=generator, dtype=torch.float64) + "
     "torch.arange(batch)", ["test_objectives"]),
    ("python/dllm/data/dataset.py", "            if self.pos == self.n:", "            if self.pos >= self.n - 1:",
     ["test_data"]),
    ("python/dllm/data/dataset.py", 'self.epoch, self.pos, self.deferred = s["epoch"], s["pos"],',
     'self.epoch, self.pos, self.deferred = s["epoch"], s["pos"] % self.n,', ["test_data"]),
    ("python/dllm/data/dataset.py", 'list(s.get("deferred", []))', "[]", ["test_data"]),
    ("python/dllm/data/dataset.py", "self.deferred = sorted({int(i) for part in out for i in part})",
     "self.deferred = []", ["test_data"]),
    ("python/dllm/data/dataset.py", "return len(self.tokens) // self.seq_len",
     "return (len(self.tokens) - 1) // self.seq_len", ["test_data"]),
    ("python/dllm/data/corpus.py", 'h.update(f"{split}\\0{rel}\\0"', 'h.update(f"{rel}\\0"', ["test_data"]),
    ("python/dllm/data/corpus.py", "elif p.suffix.lower() in _TEXT_SUFFIXES", "elif p.suffix in _TEXT_SUFFIXES",
     ["test_data"]),
    ("python/dllm/models/llada.py", "x = x + self.dropout(self.o_proj(a))", "x = x + self.o_proj(a)", ["test_models"]),
    ("python/dllm/models/dit.py", "self.norm1 = ModulatedLayerNorm(d, cfg.norm_eps)",
     "self.norm1 = ModulatedLayerNorm(d)", ["test_layers"]),
    ("python/dllm/models/llada.py", "self.norm = RMSNorm(cfg.hidden, cfg.norm_eps)", "self.norm = RMSNorm(cfg.hidden)",
     ["test_models"]),
    ("python/dllm/training/trainer.py", "nll_tok = nll_sum.item() / (B * L)",
     "nll_tok = nll_sum.item() / (B * self.cfg.seq_len)", ["test_training"]),
    ("python/dllm/training/trainer.py", "length = int(torch.randint(1, L + 1, ()", "length = int(torch.randint(1, L, ()",
     ["test_training"]),
    ("python/dllm/models/dit.py", "hid = int(cfg.mlp_ratio * d)", "hid = 4 * d", ["test_models"]),
    ("python/dllm/models/llada.py", "8 * ((int(2 * cfg.mlp_ratio * d / 3) + 7) // 8)",
     "8 * ((int(2 * cfg.mlp_ratio * d / 3)) // 8)", ["test_models"]),
    ("python/dllm/models/config.py", '"small": dict(hidden=768, layers=12, heads=12, cond_dim=128)',
     '"small": dict(hidden=768, layers=12, heads=12, cond_dim=64)', ["test_models"]),
    ("python/dllm/models/dit.py", "nn.init.kaiming_uniform_(self.vocab_embed, a=math.sqrt(5))",
     "nn.init.normal_(self.vocab_embed, std=0.02)", ["test_models"]),
    # what a graph session is keyed by, option checks, units, shapes, and the e2e report's arithmetic
    ("python/dllm/sampling/cuda_graph.py", "key = (*key, None if generator is None else id(generator), ",
     "key = (*key, ", ["test_cuda_graph_replay"]),
    (GENERATE, "tuple(x.shape), start, attention_mask is None)", "tuple(x.shape), start)", ["test_cuda_graph_replay"]),
    (GENERATE, "              attention_mask is None, has_known)", "              attention_mask is None)",
     ["test_cuda_graph_replay"]),
    (OPTIONS, "        _check_sedd_options(dict(block_length=block_length, temperature=temperature))\n        return",
     "        return", [GEN]),
    (OPTIONS, "if not 0.0 <= threshold <= 1.0:", "if not 0.0 < threshold <= 1.0:", [GEN]),
    ("python/dllm/sampling/loop.py", "return [(b - a) * 1e3 for a, b in self._marks]",
     "return [(b - a) for a, b in self._marks]", [GEN]),
    (CANVAS, "attention_mask = None if attention_mask is None else attention_mask.expand(infill.shape[0], -1)",
     "pass", [GEN]),
    (CANVAS, "if t.numel() and (t.dtype == torch.bool", "if (t.dtype == torch.bool", [GEN]),
    ("python/dllm/sampling/model_protocol.py", "isinstance(m, torch.nn.modules.dropout._DropoutNd) and m.p > 0 for",
     "isinstance(m, torch.nn.modules.dropout._DropoutNd) for", [GEN]),
    ("python/dllm/sampling/model_protocol.py", "if logits.dim() != 3 or logits.shape[:2] != x.shape:",
     "if logits.dim() != 3:", [GEN]),
    ("python/dllm/ops/_sampling.py", "torch._check_value(top_k >= 0, lambda", "torch._check_value(True, lambda",
     ["test_op_contracts"]),
    ("python/dllm/ops/_sampling.py", "        if num_tokens < 0:\n", "        if num_tokens < -1:\n", ["test_op_contracts"]),
    ("python/dllm/benchmarks/e2e_verdict.py", "size = min(sum(counts), sum(ar_counts))", "size = sum(counts)",
     ["test_e2e_verdict"]),
    ("python/dllm/benchmarks/e2e.py", "steps = -(-steps // blocks) * blocks", "steps = max(blocks, steps // blocks * blocks)",
     ["test_e2e"]),
    ("python/dllm/training/evaluation.py", "values.std().item() / math.sqrt(values.numel())", "values.std().item()",
     ["test_e2e"]),
    ("python/dllm/benchmarks/e2e_report.py", "sign = 1 if higher_is_better else -1", "sign = 1", ["test_e2e"]),
    # a kept model's record, the graphs' scale_by_sigma, published configs' values, schedule ends, dtype names
    ("python/dllm/training/timed.py", '        if trained["seq_len"] < seq_len:', "        if False:", ["test_e2e"]),
    ("python/dllm/training/timed.py", '        if trained["seq_len"] < seq_len:', '        if trained["seq_len"] != seq_len:',
     ["test_e2e"]),
    ("python/dllm/training/timed.py", "        if held_out != val_fraction:", "        if False:", ["test_e2e"]),
    ("python/dllm/sedd/graphs.py",
     "        scale = self.scale_by_sigma if scale_by_sigma is None else scale_by_sigma\n        return ops.sedd_step",
     "        scale = self.scale_by_sigma\n        return ops.sedd_step", ["test_sedd_step"]),
    ("python/dllm/models/hub/llada.py", 'vocab_size=config.get("embedding_size") or config["vocab_size"]',
     'vocab_size=config["vocab_size"]', ["test_published_checkpoints"]),
    ("python/dllm/models/hub/llada.py", 'norm_eps=config.get("rms_norm_eps", 1e-5)', "norm_eps=1e-5",
     ["test_published_checkpoints"]),
    ("python/dllm/models/hub/llada.py", 'int(config["mlp_ratio"] * d)', 'int(config["mlp_ratio"]) * d',
     ["test_published_checkpoints"]),
    ("python/dllm/models/hub/dream.py", 'norm_eps=config.get("rms_norm_eps", 1e-6)', "norm_eps=1e-6",
     ["test_published_checkpoints"]),
    ("python/dllm/models/hub/sedd.py", 'max_seq_len=m["length"]', "max_seq_len=1024", ["test_published_checkpoints"]),
    ("python/dllm/models/hub/sedd.py", 'dropout=m.get("dropout", 0.0)', "dropout=0.0", ["test_published_checkpoints"]),
    ("python/dllm/sedd/schedules.py", "        if not 0 <= t <= 1:", "        if not 0 < t <= 1:", ["test_objectives"]),
    ("python/dllm/sedd/schedules.py", "        if not 0 < eps < 1:", "        if not 0 < eps <= 1:", ["test_objectives"]),
    ("python/dllm/models/io.py", 'dtype = DTYPES.get(dtype.removeprefix("torch."), dtype)',
     "dtype = DTYPES.get(dtype, dtype)", ["test_models"]),
    # the data pipeline and the sampling glue: a foreign tokenizer.json, the BPE cache key, hidden files,
    # a uniform SEDD folder's vocabulary, the KV-cache interface of a loaded folder, the callback's logits
    ("python/dllm/data/tokenizer.py", 'if tok.fingerprint != cfg["fingerprint"]:', "if False:", ["test_data"]),
    ("python/dllm/data/dataset.py", 'f"bpe-{corpus.hash[:16]}-{bpe_vocab_size}"', 'f"bpe-{bpe_vocab_size}"',
     ["test_data"]),
    ("python/dllm/data/corpus.py", 'if name.startswith("."):', 'if name.startswith(".env"):', ["test_data"]),
    ("python/dllm/sampling/pretrained.py", 'spare = 1 if name == "sedd" and objective.get("graph") == "uniform" else 0',
     "spare = 0", [GEN]),
    ("python/dllm/sampling/pretrained.py", "            self.new_kv_cache = model.new_kv_cache",
     "            pass", [GEN]),
    ("python/dllm/sampling/loop.py", "self.callback(self.step, x, logits)", "self.callback(self.step, x, None)", [GEN]),
    # the models' layers: the gated residual's norm eps, the denoising cache's refresh dtype and bounds, the
    # decoding cache's negative position, a tokenizer's 0/1 attention mask
    ("python/dllm/models/layers.py", "update.to(x.dtype), gate, self.weight, shift, scale, eps=self.eps)",
     "update.to(x.dtype), gate, self.weight, shift, scale)", ["test_layers"]),
    ("python/dllm/models/layers.py", "(layer not in self.k or self.k[layer].dtype != k.dtype)", "layer not in self.k",
     [KV]),
    ("python/dllm/models/layers.py", "if k.shape[0] != self.batch or start < 0 or end > self.length:",
     "if end > self.length:", [KV]),
    ("python/dllm/models/layers.py", "if not 0 <= position < self.max_len:", "if not position < self.max_len:",
     ["test_models"]),
    ("python/dllm/models/attention.py", "attention_mask.bool()[:, None, None, :]", "attention_mask[:, None, None, :]",
     ["test_models"]),
    # the op wrappers: varlen's two bounds, a zero commit probability, a learned sin table, the fake's top_p check
    ("python/dllm/ops/_attention.py", "cu_seqlens_q, cu_seqlens_k, max_seqlen_q,\n                   max_seqlen_k, scale)",
     "cu_seqlens_q, cu_seqlens_k, max_seqlen_k,\n                   max_seqlen_q, scale)", ["test_attention"]),
    ("python/dllm/ops/_sampling.py", "if not 0 <= prob <= 1:", "if not 0 < prob <= 1:", ["test_unmask"]),
    ("python/dllm/ops/_layers.py", "if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:", "if ctx.needs_input_grad[1]:",
     ["test_rotary"]),
    ("python/dllm/ops/_sampling.py", "torch._check_value(0.0 < top_p <= 1.0, lambda", "torch._check_value(True, lambda",
     ["test_op_contracts"]),
    # graph sessions: a key without cfg_scale, a model's buffers, a bool as a number option
    (GENERATE, "threshold, alg_temp, cfg_scale, cache,", "threshold, alg_temp, cache,", ["test_cuda_graph_replay"]),
    ("python/dllm/sampling/cuda_graph.py", "for t in (*model.parameters(), *model.buffers())))",
     "for t in model.parameters()))", ["test_cuda_graph_replay"]),
    (OPTIONS, "    if isinstance(value, bool) or not isinstance(value, kind):", "    if not isinstance(value, kind):",
     [GEN]),
    # the e2e report: speedups against another batch's baseline, the spread of unsorted times, the
    # smallest win quoted as the largest, CPU timings in seconds
    ("python/dllm/benchmarks/e2e.py", '== row["gen_length"]\n                      and r["batch"] == row["batch"])',
     '== row["gen_length"])', ["test_e2e"]),
    ("python/dllm/benchmarks/e2e.py", "        times = sorted(times)\n", "", ["test_e2e"]),
    ("python/dllm/benchmarks/e2e_verdict.py", "top = max(wins, key", "top = min(wins, key", ["test_e2e_verdict"]),
    ("python/dllm/benchmarks/common.py", "return (time.perf_counter() - t0) * 1e3", "return time.perf_counter() - t0",
     ["test_bench_scripts"]),
    # the stopped step written as the run stood after it, the replay not winding the streams back
    # between its passes, the anomaly's forward line outside dllm's package
    ("python/dllm/training/trainer.py", "save_checkpoint({**self.state_dict(), **self._step_start}, path)",
     "save_checkpoint(self.state_dict(), path)", ["test_replay"]),
    ("python/dllm/training/replay.py", "    trainer.restore_streams(state)\n", "", ["test_replay"]),
    ("python/dllm/training/replay.py", "frames[-1]", "frames[0]", ["test_replay"]),
    # SEDD's --noise dropped, bits per byte in nats, MDLM's time-conditioned network fed no sigma
    ("python/dllm/objectives/__init__.py", "SEDD(tokenizer, graph=graph, noise=noise)", "SEDD(tokenizer, graph=graph)",
     ["test_objectives"]),
    ("python/dllm/training/evaluation.py", '"val_bpb{suffix}": bits / bytes_per_token',
     '"val_bpb{suffix}": nats / bytes_per_token', ["test_training"]),
    (OBJECTIVES, "loss_at_masked(masked_diffusion_loss, model, x_t, sigma, self.mask_id, x0, dsigma",
     "loss_at_masked(masked_diffusion_loss, model, x_t, None, self.mask_id, x0, dsigma", ["test_objectives"]),
    # the demo's tokens/s in per-ms units, an MDLM folder's dropout dropped, a base class refusing its subclass's folder
    ("python/dllm/demo.py", "tokens / (statistics.median(t) * 1e-3)", "tokens / statistics.median(t)", ["test_cli"]),
    ("python/dllm/models/hub/mdlm.py", 'dropout=config.get("dropout", 0.0))', "dropout=0.0)",
     ["test_published_checkpoints"]),
    ("python/dllm/models/io.py", "not issubclass(saved, cls)", "saved is not cls", ["test_models"]),
    # one token cache for every tokenizer of a kind, the standard library's skipped folders skipped in
    # a user's corpus, every rank's bare 'cuda' on GPU 0
    ("python/dllm/data/dataset.py", "{corpus.hash[:16]}-{tok.fingerprint}-", "{corpus.hash[:16]}-{tok.kind}-",
     ["test_data"]),
    ("python/dllm/data/corpus.py", "(stdlib and d in _STDLIB_SKIP_DIRS)", "d in _STDLIB_SKIP_DIRS", ["test_data"]),
    ("python/dllm/devices.py", "index = local_rank if device.index is None else device.index",
     "index = device.index or 0", ["test_cli"]),
    # plain dream on another confidence rule, MDLM's last fill leaving unsure masks
    (OPTIONS, 'DEFAULT_VARIANT = {"llada": "low_confidence", "dream": "entropy"}',
     'DEFAULT_VARIANT = {"llada": "low_confidence", "dream": "maskgit_plus"}', [RULES]),
    (MASKED, "mask_id=mask_id, threshold=0.0)  # every one of them", "mask_id=mask_id, threshold=0.5)", [GEN]),
    # the benchmarks' claims: warm-up, the copy floor, spreads, the peers' work, the FLOPs and bytes counted
    ("bench/common.py", "warmup=max(0, warmup - 1), reps=reps)", "warmup=0, reps=reps)", ["test_bench_scripts"]),
    ("bench/common.py", "src = torch.full((nbytes // 2,), 7", "src = torch.full((nbytes,), 7", ["test_bench_scripts"]),
    ("bench/common.py", "    times = sorted(times)\n", "", ["test_bench_scripts"]),
    ("bench/train_step.py", "trainer(FullHead(copy.deepcopy(net)))", "trainer(copy.deepcopy(net))", ["test_bench_scripts"]),
    ("bench/train_step.py", "return 6.0 * per_token", "return 2.0 * per_token", ["test_bench_scripts"]),
    ("bench/sedd_step.py", "rows_read = int((x == k - 1).sum())", "rows_read = b * l", ["test_bench_scripts"]),
    ("bench/published_latency.py", "tokens_per_s = B * G /", "tokens_per_s = G /", ["test_bench_scripts"]),
    ("python/dllm/benchmarks/step_latency.py", "p = torch.softmax(logits.to(torch.float64), dim=-1)",
     "p = torch.softmax(logits, dim=-1)", ["test_bench_scripts"]),
    ("python/dllm/benchmarks/e2e.py", "if len(times) >= 5 else", "if len(times) > 5 else", ["test_e2e"]),
    ("python/dllm/benchmarks/e2e_verdict.py", '["speedup_vs_ar"] > 1]', '["speedup_vs_ar"] >= 1]', ["test_e2e_verdict"]),
    # the CPU ops' random streams, rules and input checks
    ("csrc/torch/unmask.cpp", "call.random = temperature > 0.0 || kind == Confidence::kRandom;",
     "call.random = temperature > 0.0;", ["test_unmask"]),
    ("csrc/torch/unmask.cpp", "call.random = p.rule == CommitRule::kProb || position_temperature > 0.0;",
     "call.random = p.rule == CommitRule::kProb;", ["test_unmask"]),
    ("csrc/kernels/predict_masked_cpu.cpp", "      if (p.temperature > 0.0f)\n", "      if (p.temperature > 0.0f || filtered)\n",
     ["test_unmask"]),
    ("csrc/kernels/predict_masked_cpu.cpp", "if (token_in < 0 || token_in >= vocab) note_error",
     "if (token_in >= vocab) note_error", ["test_unmask"]),
    ("csrc/torch/attention.h", 'return varlen ? "attention_varlen" : "attention";', 'return "attention";',
     ["test_attention"]),
    ("python/dllm/ops/_attention.py", 'return "attention_varlen" if varlen else "attention"', 'return "attention"',
     ["test_attention"]),
    ("csrc/kernels/commit_tokens_cpu.cpp", "if (start < 0 || start > end || end > L)", "if (start > end || end > L)",
     ["test_unmask"]),
    ("csrc/kernels/commit_tokens_cpu.cpp", "    if (std::isnan(conf[i])) return kNaNConfidence;\n", "", ["test_unmask"]),
    ("csrc/kernels/commit_tokens_cpu.cpp", "if (!(prob >= 0.0 && prob <= 1.0))", "if (prob < 0.0 || prob > 1.0)",
     ["test_unmask"]),
    ("csrc/torch/unmask.cpp", "mask_id >= 0 && mask_id < vocab", "mask_id < vocab", ["test_unmask"]),
    ("csrc/torch/attention.cpp", "t.ge(0).all().item<bool>() && ", "", ["test_attention"]),
    ("csrc/torch/rotary.cpp", "call.cos = cos.contiguous();", "call.cos = cos;", ["test_rotary"]),
    ("python/dllm/ops/_sedd.py", "    return logits.new_empty(logits.shape[:1], dtype=torch.float32)\n\n",
     "    return logits.new_empty(logits.shape[:1])\n\n", ["test_sedd_losses"]),
    # checkpoints, EMA, the metrics log, model folders and devices
    ("python/dllm/training/checkpoint.py", 'map_location="cpu", weights_only=True)', 'map_location="cpu", weights_only=False)',
     ["test_training"]),
    ("python/dllm/training/trainer.py", 'if s["tokenizer"]["fingerprint"] != data.tokenizer.fingerprint:', "if False:",
     ["test_training"]),
    ("python/dllm/training/ema.py", "        try:\n            yield\n        finally:\n", "        yield\n        if True:\n",
     ["test_training"]),
    ("python/dllm/training/metrics.py", "if i == len(lines) - 1:", "if True:", ["test_training"]),
    ("python/dllm/training/trainer.py", '"bits_per_token": last["nll_per_token"] / math.log(2),',
     '"bits_per_token": last["nll_per_token"],', ["test_training"]),
    ("python/dllm/models/io.py", "model = from_pretrained(directory, map_location=map_location, dtype=dtype)",
     "model = from_pretrained(directory, map_location=map_location)", ["test_models"]),
    ("python/dllm/models/hub/layout.py", "if config.get(k) is not None and config[k] != v}", "if config.get(k) and config[k] != v}",
     ["test_published_checkpoints"]),
    ("python/dllm/devices.py", 'if device.type != "cuda":', "if False:", ["test_cli"]),
    # the command line, the demo, the SEDD and unmasking references, the graphs and schedules, the data
    ("python/dllm/eval_cli.py", 'tokenizer="byte" if tok.kind == "byte" else str(model_dir / "tokenizer.json")',
     'tokenizer="byte"', ["test_cli"]),
    ("python/dllm/demo.py", "retrain=retrain, log_prefix", "retrain=False, log_prefix", ["test_cli"]),
    ("python/dllm/sample_cli.py", "temperature=temperature, generator=g,", "generator=g,", ["test_cli"]),
    ("python/dllm/sample_cli.py", "block_length=block_length, cache=cache, cuda_graph", "block_length=block_length, cache=None, cuda_graph",
     ["test_cli"]),
    ("python/dllm/sample_cli.py", '"dream": "dream"}', '"dream": "llada"}', ["test_cli"]),
    ("python/dllm/cli.py", "ns.retrain, ns.seed, ns.tokenizer", "ns.retrain, 0, ns.tokenizer", ["test_cli"]),
    ("python/dllm/cli.py", "ns.gen_length % 8", "ns.gen_length % 16", ["test_cli"]),
    ("python/dllm/cli.py", "basicConfig(level=logging.INFO", "basicConfig(level=logging.WARNING", ["test_cli"]),
    ("python/dllm/cli.py", 'if int(os.environ.get("RANK", "0")) == 0:', "if True:", ["test_cli"]),
    ("python/dllm/eval_cli.py", '"step": config.get("step")', '"step": cfg.steps', ["test_cli"]),
    ("python/dllm/sedd/reference.py", "return (probs / (-torch.log1p(-u))", "return (probs * (-torch.log1p(-u))",
     ["test_sedd_step"]),
    ("python/dllm/sedd/reference.py", "generator=generator) < move_p", "generator=generator) > move_p",
     ["test_sample_transition"]),
    ("python/dllm/sedd/graphs.py", 'method: str = "analytic", scale_by_sigma', 'method: str = "euler", scale_by_sigma',
     ["test_sedd_step"]),
    ("python/dllm/reference/attention.py", "        vf = vf.masked_fill(~keep[:, None, :, None], 0)", "        pass",
     ["test_attention"]),
    ("python/dllm/reference/unmask.py", "    z = logits.double().clone()\n    z[..., mask_id] = float(\"-inf\")\n    return",
     "    z = logits.double()\n    z[..., mask_id] = float(\"-inf\")\n    return", ["test_unmask"]),
    ("python/dllm/sedd/graphs.py", "        n = operator.index(vocab_size)", "        n = int(vocab_size)", ["test_objectives"]),
    ("python/dllm/sedd/schedules.py", "if not (value > 0 and math.isfinite(value)):", "if not (value >= 0 and math.isfinite(value)):",
     ["test_objectives"]),
    ("python/dllm/sedd/schedules.py", "if not sigma_max > sigma_min:", "if not sigma_max >= sigma_min:", ["test_objectives"]),
    ("python/dllm/unmask_schedule.py", "    if masked.dim() != 1:", "    if masked.dim() == 0:", ["test_unmask"]),
    ("python/dllm/data/tokenizer.py", "initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),", "", ["test_data"]),
    ("python/dllm/data/corpus.py", "side[rel] = train if k == len(text) else val if k == 0 else None",
     "side[rel] = train if k == len(text) else val", ["test_data"]),
    ("python/dllm/data/corpus.py", "total = sum(len(t) for _, t in unique)", "total = sum(len(t) for _, t in docs)", ["test_data"]),
    ("python/dllm/data/dataset.py", 'f"bpe-{corpus.hash[:16]}-{bpe_vocab_size}"', 'f"bpe-{corpus.hash[:16]}"', ["test_data"]),
    ("python/dllm/data/tokenizer.py", "encode_batch(texts, add_special_tokens=False)", "encode_batch(texts)", ["test_data"]),
    ("python/dllm/data/corpus.py", 'stdlib = path is None or str(path) == "stdlib"', "stdlib = path is None", ["test_data"]),
    ("python/dllm/data/dataset.py", "range(0, len(texts), 64)", "range(0, len(texts), 65)", ["test_data"]),
    ("python/dllm/data/tokenizer.py", "show_progress=progress,", "show_progress=True,", ["test_data"]),
    ("python/dllm/data/dataset.py", "except (OSError, ValueError, KeyError, TypeError):", "except (OSError, ValueError):",
     ["test_data"]),
    ("python/dllm/data/corpus.py", 'if b"\\x00" in raw[:8192]:', 'if b"\\x00" in raw[:4096]:', ["test_data"]),
    # published checkpoints' loaders and the model config
    ("python/dllm/models/hub/llada.py", "input_emb_norm=False, scale_logits=False,", "input_emb_norm=False,", ["test_published_checkpoints"]),
    ("python/dllm/models/hub/llada.py", "multi_query_attention=False, clip_qkv=None)", "multi_query_attention=False)", ["test_published_checkpoints"]),
    ("python/dllm/models/hub/dream.py", "use_sliding_window=False,\n            rope_scaling=None)", "use_sliding_window=False)",
     ["test_published_checkpoints"]),
    ("python/dllm/models/hub/loader.py", "expected = Rotary(cfg.head_dim, cfg.rope_base).frequencies()",
     "expected = Rotary(cfg.head_dim).frequencies()", ["test_published_checkpoints"]),
    ("python/dllm/models/hub/sedd.py", "schedule = LogLinear()", "schedule = LogLinear(float(noise.get('sigma_min', 1e-3)))",
     ["test_published_checkpoints"]),
    ("python/dllm/models/hub/loader.py", 'for name in ("mask_id", "pad_id", "eos_id"):', 'for name in ("pad_id", "eos_id"):',
     ["test_published_checkpoints"]),
    ("python/dllm/models/hub/loader.py", "with_added_tokens=True", "with_added_tokens=False", ["test_published_checkpoints"]),
    ("python/dllm/sampling/pretrained.py", 'get_noise(noise.pop("type"), **noise)', 'get_noise(noise.pop("type"))',
     ["test_generate"]),
    ("python/dllm/models/hub/weights.py", "(SAFETENSORS, TORCH_BIN)", "(TORCH_BIN, SAFETENSORS)", ["test_published_checkpoints"]),
    ("python/dllm/models/hub/weights.py", "if absent:", "if False:", ["test_published_checkpoints"]),
    ("python/dllm/models/hub/loader.py", "index.get(key) != path.name", "key not in index", ["test_published_checkpoints"]),
    ("python/dllm/models/hub/layout.py", 'if key != "eos_token_id" or not from_config:', 'if key != "eos_token_id":', ["test_published_checkpoints"]),
    ("python/dllm/models/config.py", "if not 0 < getattr(self, name) < math.inf:", "if not 0 < getattr(self, name):",
     ["test_models"]),
    ("python/dllm/models/config.py", '("qkv_bias", "time_conditioning")', '("time_conditioning",)', ["test_models"]),
    ("python/dllm/models/config.py", "0 <= self.dropout < 1", "self.dropout < 1", ["test_models"]),
    ("python/dllm/models/config.py", 'if self.time_conditioning and self.arch != "dit":',
     'if self.time_conditioning and self.arch == "llada":', ["test_models"]),
    # the autoregressive loss, the objectives' registry and bound, the training config, validation
    ("python/dllm/objectives/next_token.py", "safe = targets.masked_fill(ignored, 0)", "safe = targets.clamp(min=0)",
     ["test_next_token_nll"]),
    ("python/dllm/training/config.py", '"bpe_vocab_size", "lr")', '"bpe_vocab_size")', ["test_training"]),
    ("python/dllm/training/config.py", 'not_negative = ("max_time", "warmup",', 'not_negative = ("max_time",', ["test_training"]),
    ("python/dllm/training/config.py", "isinstance(value, numbers.Real) and not isinstance(value, bool) if kind is float",
     "isinstance(value, numbers.Real) if kind is float", ["test_training"]),
    ("python/dllm/training/config.py", "not 0 <= self.random_length <= 1", "not 0 < self.random_length <= 1",
     ["test_training"]),
    ("python/dllm/training/config.py", "            if kind is float:\n                setattr(self, f.name, float(value))\n",
     "            if False:\n                pass\n", ["test_training"]),
    ("python/dllm/objectives/base.py", "m[:, 0].clamp_min(1e-12)", "m[:, 0].clamp_min(1e-3)", ["test_objectives"]),
    ("python/dllm/objectives/__init__.py", "if name not in OBJECTIVES:", "if False:", ["test_objectives"]),
    ("python/dllm/training/evaluation.py", "disable=not progress,", "disable=False,", ["test_training"]),
    # the denoising KV cache's refresh and graphed writes; the DiT's identity init, logits_at's order;
    # the autoregressive model's prompt checks and copy
    ("python/dllm/models/layers.py", "if start == 0 and end == self.length and (layer", "if end == self.length and (layer",
     ["test_kv_cache"]),
    ("python/dllm/models/layers.py", "device=k.device))\n            self.k[layer].index_copy_(1, index, "
     "k.to(self.k[layer].dtype))", "device=k.device))\n            self.k[layer].index_copy_(1, index, k)",
     ["test_kv_cache"]),
    ("python/dllm/models/dit.py", "        nn.init.zeros_(self.adaLN_modulation.weight)\n", "", ["test_models"]),
    ("python/dllm/models/dit.py", "x.reshape(-1, x.shape[-1]).index_select(0, logits_at)",
     "x.reshape(-1, x.shape[-1])[logits_at.sort().values]", ["test_models"]),
    ("python/dllm/models/dit.py", "if not 0 <= lo <= hi < self.config.vocab_size:", "if not lo <= hi < self.config.vocab_size:",
     ["test_models"]),
    ("python/dllm/models/dit.py", "            return prompt.clone()", "            return prompt", ["test_models"]),
    ("python/dllm/models/dit.py", "if isinstance(max_new_tokens, bool) or not isinstance(", "if not isinstance(",
     ["test_models"]),
    # the training step: its learning rate's step, the clip, DDP's all-reduce under accumulation,
    # autocast, the EMA after the step; validation in eval mode and under autocast; a resume's
    # training seconds; a second Ctrl-C; the replay's float32 variant
    ("python/dllm/training/trainer.py", "lr = lr_at(cfg, self.step)", "lr = lr_at(cfg, self.step + 1)", ["test_training"]),
    ("python/dllm/training/trainer.py", "if cfg.grad_clip > 0:", "if False:", ["test_training"]),
    ("python/dllm/training/trainer.py", "i == cfg.grad_accum - 1 else", "i == 0 else", ["test_training"]),
    ("python/dllm/training/trainer.py", "                with self.amp, self._sdpa_backends():\n",
     "                with self._sdpa_backends():\n", ["test_training"]),
    # a step retaken without cuDNN's SDPA from where the failed take left the data order and noise
    ("python/dllm/training/trainer.py", "        self.restore_streams(self._step_start)\n        self.sdpa_without", "        self.sdpa_without",
     ["test_replay"]),
    ("python/dllm/training/trainer.py", "        self.opt.step()\n        self.opt.zero_grad(set_to_none=True)\n"
     "        if self.ema is not None:\n            self.ema.update()\n",
     "        if self.ema is not None:\n            self.ema.update()\n        self.opt.step()\n"
     "        self.opt.zero_grad(set_to_none=True)\n", ["test_training"]),
    ("python/dllm/training/trainer.py", "        model.eval()\n        out = {}\n", "        out = {}\n", ["test_training"]),
    ("python/dllm/training/trainer.py", "device=self.device, amp=self.amp)", "device=self.device)", ["test_training"]),
    ("python/dllm/training/trainer.py", "    if step < cfg.warmup:", "    if step < cfg.warmup and cfg.schedule == \"cosine\":",
     ["test_training"]),
    ("python/dllm/training/trainer.py", "self.train_time, self.elapsed = s[\"train_time\"], s[\"elapsed\"]",
     "self.elapsed = s[\"elapsed\"]", ["test_training"]),
    ("python/dllm/training/trainer.py", "            self.train_time += dt", "            self.train_time = dt", ["test_training"]),
    ("python/dllm/training/trainer.py", "        self.requested = True\n        signal.signal(signal.SIGINT, self.previous or "
     "signal.default_int_handler)\n", "        self.requested = True\n", ["test_training"]),
    ("python/dllm/training/replay.py", "    if not keep_precision:", "    if keep_precision:", ["test_replay"]),
    # the ops' fake checks where the CPU kernel checks (meta tensors, torch.compile), the attention
    # wrapper's scale and kernel choice, rotary's second derivative
    ("python/dllm/ops/_sedd.py", 'method in ("analytic", "euler", "denoise")', 'method in ("analytic", "euler")', ["test_sedd_step"]),
    ("python/dllm/ops/_attention.py", "valid = 0 < softmax_scale < math.inf", "valid = 0 <= softmax_scale < math.inf", ["test_attention"]),
    ("python/dllm/ops/_layers.py", "grad, cos, sin, not ctx.inverse)", "grad, cos, sin, True)", ["test_rotary"]),
    ("python/dllm/ops/_sampling.py", "(logits_shift <= 1 or _may(logits_shift < length))", "_may(logits_shift < length)",
     ["test_unmask"]),
    ("python/dllm/ops/_attention.py", "q.dtype in (torch.bfloat16, torch.float16) and q.shape[-1]",
     "q.dtype in (torch.float32, torch.bfloat16, torch.float16) and q.shape[-1]",
     ["test_attention"]),
    ("python/dllm/ops/_sampling.py", "torch._check_value(not math.isnan(threshold), lambda", "torch._check_value(True, lambda",
     ["test_op_contracts"]),
    ("python/dllm/ops/_sampling.py", "torch._check_value(position_temperature == 0.0 or num_tokens is not None,",
     "torch._check_value(True,", ["test_op_contracts"]),
    ("python/dllm/ops/_sedd.py", "_may(logits.shape[2] >= 2)", "_may(logits.shape[2] >= 1)", ["test_sedd_step"]),
    ("python/dllm/ops/_sedd.py", "        _check_floating(op, t, name)\n", "", ["test_sedd_step"]),
    ("python/dllm/ops/_sampling.py", 'torch._check_value(confidence_from in ("model", "proposal"),', "torch._check_value(True,",
     ["test_unmask"]),
    ("python/dllm/ops/_sedd.py", "2 <= num_classes < 2**31,", "2 <= num_classes <= 2**31,", ["test_sample_transition"]),
    # the benchmarks' printed claims: the speedup column, the floors and their dtype, tokens/s,
    # the shapes and defaults they take, the e2e verdict's noise test, the reports' command line
    ("bench/common.py", 'speedup = f"{r.ratio_vs_dllm:.2f}x"', 'speedup = f"{1 / r.ratio_vs_dllm:.2f}x"',
     ["test_bench_scripts"]),
    ("bench/common.py", 'meta["floor_gbps"] == meta["floor_gbps"] or "matmul_tflops" in meta',
     'meta["floor_gbps"] == meta["floor_gbps"]', ["test_bench_scripts"]),
    ("bench/common.py", "min(shape) <= 0:", "min(shape) < 0:", ["test_bench_scripts"]),
    ("bench/common.py", '"--dtype", default="bf16"', '"--dtype", default="fp16"', ["test_bench_scripts"]),
    ("bench/common.py", 'cached = "" if "sms" in meta else', 'cached = "" if "sms" not in meta else', ["test_bench_scripts"]),
    ("bench/train_step.py", 'r.note = f"{b * length / (r.median_ms', 'r.note = f"{length / (r.median_ms', ["test_bench_scripts"]),
    ("bench/vocab_head.py", "peak, copy_gbps = matmul_tflops(device, dtype)", "peak, copy_gbps = matmul_tflops(device, torch.bfloat16)",
     ["test_bench_scripts"]),
    ("bench/train_summary.py", '(x["tokens"] - p["tokens"]) / x["tok_per_s"]', 'x["tokens"] / x["tok_per_s"]',
     ["test_bench_scripts"]),
    ("bench/published_latency.py", "args.steps if args.steps is not None else G,", "args.steps if args.steps is not None else P,",
     ["test_bench_scripts"]),
    ("bench/attention_decode.py", "if not 0 < n <= C or H % Hkv:", "if not 0 < n < C or H % Hkv:", ["test_bench_scripts"]),
    ("python/dllm/benchmarks/e2e_verdict.py", 'return row["spread_ms"][1] < ar["spread_ms"][0]',
     'return row["spread_ms"][0] < ar["spread_ms"][0]', ["test_e2e_verdict"]),
    ("python/dllm/benchmarks/step_latency.py", "need, free = weights * dtype.itemsize,", "need, free = weights * 4,", ["test_cli"]),
    ("python/dllm/benchmarks/common.py", 'head = ["python", "-m", "dllm.cli"]', 'head = ["python", "-m", "dllm"]', ["test_cli"]),
    # graphed sessions under autocast with one generator, a SEDD graph's kind; guidance outside llada
    ("python/dllm/sampling/cuda_graph.py", 'if torch.is_autocast_enabled("cuda") or torch.is_autocast_enabled("cpu") or not',
     "if not", ["test_cuda_graph_replay"]),
    (GENERATE, 'config = ("sedd-" + method, graph.name, graph.num_classes,',
     'config = ("sedd-" + method, graph.num_classes,', ["test_cuda_graph_replay"]),
    (OPTIONS, 'if cfg_scale and name != "llada":', "if False:", ["test_generate"]),
    # the e2e report's samples with the prompt left in, infill holes read a token early and
    # judged against the def line, fast-dllm's NLL as a 1-step bound, llada's infill as mdlm's, the
    # baseline of the first length judging every length, the held-out text's row over whole files or every
    # file, its parse rate and parseable prefix swapped, one NLL window in 16 skipped
    (E2E, "return out.sequences[:, prompt.shape[1]:], out.nfe", "return out.sequences[:, 1:], out.nfe", ["test_e2e"]),
    # the prompts: a file's first tokens instead of its last, every call's rows after the first prompts, a
    # baseline trained beside a given model at --size's shape
    (E2E, "tails.append(ids[-PROMPT_TOKENS:] + [tok.eos_id])", "tails.append(ids[:PROMPT_TOKENS] + [tok.eos_id])",
     ["test_e2e"]),
    (E2E, "min(chunk, samples - lo), g, first=lo)", "min(chunk, samples - lo), g)", ["test_e2e"]),
    (E2E, '_size_and_shape(read_config(given)["model"], ns.size) if given else (ns.size, None)', "(ns.size, None)",
     ["test_e2e"]),
    (E2E, "hole = out.sequences[0, len(task.before):len(task.before) + n]",
     "hole = out.sequences[0, len(task.before) - 1:len(task.before) + n - 1]", ["test_e2e"]),
    (E2E, '"infill_exact": exact_match(fills, [t.body_text for t in tasks])',
     '"infill_exact": exact_match(fills, [t.header_text for t in tasks])', ["test_e2e"]),
    (E2E, 'bound_steps = None if sampler == "fast-dllm" else steps', "bound_steps = steps", ["test_e2e"]),
    (E2E, "_infill_quality(runner, tasks, model, sampler, frac)\n",
     "infill_cache.get((model, frac)) or _infill_quality(runner, tasks, model, sampler, frac)\n"
     "            infill_cache[model, frac] = infill_cache[model, sampler, frac]\n", ["test_e2e"]),
    ("python/dllm/benchmarks/e2e_verdict.py", 'ar_quality = quality[ar["sampler"], length, ar["fraction"]]',
     'ar_quality = quality[ar["sampler"], results["quality"][0]["gen_length"], ar["fraction"]]', ["test_e2e_verdict"]),
    (E2E, "[int(i) for i in tok.encode(text)[:length]] + [tok.eos_id]", "[int(i) for i in tok.encode(text)] + [tok.eos_id]",
     ["test_e2e"]),
    (E2E, "files = val_files[:count]", "files = val_files", ["test_e2e"]),
    ("python/dllm/benchmarks/e2e_report.py", "f\"{_f(data['parse_rate'], 2)} | {_f(data['blank_rate'], 2)} | {_f(data['parse_prefix'], 2)} | \"",
     "f\"{_f(data['parse_prefix'], 2)} | {_f(data['blank_rate'], 2)} | {_f(data['parse_rate'], 2)} | \"", ["test_e2e"]),
    (E2E, "rows = slice(lo, min(n, lo + 16))", "rows = slice(lo, min(n, lo + 15))", ["test_e2e"]),
    # a cut-short sweep: what it takes up from partial.json, and what tells another sweep's file apart
    (E2E_PARTIAL, 'saved.get("sweep") != identity', "False", ["test_e2e"]),
    (E2E_PARTIAL, "f.stat().st_size, f.stat().st_mtime_ns]", "f.stat().st_size]", ["test_e2e"]),
    (E2E_PARTIAL, 'self.timed = {(i, batch): row for i, batch, row in saved["timed"]}', "self.timed = {}", ["test_e2e"]),
]


def build(tree: Path) -> dict:
    """A CPU-only build of the worktree, its extension and build stamps linked into the sources, so
    that the tests import the worktree's Python files with the worktree's kernels. (The install into
    site/ is how pip drives the CMake build into the tree's build folder; that copy goes unused.)"""
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-build-isolation", "--no-deps", "--target",
                    str(tree / "site"), str(tree)], env=dict(os.environ, DLLM_CUDA="OFF"), check=True)
    build_dir = _build_dir(tree)
    for built in [*build_dir.glob("_C*.so"), build_dir / "_build_commit.py", build_dir / "_build_config.py"]:
        (tree / "python" / "dllm" / built.name).symlink_to(built)
    return dict(os.environ, PYTHONPATH=str(tree / "python"))


def _build_dir(tree: Path) -> Path:
    return Path(glob.glob(str(tree / "build" / "*" / "build.ninja"))[0]).parent


def rebuild(tree: Path, path: str) -> None:
    if path.startswith("csrc/"):
        subprocess.run(["ninja", "-C", str(_build_dir(tree))], check=True, capture_output=True)


if __name__ == "__main__":
    from mutation import run_mutants, selected_indices

    sys.exit(run_mutants(MUTANTS, selected_indices(sys.argv[1:], len(MUTANTS), __doc__), prepare=build, rebuild=rebuild,
                         pytest_args=lambda modules: [f"tests/{m}.py" for m in modules]))
