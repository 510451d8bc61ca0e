"""The e2e report's answer: where is the diffusion model faster than the autoregressive baseline at
equal quality, by how much, and where is it not.

Equal quality is judged on the task that tokens/s times: unconditional samples of the generation
length. A diffusion point matches the baseline when it is worse on none of these by more than the
noise of a few dozen samples:
- parse rate: the baseline's rate minus the point's is at most two standard errors of that
  difference (Agresti-Caffo: one success and one failure added to each side, for the difference and
  for its error alike, so that rates of 0 or 1 still carry an error);
- parseable prefix: the same, with the standard errors of the per-sample values;
- tokens written (before the first end-of-text): the same. Tokens/s counts every generated token,
  and the other metrics judge the text before the end-of-text alone, so a point that parses as well
  while writing less text would otherwise be credited for tokens nobody reads (results written
  before 2026-12-07 do not hold it);
- token entropy: at least the baseline's minus ``ENTROPY_SLACK_BITS``. A sampler that repeats safe
  tokens (whitespace, a greedy loop) raises parse rates while its entropy collapses, so a point below
  this is not of equal quality whatever it parses. Both are taken at the smaller one's token count
  (:func:`~dllm.benchmarks.code_quality.rarefied_entropy`): samples cut at an early end-of-text hold
  fewer tokens, on which plug-in entropy reads low.
The validation NLL is shown beside but not judged: the diffusion figure is an upper bound on its NLL
(the T-step ELBO), the baseline's is exact, and it does not depend on the sampler.
Speed is judged on the latency spreads the rows carry: a point of equal quality is faster only when
its slow end (p80, or the slowest of fewer than five calls) beats the baseline's fast end; a faster
median whose spread overlaps the baseline's is reported as within timing noise.
When the baseline's own parseable prefix is within two standard errors of zero, both models sit at
the metric's floor and a match says nothing about quality; the verdict says so. For scale it also
gives the parseable prefix of the held-out files' own first tokens at each length.
"""

from __future__ import annotations

import math

from .code_quality import rarefied_entropy

ENTROPY_SLACK_BITS = 0.5
Z = 2.0  # standard errors a shortfall must exceed to count


def _rate_shortfall(p_ar: float, p: float, n_ar: int, n: int) -> tuple[float, float]:
    """Agresti-Caffo (2000) for two rates over n_ar and n samples: the difference of the adjusted rates
    ``(x + 1) / (n + 2)`` and its standard error. The interval is centred on the adjusted difference, not
    on the raw one: at 8/32 against 2/32 the raw difference (0.1875) exceeds two errors (0.180), the
    adjusted one (0.176) does not."""
    a, b = (p_ar * n_ar + 1) / (n_ar + 2), (p * n + 1) / (n + 2)
    return a - b, math.sqrt(a * (1 - a) / (n_ar + 2) + b * (1 - b) / (n + 2))


def quality_shortfalls(point: dict, ar: dict) -> list[str]:
    """Why ``point`` (a quality row) is of lower quality than ``ar`` (the baseline's row at the same
    length), as short phrases; empty when it is of equal quality."""
    out = []
    gap, se = _rate_shortfall(ar["parse_rate"], point["parse_rate"], ar["samples"], point["samples"])
    if gap > Z * se:
        out.append(f"parse rate {point['parse_rate']:.2f} < {ar['parse_rate']:.2f}")
    gap = ar["parse_prefix"] - point["parse_prefix"]
    if gap > Z * math.hypot(ar["parse_prefix_se"], point["parse_prefix_se"]):
        out.append(f"parseable prefix {point['parse_prefix']:.2f} < {ar['parse_prefix']:.2f}")
    if "written" in point and "written" in ar:
        gap = ar["written"] - point["written"]
        if gap > Z * math.hypot(ar["written_se"], point["written_se"]):
            out.append(f"tokens written {point['written']:.0f} < {ar['written']:.0f}")
    collapsed = entropy_shortfall(point, ar)
    return out + ([collapsed] if collapsed else [])


