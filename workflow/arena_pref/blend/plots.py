"""Figures for the Snakemake report: per-fold scores and calibration of the OOF blend."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # no display on cluster nodes or CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from arena_pref import LABELS  # noqa: E402
from arena_pref.atomic import atomic_path  # noqa: E402
from arena_pref.metrics import calibration_table  # noqa: E402


def _save(fig, path):
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)


def plot_fold_scores(metrics, path):
    """OOF log loss per fold for each model and the blend, against the prior's."""
    series = {name: m["folds"] for name, m in metrics["models"].items()}
    series["blend"] = metrics["blend"]["folds"]
    n_folds = len(series["blend"])
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * n_folds + 2), 4))
    for k, (name, scores) in enumerate(series.items()):
        ax.bar(np.arange(n_folds) + k * width, scores, width, label=name)
    ax.axhline(metrics["prior_log_loss"], color="black", linestyle="--", label="prior")
    ax.set_xticks(np.arange(n_folds) + width * (len(series) - 1) / 2)
    ax.set_xticklabels([f"fold {f}" for f in range(n_folds)])
    ax.set_ylabel("OOF log loss (lower is better)")
    low = min(min(s) for s in series.values())
    ax.set_ylim(max(0, low - 0.1), max(metrics["prior_log_loss"], *map(max, series.values())) + 0.05)
    ax.legend(fontsize="small", ncol=2)
    ax.set_title("Out-of-fold log loss per fold")
    _save(fig, path)


def plot_calibration(oof_blend, path, n_bins=10):
    """Reliability diagram of the OOF blend: predicted probability vs observed frequency."""
    probs = oof_blend[["a", "b", "tie"]].to_numpy()
    table = calibration_table(oof_blend["label"].to_numpy(), probs, n_bins=n_bins)
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfect")
    for cls, name in enumerate(LABELS):
        rows = table[table["class"] == cls]
        ax.plot(rows["mean_predicted"], rows["observed"], marker="o", label=name)
    ax.set_xlabel("predicted probability")
    ax.set_ylabel("observed frequency")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(fontsize="small")
    ax.set_title("Calibration of the OOF blend")
    _save(fig, path)


def plot_position_consistency(table, path):
    """Each member's flip rate and mean |p(A wins | first) - p(A wins | second)| before TTA."""
    shown = table.dropna(subset=["flip_rate"])
    fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(shown) + 2), 4))
    x = np.arange(len(shown))
    ax.bar(x - 0.2, shown["flip_rate"], 0.4, label="winner flips when A and B swap")
    ax.bar(x + 0.2, shown["mean_abs_diff_a"], 0.4, label="mean |p(A | first) - p(A | second)|")
    ax.set_xticks(x)
    ax.set_xticklabels(shown["model"], rotation=20, ha="right")
    ax.set_ylim(0, 1)
    ax.legend(fontsize="small")
    missing = sorted(set(table["model"]) - set(shown["model"]))
    note = f" (no swapped order: {', '.join(missing)})" if missing else ""
    ax.set_title(f"Position consistency before TTA, OOF rows{note}", fontsize="medium")
    _save(fig, path)


def plot_loss_by_group(by_group, prior_log_loss, path):
    """The blend's OOF log loss by length quartile, by number of turns and by true class."""
    kinds = list(dict.fromkeys(by_group["by"]))
    fig, axes = plt.subplots(1, len(kinds), figsize=(4 * len(kinds), 4), sharey=True, squeeze=False)
    for ax, kind in zip(axes[0], kinds):
        part = by_group[by_group["by"] == kind]
        ax.bar(range(len(part)), part["log_loss"])
        ax.set_xticks(range(len(part)))
        ax.set_xticklabels([f"{g}\n({n} rows)" for g, n in zip(part["group"], part["rows"])], fontsize="small")
        ax.axhline(prior_log_loss, color="black", linestyle="--", label="prior")
        ax.set_title(f"by {kind}")
    axes[0][0].set_ylabel("OOF log loss of the blend")
    axes[0][0].legend(fontsize="small")
    _save(fig, path)
