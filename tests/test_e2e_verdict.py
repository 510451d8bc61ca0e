"""The e2e report's verdict: which diffusion points match the baseline's quality, and the fastest of them."""

from __future__ import annotations

import itertools
import json
import math
import random
from collections import Counter
from pathlib import Path

import pytest

from dllm.benchmarks.code_quality import rarefied_entropy, unigram_entropy
from dllm.benchmarks.e2e_verdict import (ENTROPY_SLACK_BITS, at_floor, clear_of_noise, quality_shortfalls, summary,
                                          verdicts)


def quality(sampler="mdlm", length=64, fraction="1", *, rate=0.5, prefix=0.5, prefix_se=0.05, entropy=4.0, samples=32):
    return {"sampler": sampler, "gen_length": length, "fraction": fraction, "samples": samples, "parse_rate": rate,
            "parse_prefix": prefix, "parse_prefix_se": prefix_se, "entropy": entropy}


def test_equal_quality_within_the_noise():
    ar = quality("kv-cache", fraction=None)
    assert quality_shortfalls(quality(), ar) == []
    # 0.5 - 0.3 = 0.2 is within two Agresti-Caffo errors at 32 samples a side (2 x 0.117); 0.3 is not (2 x 0.111)
    assert quality_shortfalls(quality(rate=0.3), ar) == []
    assert quality_shortfalls(quality(rate=0.2), ar) == ["parse rate 0.20 < 0.50"]
    # better is never a shortfall, however far
    assert quality_shortfalls(quality(rate=1.0, prefix=1.0, entropy=6.0), ar) == []


def test_rates_of_zero_and_one_still_carry_an_error():
    # a plain binomial error is 0 at 0 and 1, so any difference would count; one sample of 32 does not
    assert quality_shortfalls(quality(rate=31 / 32), quality(rate=1.0)) == []
    assert quality_shortfalls(quality(rate=0.0), quality(rate=1 / 32)) == []
    assert quality_shortfalls(quality(rate=0.0), quality(rate=1.0)) == ["parse rate 0.00 < 1.00"]
    # fewer samples, a wider error: 0.5 against 1.0 over 4 samples each is within it
    assert quality_shortfalls(quality(rate=0.5, samples=4), quality(rate=1.0, samples=4)) == []


def test_rate_shortfall_is_the_agresti_caffo_interval():
    # Agresti-Caffo: the interval (x1+1)/(n1+2) - (x2+1)/(n2+2) +- z se is centred on the adjusted rates.
    # 8/32 against 2/32: adjusted difference 9/34 - 3/34 = 0.176 < 2 se = 0.180 (the raw 0.1875 exceeds it)
    assert quality_shortfalls(quality(rate=2 / 32), quality(rate=8 / 32)) == []
    assert quality_shortfalls(quality(rate=1 / 32), quality(rate=8 / 32)) == ["parse rate 0.03 < 0.25"]
    # unequal sample counts: 3/10 against 1/40, adjusted 4/12 - 2/42 = 0.286 > 2 se = 0.280 (raw 0.275 is not)
    assert quality_shortfalls(quality(rate=1 / 40, samples=40), quality(rate=3 / 10, samples=10)) == \
        ["parse rate 0.03 < 0.30"]


def test_prefix_shortfall_uses_both_standard_errors():
    ar = quality(prefix=0.6, prefix_se=0.03)
    # the difference's error: hypot(0.03, 0.04) = 0.05, so 0.1 is within two errors and 0.11 is not
    assert quality_shortfalls(quality(prefix=0.5 + 1e-9, prefix_se=0.04), ar) == []
    assert quality_shortfalls(quality(prefix=0.49, prefix_se=0.04), ar) == ["parseable prefix 0.49 < 0.60"]


def test_writing_less_before_end_of_text_is_a_shortfall():
    """Tokens/s counts every generated token; a point that ends its samples early writes fewer that any
    metric judges. Two standard errors of the difference, as for the parseable prefix."""
    ar = {**quality(), "written": 240.0, "written_se": 4.0}
    # hypot(4, 3) = 5: 10 tokens fewer is within two errors, 11 is not
    assert quality_shortfalls({**quality(), "written": 230.0, "written_se": 3.0}, ar) == []
    assert quality_shortfalls({**quality(), "written": 229.0, "written_se": 3.0}, ar) == ["tokens written 229 < 240"]
    assert quality_shortfalls({**quality(), "written": 256.0, "written_se": 0.0}, ar) == []  # more is never short
    assert quality_shortfalls(quality(), ar) == []  # results of before 2026-12-07 hold no count