def entropy_shortfall(point: dict, ar: dict) -> str | None:
    """Why ``point``'s token entropy is too far below the baseline's (a collapsed sampler), or None."""
    entropy, ar_entropy, at = _entropies_at_equal_counts(point, ar)
    if entropy < ar_entropy - ENTROPY_SLACK_BITS:
        return f"entropy {entropy:.2f} < {ar_entropy:.2f} - {ENTROPY_SLACK_BITS:g} bits{at}"
    return None


def _entropies_at_equal_counts(point: dict, ar: dict) -> tuple[float, float, str]:
    """Both rows' token entropies at the smaller one's token count, and a note saying so; the plug-in
    values of rows without ``token_counts`` (results written before 2026-12-02) or without tokens."""
    counts, ar_counts = point.get("token_counts"), ar.get("token_counts")
    if not counts or not ar_counts:
        return point["entropy"], ar["entropy"], ""
    size = min(sum(counts), sum(ar_counts))
    return rarefied_entropy(counts, size), rarefied_entropy(ar_counts, size), f" (at {size} tokens)"


def at_floor(ar: dict) -> bool:
    """Whether the baseline's samples are indistinguishable from no code at all (so too with one sample,
    whose standard error is NaN: nothing tells it from zero, and ``prefix <= 2 * NaN`` would say no)."""
    return not ar["parse_prefix"] > Z * ar["parse_prefix_se"]


def clear_of_noise(row: dict, ar: dict) -> bool:
    """Whether ``row``'s slowest typical call beats the baseline's fastest (results written before
    the rows kept their spreads: the medians alone decide)."""
    if "spread_ms" not in row or "spread_ms" not in ar:
        return True
    return row["spread_ms"][1] < ar["spread_ms"][0]


def _point(row: dict, ar: dict, short_of: list[str] | None = None) -> dict:
    out = {k: row[k] for k in ("sampler", "steps", "nfe", "tokens_per_s", "speedup_vs_ar")}
    out["clear_of_noise"] = clear_of_noise(row, ar)
    if short_of is not None:
        out["short_of"] = short_of
    return out


def verdicts(results: dict) -> list[dict]:
    """One verdict per (generation length, batch) of the throughput rows: the baseline's tokens/s, the
    fastest diffusion point of equal quality that beats the baseline beyond timing noise, else the
    fastest of equal quality (None if no point matched), and the fastest diffusion point whatever its
    quality, with its shortfalls."""
    quality = {(r["sampler"], r["gen_length"], r["fraction"]): r for r in results["quality"]}
    out = []
    groups = dict.fromkeys((r["gen_length"], r["batch"]) for r in results["throughput"])
    for length, batch in groups:
        rows = [r for r in results["throughput"] if r["gen_length"] == length and r["batch"] == batch]
        ar = next(r for r in rows if r["model"] == "autoregressive")
        ar_quality = quality[ar["sampler"], length, ar["fraction"]]
        diffusion = sorted((r for r in rows if r is not ar), key=lambda r: -r["tokens_per_s"])
        shortfalls = [quality_shortfalls(quality[r["sampler"], length, r["fraction"]], ar_quality) for r in diffusion]
        equal = [r for r, s in zip(diffusion, shortfalls) if not s]
        # a faster median with a slow tail must not hide a slightly slower point that clearly wins
        clear_wins = [r for r in equal if r["tokens_per_s"] > ar["tokens_per_s"] and clear_of_noise(r, ar)]
        best = (clear_wins or equal)[:1]
        data = results.get("meta", {}).get("reference", {}).get(str(length))  # none in results before 2026-12-05
        out.append({"gen_length": length, "batch": batch, "ar_tokens_per_s": ar["tokens_per_s"],
                    "at_floor": at_floor(ar_quality), "ar_parse_prefix": ar_quality["parse_prefix"],
                    "data_parse_prefix": data["parse_prefix"] if data else None,
                    "best_equal_quality": _point(best[0], ar) if best else None,
                    "fastest": _point(diffusion[0], ar, shortfalls[0]) if diffusion else None})
    return out


