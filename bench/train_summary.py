"""Summarise `dllm train` runs made with the same wall-clock budget: a Markdown table and one plot.

    python bench/train_summary.py RUN_DIR [RUN_DIR ...] --out OUT_DIR

Each RUN_DIR is a `dllm train --out-dir`; its metrics.jsonl, loss.png and run_config.json are
copied into OUT_DIR/<objective>/, and OUT_DIR/summary.md and OUT_DIR/val_bpb.png compare them.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch

from common import card, command_line, git_commit, utc_now


def load(run: Path) -> dict:
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    cfg = json.loads((run / "run_config.json").read_text())
    train = [r for r in recs if "loss" in r]
    val = [r for r in recs if "val_bpb" in r]
    return {"name": cfg["objective"]["name"], "cfg": cfg, "train": train, "val": val, "dir": run}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path, help="output folders of `dllm train` runs")
    ap.add_argument("--out", type=Path, required=True, help="folder for the summary and its plots")
    ap.add_argument("--note", default="", help="a line about the conditions of the measurement")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    runs = [load(r) for r in args.runs]

    rows = ["| objective | model | steps | tokens | wall s | train s | tokens/s (train) | val bits/token | val bpb | val bpb (EMA) |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        last_t, last_v = r["train"][-1], r["val"][-1]
        m = r["cfg"]["model"]
        tps = last_t["tokens"] / sum((x["tokens"] - p["tokens"]) / x["tok_per_s"]
                                     for p, x in zip([{"tokens": 0}] + r["train"], r["train"]))
        rows.append(f"| {r['name']} | {m['arch']} {m['hidden']}x{m['layers']} | {last_v['step']} | {last_v['tokens']:,} | "
                    f"{max(last_v['elapsed'], last_t['elapsed']):.0f} | {last_v['tokens'] / tps:.0f} | {tps:,.0f} | {last_v['val_bits_per_token']:.3f} | "
                    f"{last_v['val_bpb']:.3f} | {last_v.get('val_bpb_ema', float('nan')):.3f} |")
        dst = args.out / r["name"]
        dst.mkdir(exist_ok=True)
        for f in ("metrics.jsonl", "loss.png", "run_config.json"):
            shutil.copy(r["dir"] / f, dst / f)

    c = runs[0]["cfg"]["train"]
    head = ["# Tiny-model training at an equal wall-clock budget",
            "",
            f"Corpus: {runs[0]['cfg']['data']['train_bytes']:,} training bytes / {runs[0]['cfg']['data']['val_bytes']:,} "
            f"validation bytes (whole files held out), corpus hash `{runs[0]['cfg']['corpus_hash'][:16]}`, "
            f"{c['tokenizer']} tokenizer" + (f" ({c['bpe_vocab_size']} tokens)." if c["tokenizer"] == "bpe" else "."),
            f"Settings: seq_len {c['seq_len']}, batch {c['batch_size']}, lr {c['lr']} ({c['schedule']}, warm-up {c['warmup']}), "
            f"max_time {c['max_time']} s, validation on {c['eval_batches'] * c['batch_size']} fixed windows with fixed noise.",
            *(f"Run {r['name']}: started {p['started']} on {p['card']}, torch {p['torch']}, commit {p['commit']}: "
              f"`{p['command']}`." for r in runs for p in [r["cfg"].get("provenance")] if p),
            f"Summarised {utc_now()} by `{command_line()}`" +
            ("." if all("provenance" in r["cfg"] for r in runs) else
             f" on {card('cuda' if torch.cuda.is_available() else 'cpu')}, torch {torch.__version__}, commit "
             f"{git_commit()} (runs without a provenance record were trained elsewhere or earlier)."),
            "Diffusion rows are upper bounds (ELBO); the AR row is the exact NLL.",
            "tokens/s (train) counts optimizer steps only (validation and checkpoint time excluded).",
            ""]
    if args.note:
        head += [args.note, ""]
    # UTF-8 under any locale; the commands' arguments the locale could not decode, as the bytes they were
    (args.out / "summary.md").write_text("\n".join(head + rows) + "\n", encoding="utf-8", errors="surrogateescape")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in runs:
        ax.plot([v["elapsed"] for v in r["val"]], [v["val_bpb"] for v in r["val"]], marker="o", ms=3, label=r["name"])
    ax.set_xlabel("wall-clock seconds")
    ax.set_ylabel("validation bits per byte")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out / "val_bpb.png", dpi=110)
    # the file's bytes: an ASCII locale's stdout cannot encode its non-ASCII text
    sys.stdout.buffer.write((args.out / "summary.md").read_bytes() + b"\n")


if __name__ == "__main__":
    main()
