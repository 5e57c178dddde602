"""Bar chart (PNG) of ``bench_fused.py`` JSON results: speed against torch bf16, per shape, of FC1
(grouped GEMM + SwiGLU + MXFP8 h) and FC2 in the form the fused forward runs (dense from
DENSE_MIN_TOKENS_PER_EXPERT tokens per expert, else swapped), with issue 3's goals as lines
(training FC1 1.25x, FC2 1.0x, decode 1.7x). Needs matplotlib (not a package dependency).

    python bench/plot_fused.py results/a.json [results/b.json ...] --out chart.png [--title ...]

A later file's row replaces an earlier one of the same shape (a training run, then a decode run).
"""

import argparse
import json

from shapes import DECODE  # bench/ is on sys.path as a script
from cute_moe.functional import _FusedSm90Ops

GOALS = {"FC1": 1.25, "FC2": 1.0}
DECODE_GOAL = 1.7


def forward_speedups(row):
    """(FC1, FC2) speed vs torch of the form the fused forward takes for this row's T and E."""
    dense = _FusedSm90Ops.dense_weights(row["T"], row["E"]) and "fc1_dense_speedup" in row
    return (row["fc1_dense_speedup"], row["fc2_dense_speedup"]) if dense else (row["fc1_speedup"], row["fc2_speedup"])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("json", nargs="+")
    ap.add_argument("--out", required=True)
    ap.add_argument("--title", default=None)
    args = ap.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, gpus = {}, []
    for path in args.json:
        with open(path) as f:
            data = json.load(f)
        gpus.append(data.get("gpu", "?"))
        rows.update({r["shape"]: r for r in data["rows"]})
    groups = [("training", [n for n in rows if n.split("_b")[0] not in DECODE]),
              ("decode (top-6 of B tokens)", [n for n in rows if n.split("_b")[0] in DECODE])]
    groups = [(g, names) for g, names in groups if names]
    fig, axes = plt.subplots(1, len(groups), figsize=(6 + 0.6 * len(rows), 4.2), squeeze=False,
                             gridspec_kw={"width_ratios": [len(n) for _, n in groups]})
    for ax, (group, names) in zip(axes[0], groups):
        speeds = [forward_speedups(rows[n]) for n in names]
        xs = range(len(names))
        for i, (kind, color) in enumerate((("FC1", "tab:blue"), ("FC2", "tab:orange"))):
            bars = ax.bar([x + (i - 0.5) * 0.4 for x in xs], [s[i] for s in speeds], 0.4, label=kind, color=color)
            ax.bar_label(bars, fmt="%.2f", fontsize=7)
        if group == "training":
            for kind, goal in GOALS.items():
                ax.axhline(goal, ls="--", lw=1, color="tab:blue" if kind == "FC1" else "tab:orange",
                           label=f"{kind} goal {goal}x")
        else:
            ax.axhline(DECODE_GOAL, ls="--", lw=1, color="gray", label=f"goal {DECODE_GOAL}x")
        ax.axhline(1.0, lw=0.8, color="black")
        ax.set_xticks(list(xs), names, rotation=30, ha="right", fontsize=8)
        ax.set_title(group, fontsize=10)
        ax.set_ylabel("speed vs torch bf16 (x)")
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle(args.title or f"cute_moe SM90 MXFP8 forward GEMMs vs torch bf16 ({', '.join(sorted(set(gpus)))})",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