def _describe(p: dict) -> str:
    steps = f"{p['nfe']:.0f} network calls, adaptive" if p["sampler"] == "fast-dllm" else f"{p['steps']} steps"
    return f"{p['sampler']}, {steps}"


def summary(found: list[dict]) -> list[str]:
    """The answer in sentences, then a table with a row per (length, batch)."""
    ahead = [v for v in found if v["best_equal_quality"] and v["best_equal_quality"]["speedup_vs_ar"] > 1]
    # where the baseline writes no code, equal quality says nothing: such a point is no win
    floor_ahead = [v for v in ahead if v["at_floor"]]
    wins = [v for v in ahead if v["best_equal_quality"].get("clear_of_noise", True) and v not in floor_ahead]
    noisy = [v for v in ahead if v not in wins and v not in floor_ahead]
    losses = [v for v in found if v not in ahead]

    def where(vs):
        return ", ".join(f"L {v['gen_length']} B {v['batch']}" for v in vs)

    lines = []
    if wins:
        top = max(wins, key=lambda v: v["best_equal_quality"]["speedup_vs_ar"])
        b = top["best_equal_quality"]
        lines.append(f"At equal quality (no shortfall beyond {Z:g} standard errors) the diffusion model is faster at "
                     f"{len(wins)} of {len(found)} (length, batch) points: {where(wins)}; by up to "
                     f"{b['speedup_vs_ar']:.2f}x ({_describe(b)}, at L {top['gen_length']} B {top['batch']}).")
    else:
        lines.append(f"At equal quality (no shortfall beyond {Z:g} standard errors) the diffusion model is faster at "
                     f"none of the {len(found)} (length, batch) points.")
    if noisy:
        lines.append(f"At {where(noisy)} its median is faster but its latency spread overlaps the baseline's: "
                     "within timing noise (more --reps may tell).")
    if losses:
        lines.append(f"It is not faster at: {where(losses)}.")
    floor = [v for v in found if v["at_floor"]]
    if floor:
        lines.append(f"At {where(floor)} the baseline's own samples are at the floor of the parseable prefix "
                     "(within two standard errors of no code), so equal quality there only means both models "
                     "write no code" + (f" (a faster point there, {where(floor_ahead)}, counts as no win)"
                                        if floor_ahead else "") +
                     ": train longer (--minutes and --train-steps) for an answer.")
    scale = {v["gen_length"]: v for v in found if v.get("data_parse_prefix") is not None}
    if scale:
        lines.append("For scale, the parseable prefix of the held-out files' own first tokens against the baseline's "
                     "samples: " + ", ".join(f"{v['data_parse_prefix']:.2f} against {v['ar_parse_prefix']:.2f} at L "
                                             f"{length}" for length, v in scale.items()) + ".")
    lines += ["", "| length | batch | AR tokens/s | fastest diffusion point of equal quality | tokens/s | vs AR | "
              "fastest diffusion point | vs AR | its shortfall |", "|---|---|---|---|---|---|---|---|---|"]
    for v in found:
        b, f = v["best_equal_quality"], v["fastest"]
        mark = (" (floor)" if v["at_floor"] else
                "" if b is None or b.get("clear_of_noise", True) or b["speedup_vs_ar"] <= 1 else " (noise)")
        best = f"{_describe(b)} | {b['tokens_per_s']:,.0f} | {b['speedup_vs_ar']:.2f}x{mark}" if b else "none | - | -"
        fastest = (f"{_describe(f)} | {f['speedup_vs_ar']:.2f}x | {'; '.join(f['short_of']) or 'none'}" if f
                   else "- | - | -")
        lines.append(f"| {v['gen_length']} | {v['batch']} | {v['ar_tokens_per_s']:,.0f} | {best} | {fastest} |")
    return lines + [""]
