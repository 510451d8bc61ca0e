"""The e2e benchmark's report: report.md (stamp, definitions, tables), results.json and three PNG plots."""

from __future__ import annotations

import json
import math
from pathlib import Path

from .code_quality import __doc__ as QUALITY_DEFINITIONS
from .common import null_for_nan
from .e2e_verdict import ENTROPY_SLACK_BITS, entropy_shortfall, summary

COLORS = {"mdlm": "tab:blue", "llada": "tab:orange", "fast-dllm": "tab:green", "kv-cache": "black"}
# the diffusion NLL is a bound and the baseline's exact, which a plot shared on its own must say
NLL_IS = "\n(AR exact, diffusion: upper bound)"
SAMPLE_METRICS = (("nll", "val NLL, nats/token (lower: better)" + NLL_IS), ("parse_prefix", "parseable prefix"),
                  ("parse_rate", "parse rate"), ("entropy", "sample token entropy, bits"))
INFILL_METRICS = (("infill_parse", "infill parse rate"), ("infill_exact", "infill exact match"),
                  ("infill_entropy", "infill token entropy, bits"))


def _nfe(row: dict, key: str, steps: str = "steps") -> float:
    """Where a point sits on a steps axis: its grid steps, or fast-dllm's measured evaluations."""
    return row[key] if row["sampler"] == "fast-dllm" else row[steps]


def _f(x: float, digits: int = 3) -> str:
    return f"{x:.{digits}f}"