def test_entropy_collapse_is_not_equal_quality():
    ar = quality(entropy=4.4)
    assert quality_shortfalls(quality(entropy=4.4 - ENTROPY_SLACK_BITS + 1e-6), ar) == []
    # a sampler that writes whitespace parses better and says less
    short = quality_shortfalls(quality(rate=0.9, prefix=0.9, entropy=0.2), ar)
    assert short == [f"entropy 0.20 < 4.40 - {ENTROPY_SLACK_BITS:g} bits"]


def test_rarefied_entropy_is_the_mean_over_every_subset():
    pool = [0, 0, 0, 1, 1, 2, 3]
    for size in range(1, len(pool) + 1):
        subsets = list(itertools.combinations(pool, size))
        want = sum(unigram_entropy(s) for s in subsets) / len(subsets)
        assert rarefied_entropy([3, 2, 1, 1], size) == pytest.approx(want, rel=1e-12, abs=1e-12)
    assert rarefied_entropy([5, 5], 10) == pytest.approx(1.0)  # the whole pool: its own entropy
    for size in (0, 11):
        with pytest.raises(ValueError, match="size must be in"):
            rarefied_entropy([5, 5], size)


def test_entropy_is_compared_at_equal_token_counts():
    """Plug-in entropy reads low on few tokens: 256 draws of 256 equally likely tokens read 7.09
    bits, the baseline's 10240 of them 8.00; taken at 256 tokens the baseline reads 7.19, and the
    point is of equal quality. A collapsed point still falls short at equal counts."""
    rng = random.Random(0)
    draws = Counter(rng.randrange(256) for _ in range(256))
    point = quality(entropy=unigram_entropy(draws.elements()))
    point["token_counts"] = sorted(draws.values(), reverse=True)
    ar = quality(entropy=8.0)
    assert point["entropy"] < ar["entropy"] - ENTROPY_SLACK_BITS
    assert quality_shortfalls(point, ar) == [f"entropy {point['entropy']:.2f} < 8.00 - {ENTROPY_SLACK_BITS:g} bits"]
    ar["token_counts"] = [40] * 256
    assert quality_shortfalls(point, ar) == []
    collapsed = quality(entropy=unigram_entropy([0] * 200 + [1] * 56))
    collapsed["token_counts"] = [200, 56]
    at_256 = rarefied_entropy([40] * 256, 256)
    assert quality_shortfalls(collapsed, ar) == \
        [f"entropy {collapsed['entropy']:.2f} < {at_256:.2f} - {ENTROPY_SLACK_BITS:g} bits (at 256 tokens)"]
    none = quality(entropy=0.0)  # a point whose samples all ended at once
    none["token_counts"] = []
    assert quality_shortfalls(none, ar) == [f"entropy 0.00 < 8.00 - {ENTROPY_SLACK_BITS:g} bits"]


def test_floor_of_the_baseline():
    assert at_floor(quality(prefix=0.02, prefix_se=0.015))
    assert not at_floor(quality(prefix=0.2, prefix_se=0.05))
    assert at_floor(quality(prefix=0.0, prefix_se=0.0))
    # one sample (--samples 1) has no standard error (NaN): nothing tells its prefix from zero, least of all none
    assert at_floor(quality(prefix=0.0, prefix_se=math.nan, samples=1))
    assert at_floor(quality(prefix=0.5, prefix_se=math.nan, samples=1))


def results(points):
    """points: (sampler, fraction, batch, tokens/s, quality kwargs), the baseline's sampler "kv-cache"."""
    throughput, rows = [], {}
    for sampler, fraction, batch, speed, q in points:
        model = "autoregressive" if sampler == "kv-cache" else "diffusion (mdlm)"
        rows[sampler, fraction] = quality(sampler, fraction=fraction, **q)
        throughput.append({"model": model, "sampler": sampler, "gen_length": 64, "fraction": fraction, "batch": batch,
                           "steps": 64 if fraction in (None, "1") else 16, "nfe": 50.0, "tokens_per_s": speed})
    for r in throughput:
        r["speedup_vs_ar"] = r["tokens_per_s"] / next(a["tokens_per_s"] for a in throughput
                                                      if a["sampler"] == "kv-cache" and a["batch"] == r["batch"])
    return {"throughput": throughput, "quality": list(rows.values())}


def test_verdict_picks_the_fastest_point_of_equal_quality():
    good, collapsed = dict(prefix=0.5), dict(prefix=0.5, entropy=1.0)
    res = results([("kv-cache", None, 1, 1000.0, good), ("mdlm", "1", 1, 800.0, good), ("mdlm", "1/4", 1, 2500.0, good),
                   ("llada", "1/4", 1, 4000.0, collapsed),
                   ("kv-cache", None, 16, 9000.0, good), ("mdlm", "1", 16, 3000.0, good),
                   ("mdlm", "1/4", 16, 8000.0, good), ("llada", "1/4", 16, 12000.0, collapsed)])
    b1, b16 = verdicts(res)
    assert (b1["gen_length"], b1["batch"], b1["ar_tokens_per_s"]) == (64, 1, 1000.0) and not b1["at_floor"]
    assert b1["best_equal_quality"]["sampler"] == "mdlm" and b1["best_equal_quality"]["speedup_vs_ar"] == 2.5
    assert b1["fastest"]["sampler"] == "llada" and b1["fastest"]["short_of"][0].startswith("entropy 1.00")
    assert b16["best_equal_quality"]["speedup_vs_ar"] == pytest.approx(8 / 9)
    text = "\n".join(summary([b1, b16]))
    assert "faster at 1 of 2 (length, batch) points: L 64 B 1; by up to 2.50x (mdlm, 16 steps, at L 64 B 1)" in text
    assert "It is not faster at: L 64 B 16." in text and "floor" not in text
    assert "| 64 | 16 | 9,000 | mdlm, 16 steps | 8,000 | 0.89x | llada, 16 steps | 1.33x | entropy 1.00" in text


def test_verdict_without_a_match_and_at_the_floor():
    res = results([("kv-cache", None, 1, 1000.0, dict(prefix=0.01, prefix_se=0.01)),
                   ("fast-dllm", None, 1, 3000.0, dict(prefix=0.01, prefix_se=0.01, entropy=0.5))])
    (v,) = verdicts(res)
    assert v["best_equal_quality"] is None and v["at_floor"]
    text = "\n".join(summary([v]))
    assert "faster at none of the 1 (length, batch) points" in text and "It is not faster at: L 64 B 1." in text
    assert "at the floor of the parseable prefix" in text
    assert "| 64 | 1 | 1,000 | none | - | - | fast-dllm, 50 network calls, adaptive | 3.00x |" in text
    assert not math.isnan(v["fastest"]["speedup_vs_ar"])


def test_a_faster_point_where_the_baseline_writes_no_code_is_no_win():
    """Equal quality at the floor only means both models write no code: the headline counts the point
    above the floor alone, the floor sentence names the faster one, and its table row says (floor)."""
    floor, good = dict(prefix=0.01, prefix_se=0.01), dict(prefix=0.5)
    (at_floor,) = verdicts(results([("kv-cache", None, 1, 1000.0, floor), ("mdlm", "1/4", 1, 3000.0, floor)]))
    (above,) = verdicts(results([("kv-cache", None, 4, 1000.0, good), ("mdlm", "1/4", 4, 2000.0, good)]))
    assert at_floor["at_floor"] and at_floor["best_equal_quality"]["speedup_vs_ar"] == 3.0 and not above["at_floor"]
    text = "\n".join(summary([at_floor, above]))
    assert "faster at 1 of 2 (length, batch) points: L 64 B 4; by up to 2.00x" in text
    assert "(a faster point there, L 64 B 1, counts as no win)" in text and "It is not faster" not in text
    assert "| 64 | 1 | 1,000 | mdlm, 16 steps | 3,000 | 3.00x (floor) |" in text