def _throughput_table(rows: list[dict], length: int, reps: int) -> list[str]:
    spread = "p20-p80" if reps >= 5 else "min-max" if reps > 1 else "one run"
    out = [f"### Throughput, {length} generated tokens", "",
           f"| model | sampler | steps | batch | nfe | latency ms ({spread}) | tokens/s | vs AR |",
           "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["gen_length"] != length:
            continue
        steps = "adaptive" if r["sampler"] == "fast-dllm" else r["steps"]
        out.append(f"| {r['model']} | {r['sampler']} | {steps} | {r['batch']} | {r['nfe']:.1f} | "
                   f"{r['latency_ms']:.1f} ({r['spread_ms'][0]:.1f}-{r['spread_ms'][1]:.1f}) | {r['tokens_per_s']:,.0f} | "
                   f"{r['speedup_vs_ar']:.2f}x |")
    return out + [""]


def _written(row: dict) -> str:
    """Tokens before the first end-of-text, or '-' in results written before 2026-12-07."""
    return f"{row['written']:.1f}" if "written" in row else "-"


def _quality_table(rows: list[dict], length: int, data: dict) -> list[str]:
    """The points' rows after the held-out text's own (``data``: its first ``length`` tokens of each file)."""
    out = [f"### Quality, {length} generated tokens", "",
           "| model | sampler | steps | nfe | val NLL (± s.e.) | NLL is | parse | blank | parseable prefix | "
           "tokens written | entropy, bits | infill parse | infill exact | infill entropy, bits | infill steps | "
           "infill nfe |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
           f"| held-out text | first {length} tokens of {data['samples']} files | - | - | - | - | "
           f"{_f(data['parse_rate'], 2)} | {_f(data['blank_rate'], 2)} | {_f(data['parse_prefix'], 2)} | "
           f"{_written(data)} | {_f(data['entropy'], 2)} | - | - | - | - | - |"]
    for r in rows:
        if r["gen_length"] != length:
            continue
        adaptive = r["sampler"] == "fast-dllm"
        steps = "adaptive" if adaptive else r["steps"]
        infill_steps = "adaptive" if adaptive else f"{r['infill_steps']:.1f}"
        out.append(f"| {r['model']} | {r['sampler']} | {steps} | {r['quality_nfe']:.1f} | "
                   f"{_f(r['nll'])} ± {_f(r['nll_se'])} | {r['nll_kind']} | {_f(r['parse_rate'], 2)} | "
                   f"{_f(r['blank_rate'], 2)} | {_f(r['parse_prefix'], 2)} | {_written(r)} | {_f(r['entropy'], 2)} | "
                   f"{_f(r['infill_parse'], 2)} | {_f(r['infill_exact'], 2)} | {_f(r['infill_entropy'], 2)} | "
                   f"{infill_steps} | {r['infill_nfe']:.1f} |")
    return out + [""]


def _examples(rows: list[dict], length: int) -> list[str]:
    out = [f"### First sample of each sampler at its most steps, {length} tokens", ""]
    seen = set()
    for r in rows:
        if r["gen_length"] != length or r["sampler"] in seen:
            continue
        seen.add(r["sampler"])
        text = r["example"][:400].replace("```", "'''")
        steps = "adaptive" if r["sampler"] == "fast-dllm" else r["steps"]
        out += [f"{r['model']}, {r['sampler']}, {steps} steps:", "", "```", text, "```", ""]
    return out


def _definitions() -> list[str]:
    """The bullet list of code_quality's docstring, one markdown item a definition."""
    items: list[str] = []
    for line in QUALITY_DEFINITIONS.splitlines():
        if line.startswith("- "):
            items.append(line)
        elif items and line.startswith("  "):
            items[-1] += " " + line.strip()
    return items


def _budget_text(budget: dict) -> str:
    return (f"{budget['minutes']:g} minutes or " if budget["minutes"] else "") + f"{budget['steps']} steps"


def _models_and_sizes(m: dict) -> str:
    """Both models and their sizes (results of before 2026-12-06 kept --size alone, also for given folders)."""
    sizes = m.get("sizes") or {"mdlm": m["size"], "ar": m["size"]}
    if sizes["mdlm"] == sizes["ar"]:
        return (f"the `{sizes['mdlm']}` MDLM (DiT, bidirectional) and the autoregressive transformer on the same "
                "backbone")
    return (f"the `{sizes['mdlm']}` MDLM (DiT, bidirectional) and a `{sizes['ar']}` autoregressive transformer "
            "(not the same size)")


def _shared_settings(m: dict) -> str:
    """What both runs shared (results of before 2026-12-07 were trained together and do not say)."""
    differences = m.get("differences") or []
    if not differences:
        return f"same data, batch and optimisation, {m['seq_len']}-token windows"
    return (f"same data, windows of at least {m['seq_len']} tokens; not shared (diffusion and autoregressive): "
            + ", ".join(differences))


def markdown(results: dict) -> str:
    m = results["meta"]
    k = m["kernels"]
    budgets = m["budgets"]
    if budgets["mdlm"] and budgets["mdlm"] == budgets["ar"]:
        trained = f"trained {_budget_text(budgets['mdlm'])} each" + (", whichever ends first"
                                                                     if budgets["mdlm"]["minutes"] else "")
    else:  # reused folders of other budgets, or without a run record
        trained = ", ".join(f"{name} " + (f"trained {_budget_text(budgets[key])}" if budgets[key] else
                                          "reused without a run record")
                            for key, name in (("mdlm", "diffusion"), ("ar", "autoregressive")))
    trained += f" (optimizer steps: diffusion {m['train_steps']['mdlm']}, autoregressive {m['train_steps']['ar']})"
    definitions = _definitions()
    lines = [
        "# Diffusion vs autoregressive, end to end", "",
        f"{m['card']} | torch {m['torch']} | commit {m['commit']} | {m['date']}", "",
        f"command: `{m['command']}`", "",
        f"Machine load (1-minute load average) at the start and the end of the sweep: {m['load_average'][0]:.1f} "
        f"and {m['load_average'][1]:.1f} on {m['cpus']} cores, {m['threads']} used by this run" +
        (" (other work shared the cores: the timings are noisy)." if max(m["load_average"]) > m["threads"] + 0.5
         else ".") +
        (f" This call went on from an earlier one, cut short: {m['resumed']['quality_points']} quality points and "
         f"{m['resumed']['throughput_rows']} throughput rows are that call's." if m.get("resumed") else ""), "",
        f"Models: {_models_and_sizes(m)}, {_shared_settings(m)}, {trained}. "
        f"Folders: {m['model_dirs']}. "
        f"Held-out text: the validation split of {m['data'] or 'the standard library'}.", "",
        "Kernels (each side's best in this build):", "",
        f"- precision: {k['precision']}",
        f"- diffusion: {k['diffusion']}",
        f"- autoregressive: {k['ar']}", "",
        "## Where diffusion is faster at equal quality", "",
        "Equal quality, on the unconditional samples that tokens/s times: neither the parse rate, the parseable "
        "prefix nor the tokens written before the first end-of-text (where the results hold them) is lower than the "
        "autoregressive baseline's by more than two standard errors of the difference, "
        f"and the token entropy is at most {ENTROPY_SLACK_BITS:g} bits below the baseline's (a sampler that "
        "repeats safe tokens parses more while its entropy collapses"
        + ("; both entropies are taken at the smaller one's token count, the other side's as the expected entropy "
           "of that many of its tokens, since plug-in entropy reads low on fewer tokens"
           if any("token_counts" in r for r in results["quality"]) else "")
        + "). The val NLL is not judged: the diffusion figure is an upper bound, the baseline's is exact.", "",
        *summary(results["verdict"]),
        "## How it is measured", "",
        (f"- Both models generate after the same prompts: the last {m['prompt_tokens']} tokens of a held-out file "
         "and an end-of-text token, so that a file starts next (what both saw before every file start in "
         "training; sample i follows the i-th such file, a batch's rows the first ones)"
         if m.get("prompt_tokens") else "- Both models generate after one end-of-text token (the start of a file)") +
        f", temperature {m['temperature']:g}; {m['samples']} samples per quality point, {m['infill_tasks']} infilled "
        "functions.",
        f"- Throughput: one warm-up call, then the median of {m['reps']} timed `generate` calls (CUDA: events "
        "after a synchronize), taken in turns with every other point of the same length and batch, the "
        "autoregressive one among them, so that a drifting machine load moves all of them alike; tokens/s = batch x generated length / that time; latency = that time, which every "
        "sequence of the batch waits. With CUDA graphs the warm-up call captures a point's graphs and the timed "
        "calls replay them, as a server replays the graphs it captured at start-up.",
        "- steps: round(fraction x length); llada's are rounded up to a multiple of its blocks "
        f"({m['fast_dllm']['block_length']} tokens, as fast-dllm's); nfe = network evaluations measured (mdlm "
        "skips the network on steps that unmask nothing). fast-dllm (threshold "
        f"{m['fast_dllm']['threshold']}) picks its own step count: its rows carry the measured nfe instead.",
        "- val NLL, nats per token on the first "
        f"{m['nll_windows']} held-out windows of {m['seq_len']} tokens, the training window rather than the "
        "generation length (± one standard error over them; neighbouring windows are correlated, so it reads "
        "small): exact for the autoregressive "
        f"model; for diffusion the bound of the T-step masked process over the {m['seq_len']} tokens with T = the "
        "point's steps (so two lengths' rows with one T share a value), estimated from "
        "one draw of the noise (a time on the T-step grid and a mask) per window, the same random numbers for "
        "every T. The bound itself is looser for fewer steps, but its one-draw estimates are noisy: a difference "
        "between step counts within about two standard errors is no evidence of an effect of the steps. llada "
        "picks positions by confidence and has no bound of its own, so it shares the T-step value; fast-dllm's "
        f"adaptive steps get the continuous-time bound ({m['continuous_bound']:.3f}).",
        "- Samples are judged up to their first end-of-text.", *definitions,
        "- held-out text: the first tokens of as many held-out files as there are samples (as many tokens as the "
        "samples have; a shorter file whole), judged as the samples are: what a model that wrote like the data "
        "would score. Short lengths cut "
        "most files inside their docstring or first statement, so even the data's own parse rate is low there. "
        "The quality plot draws it as a grey line.",
        "- Infill: held-out functions (files of the validation split) with small bodies; diffusion masks the "
        "body between its context (before and after) and fills it in round(fraction x body length) steps "
        "(fast-dllm: adaptive) as one block; the autoregressive model cannot infill, so its row is a "
        "prefix-only completion of the same number of tokens from the context before the body. Infill does not "
        "depend on the generation length: every length's rows repeat it, and its column of the quality plot "
        "places it at its own steps (infill steps: the mean over the functions), not at the samples' steps. "
        "Infill parse: the def line plus the filled body parses, with a statement of the fill's own; exact: the "
        "body is reproduced character for character.", "",
        "## Throughput", "",
    ]
    lengths = m["grid"]["gen_lengths"]
    for length in lengths:
        lines += _throughput_table(results["throughput"], length, m["reps"])
    lines += ["## Quality", ""]
    for length in lengths:
        lines += _quality_table(results["quality"], length, m["reference"][str(length)])
    lines += ["## Plots", "", "![throughput against steps](throughput.png)", "",
              "![quality against steps](quality.png)", "", "![speed/quality frontier](frontier.png)", "",
              "## Samples", ""]
    for length in lengths:
        lines += _examples(results["quality"], length)
    return "\n".join(lines) + "\n"


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _no_minor_labels(ax) -> None:
    """Log axes label their minor ticks too, which overlap on short ranges."""
    from matplotlib.ticker import NullFormatter

    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.yaxis.set_minor_formatter(NullFormatter())


def _label_tokens_per_s(ax, which: str) -> None:
    """Plain numbers on a log10 tokens/s axis, and at least two of them: the powers of ten alone may
    leave none inside a short range (232-579 tokens/s), so the ticks are the first of 1, 1-2-5 and
    1-2-3-5 per decade that puts two inside, and evenly spaced on a range too short for any."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator

    lo, hi = ax.get_xlim() if which == "x" else ax.get_ylim()  # the getters apply the pending autoscale
    axis = ax.xaxis if which == "x" else ax.yaxis
    decades = range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
    for subs in ((1,), (1, 2, 5), (1, 2, 3, 5)):
        ticks = [m * 10.0**e for e in decades for m in subs if lo <= m * 10.0**e <= hi]
        if len(ticks) >= 2:
            axis.set_major_locator(FixedLocator(ticks))
            break
    else:
        axis.set_major_locator(MaxNLocator(nbins=3))
    axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:,.6g}"))


def _series(rows: list[dict], **match) -> dict[str, list[dict]]:
    by: dict[str, list[dict]] = {}
    for r in rows:
        if all(r[k] == v for k, v in match.items()):
            by.setdefault(r["sampler"], []).append(r)
    return by


def throughput_figure(results: dict):
    plt = _plt()
    grid = results["meta"]["grid"]
    rows, cols = grid["batch_sizes"], grid["gen_lengths"]
    fig, axes = plt.subplots(len(rows), len(cols), figsize=(4.8 * len(cols), 3.6 * len(rows)), squeeze=False)
    for i, batch in enumerate(rows):
        for j, length in enumerate(cols):
            ax = axes[i][j]
            for sampler, pts in _series(results["throughput"], batch=batch, gen_length=length).items():
                pts = sorted(pts, key=lambda r: r["nfe"])
                style = dict(marker="*", ms=12, ls="none") if sampler in ("kv-cache", "fast-dllm") else dict(marker="o")
                label = "autoregressive (KV cache)" if sampler == "kv-cache" else f"diffusion, {sampler}"
                ax.plot([r["nfe"] for r in pts], [r["tokens_per_s"] for r in pts], color=COLORS[sampler],
                        label=label, **style)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            _no_minor_labels(ax)
            _label_tokens_per_s(ax, "y")
            ax.set_xlabel("network evaluations (steps)")
            ax.set_ylabel("tokens/s")
            ax.set_title(f"{length} tokens, batch {batch}")
            ax.grid(alpha=0.3, which="both")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"throughput against steps ({results['meta']['card']})", fontsize=10)
    fig.tight_layout()
    return fig


def _quality_panel(ax, series: dict[str, list[dict]], key: str, label: str, steps: str, nfe: str,
                   data: dict | None = None) -> None:
    """One metric against steps: the diffusion samplers as points, the autoregressive model as a line, and
    the held-out text's own value (``data``, where the metric has one) as a grey line."""
    if data is not None and key in data:
        ax.axhline(data[key], color="gray", ls=":", lw=1.5, label="held-out text")
    for sampler, pts in series.items():
        ys = [r[key] for r in pts]
        if sampler == "kv-cache":
            ax.axhline(ys[0], color="black", ls="--", lw=1, label="autoregressive")
        else:
            style = dict(marker="*", ms=12, ls="none") if sampler == "fast-dllm" else dict(marker="o")
            ax.plot([_nfe(r, nfe, steps) for r in pts], ys, color=COLORS[sampler], label=f"diffusion, {sampler}",
                    **style)
    ax.set_xscale("log", base=2)
    _no_minor_labels(ax)
    ax.set_ylabel(label, fontsize=8)
    ax.grid(alpha=0.3)


def quality_figure(results: dict):
    """One column per generation length for the samples' metrics, and one column for infill, which
    every length shares and which ran its own step counts (a fraction of each body's length)."""
    plt = _plt()
    cols = results["meta"]["grid"]["gen_lengths"]
    rows = max(len(SAMPLE_METRICS), len(INFILL_METRICS))
    fig, axes = plt.subplots(rows, len(cols) + 1, figsize=(4.8 * (len(cols) + 1), 2.6 * rows), squeeze=False)
    for j, length in enumerate(cols):
        series = _series(results["quality"], gen_length=length)
        for i, (key, label) in enumerate(SAMPLE_METRICS):
            _quality_panel(axes[i][j], series, key, label, "steps", "quality_nfe",
                           results["meta"].get("reference", {}).get(str(length)))
        axes[0][j].set_title(f"samples, {length} tokens")
        axes[len(SAMPLE_METRICS) - 1][j].set_xlabel("steps (fast-dllm: measured nfe)")
    infill = _series(results["quality"], gen_length=cols[0])
    for i, (key, label) in enumerate(INFILL_METRICS):
        _quality_panel(axes[i][-1], infill, key, label, "infill_steps", "infill_nfe")
    axes[0][-1].set_title("infill of held-out bodies (any length)")
    axes[len(INFILL_METRICS) - 1][-1].set_xlabel("infill steps, mean over the bodies (fast-dllm: measured nfe)")
    for ax in axes[len(INFILL_METRICS):, -1]:
        ax.axis("off")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def _pareto(points: list[tuple[float, float]], higher_is_better: bool) -> list[tuple[float, float]]:
    """The points no other point beats on both speed (higher) and quality."""
    sign = 1 if higher_is_better else -1
    front, best = [], -float("inf")
    for x, y in sorted(points, key=lambda p: -p[0]):
        if sign * y > best:
            front.append((x, y))
            best = sign * y
    return sorted(front)


def frontier_figure(results: dict):
    plt = _plt()
    grid = results["meta"]["grid"]
    combos = [(length, batch) for length in grid["gen_lengths"] for batch in grid["batch_sizes"]]
    metrics = (("nll", "val NLL, nats/token" + NLL_IS, False), ("parse_prefix", "parseable prefix", True))
    # keyed by fraction, as the verdicts are: two fractions may round to one step count
    quality = {(r["sampler"], r["gen_length"], r["fraction"]): r for r in results["quality"]}
    fig, axes = plt.subplots(len(metrics), len(combos), figsize=(4.2 * len(combos), 3.4 * len(metrics)), squeeze=False)
    for j, (length, batch) in enumerate(combos):
        pts = [(r, quality[r["sampler"], length, r["fraction"]]) for r in results["throughput"]
               if r["gen_length"] == length and r["batch"] == batch]
        ar_quality = next(q for s, q in pts if s["model"] == "autoregressive")
        # a sampler whose samples collapsed (the verdict's entropy test) parses well and says nothing
        collapsed = [s["model"] != "autoregressive" and entropy_shortfall(q, ar_quality) is not None for s, q in pts]
        for i, (key, label, higher) in enumerate(metrics):
            ax = axes[i][j]
            for (speed, q), hollow in zip(pts, collapsed):
                ar = speed["sampler"] == "kv-cache"
                color = COLORS[speed["sampler"]]
                ax.plot(speed["tokens_per_s"], q[key], marker="*" if ar else "o", ms=12 if ar else 6,
                        color=color, mfc="none" if hollow else color, ls="none")
            for model, color in (("diffusion (mdlm)", "tab:purple"), ("autoregressive", "black")):
                front = _pareto([(s["tokens_per_s"], q[key]) for (s, q), hollow in zip(pts, collapsed)
                                 if s["model"] == model and not hollow], higher)
                if len(front) > 1:
                    ax.plot(*zip(*front), color=color, lw=1, ls=":")
            ax.set_xscale("log")
            _no_minor_labels(ax)
            _label_tokens_per_s(ax, "x")
            ax.set_xlabel("tokens/s")
            ax.set_ylabel(label, fontsize=8)
            ax.grid(alpha=0.3)
            if i == 0:
                ax.set_title(f"{length} tokens, batch {batch}", fontsize=9)
    handles = [plt.Line2D([], [], color=c, marker="*" if s == "kv-cache" else "o", ls="none",
                          label="autoregressive" if s == "kv-cache" else f"diffusion, {s}") for s, c in COLORS.items()]
    handles.append(plt.Line2D([], [], color="tab:purple", ls=":", label="diffusion frontier"))
    handles.append(plt.Line2D([], [], color="gray", marker="o", mfc="none", ls="none",
                              label="entropy collapsed: off the frontier"))
    axes[0][0].legend(handles=handles, fontsize=7)
    fig.tight_layout()
    return fig


def write_report(out: Path, results: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(null_for_nan(results), indent=2, allow_nan=False) + "\n")
    for name, figure in (("throughput", throughput_figure), ("quality", quality_figure),
                         ("frontier", frontier_figure)):
        fig = figure(results)
        fig.savefig(out / f"{name}.png", dpi=110)
        _plt().close(fig)
    # surrogateescape: the command's arguments and paths the locale could not decode, as the bytes they were
    (out / "report.md").write_text(markdown(results), encoding="utf-8", errors="surrogateescape")