def test_a_faster_median_inside_the_baselines_spread_is_timing_noise():
    res = results([("kv-cache", None, 1, 1000.0, {}), ("mdlm", "1/4", 1, 1030.0, {}),
                   ("kv-cache", None, 4, 1000.0, {}), ("mdlm", "1/4", 4, 2000.0, {})])
    # the committed CPU report's L 128 B 4: 1.03x, AR 286.6-453.1 ms against mdlm's 300.5-403.5 ms
    for r, spread in zip(res["throughput"], [(286.6, 453.1), (300.5, 403.5), (60.0, 70.0), (30.0, 35.0)]):
        r["spread_ms"] = spread
    noisy, clear = verdicts(res)
    assert not noisy["best_equal_quality"]["clear_of_noise"] and clear["best_equal_quality"]["clear_of_noise"]
    text = "\n".join(summary([noisy, clear]))
    assert "faster at 1 of 2 (length, batch) points: L 64 B 4; by up to 2.00x" in text
    assert "At L 64 B 1 its median is faster but its latency spread overlaps the baseline's" in text
    assert "| 64 | 1 | 1,000 | mdlm, 16 steps | 1,030 | 1.03x (noise) |" in text and "It is not faster" not in text


def test_a_clear_win_is_preferred_to_a_faster_median_inside_the_noise():
    """The fastest median of equal quality may have a slow tail; a slightly slower point clear of the
    baseline's spread is the win the verdict reports, not 'within timing noise'."""
    res = results_with_spread([("kv-cache", None, 1, 1000.0, (20.0, 21.0)), ("mdlm", "1/8", 1, 1820.0, (10.0, 30.0)),
                               ("mdlm", "1/4", 1, 1670.0, (12.0, 12.5))])
    (v,) = verdicts(res)
    assert v["best_equal_quality"]["tokens_per_s"] == 1670.0 and v["best_equal_quality"]["clear_of_noise"]
    text = "\n".join(summary([v]))
    assert "faster at 1 of 1 (length, batch) points: L 64 B 1; by up to 1.67x" in text and "noise" not in text
    # with no clear win, the fastest median of equal quality stands, marked as noise
    res["throughput"][2]["spread_ms"] = (12.0, 25.0)
    (v,) = verdicts(res)
    assert v["best_equal_quality"]["tokens_per_s"] == 1820.0 and not v["best_equal_quality"]["clear_of_noise"]
    assert "within timing noise" in "\n".join(summary([v]))


def test_a_point_with_more_tokens_than_the_baseline_is_taken_at_the_baselines_count():
    """Either side may hold the smaller count: a diffusion point whose samples run longer than the
    baseline's is cut to the baseline's token count, not the other way round."""
    ar = {**quality(entropy=3.0), "token_counts": [3] * 8}  # 24 tokens, 8 kinds
    wide = {**quality(entropy=7.5), "token_counts": [5] * 200}  # 1000 tokens, 200 kinds: at 24 tokens about 4.5 bits, equal quality
    assert quality_shortfalls(wide, ar) == []
    narrow = {**quality(entropy=0.1), "token_counts": [990, 10]}  # 1000 tokens, nearly one kind
    at_24 = rarefied_entropy([990, 10], 24)
    assert quality_shortfalls(narrow, ar) == \
        [f"entropy {at_24:.2f} < {rarefied_entropy([3] * 8, 24):.2f} - {ENTROPY_SLACK_BITS:g} bits (at 24 tokens)"]


def results_with_spread(points):
    """points: (sampler, fraction, batch, tokens/s, spread or None), all of equal quality."""
    throughput, rows = [], {}
    for sampler, fraction, batch, speed, spread in points:
        model = "autoregressive" if sampler == "kv-cache" else "diffusion (mdlm)"
        rows[sampler, fraction] = quality(sampler, fraction=fraction)
        row = {"model": model, "sampler": sampler, "gen_length": 64, "fraction": fraction, "batch": batch,
               "steps": 64 if fraction in (None, "1") else 16, "nfe": 50.0, "tokens_per_s": speed}
        if spread is not None:
            row["spread_ms"] = spread
        throughput.append(row)
    for r in throughput:
        r["speedup_vs_ar"] = r["tokens_per_s"] / next(a["tokens_per_s"] for a in throughput
                                                      if a["sampler"] == "kv-cache" and a["batch"] == r["batch"])
    return {"throughput": throughput, "quality": list(rows.values())}


def test_the_summary_quotes_the_largest_clear_speedup():
    """"by up to" names the largest speedup among the clear wins, whichever (length, batch) holds it."""
    rng = random.Random(7)
    batches = rng.sample(range(1, 40), 5)
    speedups = [round(rng.uniform(1.2, 6.0), 2) for _ in batches]
    points = []
    for batch, s in zip(batches, speedups):
        points += [("kv-cache", None, batch, 1000.0, None), ("mdlm", "1/4", batch, 1000.0 * s, None)]
    found = verdicts(results_with_spread(points))
    text = "\n".join(summary(found))
    best = max(range(len(batches)), key=lambda i: speedups[i])
    assert "faster at 5 of 5 (length, batch) points" in text
    assert f"by up to {speedups[best]:.2f}x (mdlm, 16 steps, at L 64 B {batches[best]})" in text


def test_a_slower_point_of_equal_quality_is_never_marked_as_noise():
    """"(noise)" marks a faster median inside the baseline's spread; a slower one is not faster at all,
    whatever its spread, and is listed as not faster."""
    res = results_with_spread([("kv-cache", None, 1, 1000.0, (286.6, 453.1)), ("mdlm", "1/4", 1, 900.0, (300.5, 460.0))])
    (v,) = verdicts(res)
    assert not v["best_equal_quality"]["clear_of_noise"]
    text = "\n".join(summary([v]))
    assert "| 64 | 1 | 1,000 | mdlm, 16 steps | 900 | 0.90x |" in text and "(noise)" not in text
    assert "It is not faster at: L 64 B 1." in text and "within timing noise" not in text


def test_a_point_as_fast_as_the_baseline_is_not_faster():
    """A speedup of exactly 1.00x is no win: the summary says faster at none and lists it as not faster."""
    res = results_with_spread([("kv-cache", None, 1, 1000.0, None), ("mdlm", "1/4", 1, 1000.0, None)])
    text = "\n".join(summary(verdicts(res)))
    assert "faster at none of the 1 (length, batch) points" in text and "It is not faster at: L 64 B 1." in text


def _results(points):
    """points: (sampler, fraction, tokens/s, spread_ms), batch 1, length 64, every point of equal quality."""
    throughput, quality = [], []
    for sampler, fraction, speed, spread in points:
        quality.append({"sampler": sampler, "gen_length": 64, "fraction": fraction, "samples": 32, "parse_rate": 0.5,
                        "parse_prefix": 0.5, "parse_prefix_se": 0.05, "entropy": 4.0})
        throughput.append({"model": "autoregressive" if sampler == "kv-cache" else "diffusion (mdlm)",
                           "sampler": sampler, "gen_length": 64, "fraction": fraction, "batch": 1, "steps": 16,
                           "nfe": 16.0, "tokens_per_s": speed, "spread_ms": spread})
    for r in throughput:
        r["speedup_vs_ar"] = r["tokens_per_s"] / throughput[0]["tokens_per_s"]
    return {"throughput": throughput, "quality": quality}


def test_a_point_is_clear_of_noise_only_when_its_slow_end_beats_the_baselines_fast_end():
    """Clear of noise: the point's p80 (its slow end) below the baseline's p20 (its fast end). A point
    whose fast end beats the baseline's fast end, or whose slow end beats the baseline's slow end, but
    whose spread still overlaps the baseline's, is within timing noise."""
    rng = random.Random(3)
    for _ in range(20):
        lo = rng.uniform(100, 300)
        ar = (lo, lo + rng.uniform(50, 150))
        overlapping = (lo - rng.uniform(1, 40), ar[0] + rng.uniform(1, 40))  # fast end faster, slow end inside
        inside = (ar[0] + 1, ar[1] - 1)
        clear = (lo * rng.uniform(0.2, 0.6), lo * rng.uniform(0.7, 0.99))
        assert not clear_of_noise({"spread_ms": overlapping}, {"spread_ms": ar})
        assert not clear_of_noise({"spread_ms": inside}, {"spread_ms": ar})
        assert clear_of_noise({"spread_ms": clear}, {"spread_ms": ar})
    (v,) = verdicts(_results([("kv-cache", None, 1000.0, (286.6, 453.1)), ("mdlm", "1/4", 1300.0, (250.0, 400.0))]))
    assert not v["best_equal_quality"]["clear_of_noise"]
    text = "\n".join(summary([v]))
    assert "faster at none of the 1" in text and "within timing noise" in text and "1.30x (noise)" in text


def test_each_length_is_judged_against_the_baselines_samples_of_that_length():
    """The baseline writes good code at one length and poor code at another (longer samples run into
    more errors): a diffusion point is of equal quality when it matches the baseline's samples of its own
    length, whichever length comes first in the results."""
    rng = random.Random(23)
    lengths = rng.sample([32, 64, 128, 256], 3)
    good, poor = dict(rate=0.9, prefix=0.9, prefix_se=0.02), dict(rate=0.1, prefix=0.1, prefix_se=0.02)
    throughput, rows = [], []
    for k, length in enumerate(lengths):
        level = good if k == 0 else poor  # the baseline and the diffusion point alike: equal at every length
        rows += [quality("kv-cache", length, None, **level), quality("mdlm", length, "1/4", **level)]
        for sampler, fraction, speed in (("kv-cache", None, 1000.0), ("mdlm", "1/4", rng.uniform(1500, 3000))):
            throughput.append({"model": "autoregressive" if sampler == "kv-cache" else "diffusion (mdlm)",
                               "sampler": sampler, "gen_length": length, "fraction": fraction, "batch": 1,
                               "steps": 16, "nfe": 16.0, "tokens_per_s": speed, "speedup_vs_ar": speed / 1000.0})
    found = verdicts({"throughput": throughput, "quality": rows})
    assert [v["gen_length"] for v in found] == lengths
    for v in found:
        assert v["best_equal_quality"] is not None and v["fastest"]["short_of"] == [], v["gen_length"]
        assert v["at_floor"] is False
    # and the other way round: a point that falls short of its own length's baseline is not of equal quality
    # (its samples at the floor: the floor is the baseline's, which is not there)
    rows[1] = quality("mdlm", lengths[0], "1/4", rate=0.1, prefix=0.0, prefix_se=0.0)
    first = verdicts({"throughput": throughput, "quality": rows})[0]
    assert first["best_equal_quality"] is None and first["fastest"]["short_of"][0].startswith("parse rate 0.10")
    assert first["at_floor"] is False


def test_the_committed_cpu_report_has_no_win_under_todays_verdict():
    """docs/benchmarks.md's reading of bench/results/cpu-2core-2026-12-01/e2e: four faster mdlm points, each at
    the baseline's floor, so none is a win (the one at 1.03x inside the baseline's spread besides)."""
    path = Path(__file__).parent.parent / "bench" / "results" / "cpu-2core-2026-12-01" / "e2e" / "results.json"
    found = verdicts(json.loads(path.read_text()))
    assert [round(v["best_equal_quality"]["speedup_vs_ar"], 2) for v in found] == [4.15, 1.79, 2.51, 1.03]
    assert all(v["at_floor"] for v in found)
    assert [v["best_equal_quality"]["clear_of_noise"] for v in found] == [True, True, True, False]
    assert "faster at none of the 4 (length, batch) points" in "\n".join(summary(found))


def test_the_summary_sets_the_baselines_parseable_prefix_beside_the_held_out_texts():
    """For scale: each length's held-out files' own parseable prefix beside the baseline's samples', once a
    length; results without the held-out row (written before it) get no such sentence."""
    res = _results([("kv-cache", None, 1000.0, (900.0, 1100.0)), ("mdlm", "1/4", 1300.0, (700.0, 800.0))])
    res["throughput"] += [dict(r, batch=4) for r in res["throughput"]]
    assert "For scale" not in "\n".join(summary(verdicts(res)))
    res["meta"] = {"reference": {"64": {"parse_prefix": 0.8125}}}
    found = verdicts(res)
    assert [(v["data_parse_prefix"], v["ar_parse_prefix"]) for v in found] == [(0.8125, 0.5)] * 2
    text = "\n".join(summary(found))
    assert text.count("For scale") == 1 and "0.81 against 0.50 at L 64." in text
