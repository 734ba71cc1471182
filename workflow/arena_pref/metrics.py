"""Scores for 3-class preference predictions (0 = A wins, 1 = B wins, 2 = tie).

Probabilities are ``(n, 3)`` arrays in the class order of :data:`arena_pref.LABELS`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from arena_pref import LABELS

EPS = 1e-7
"""Submission probabilities are clipped to ``[EPS, 1 - EPS]`` and renormalised.

Log loss punishes a confident wrong answer without bound (``-log 0``); clipping caps a
single row's loss at ``-log(EPS)`` (about 16.1) while costing a confidently right row at
most about ``2 * EPS``. The scores here clip the same way, so an OOF log loss is the one
the submission would get.
"""

N_CLASSES = len(LABELS)

MIRROR = np.array([1, 0, 2])
"""Class (or probability column) of the mirrored row, A and B exchanged: A wins <-> B wins, a tie
stays a tie. ``MIRROR[y]`` mirrors labels, ``probs[:, MIRROR]`` probabilities."""


def _check(y, probs):
    y = np.asarray(y)
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] != N_CLASSES:
        raise ValueError(f"probabilities must have shape (n, {N_CLASSES}), got {probs.shape}")
    if y.shape != (probs.shape[0],):
        raise ValueError(f"{len(y)} labels for {probs.shape[0]} probability rows")
    if not np.isin(y, np.arange(N_CLASSES)).all():
        raise ValueError(f"labels must be in 0..{N_CLASSES - 1}")
    return y.astype(np.int64), probs


def clip_probs(probs):
    """Clip to ``[EPS, 1 - EPS]`` and renormalise rows to sum to 1 (as in the submission)."""
    p = np.clip(np.asarray(probs, dtype=np.float64), EPS, 1 - EPS)
    return p / p.sum(axis=1, keepdims=True)


def log_loss(y, probs):
    """Mean multi-class log loss after :func:`clip_probs`."""
    y, probs = _check(y, probs)
    p = clip_probs(probs)
    return float(-np.mean(np.log(p[np.arange(len(y)), y])))


def accuracy(y, probs):
    """Fraction of rows whose most probable class is the label."""
    y, probs = _check(y, probs)
    return float(np.mean(probs.argmax(axis=1) == y))


def class_frequencies(y):
    """Label frequencies of ``y`` over the three classes (the class prior)."""
    y = np.asarray(y, dtype=np.int64)
    return np.bincount(y, minlength=N_CLASSES) / len(y)


def with_all_classes(classes, probs):
    """``(n, 3)`` probabilities from a classifier's ``predict_proba`` over ``classes`` (its
    ``classes_``): a class it never saw in training (no ties in the data, say) gets 0."""
    out = np.zeros((len(probs), N_CLASSES))
    out[:, np.asarray(classes, dtype=np.int64)] = probs
    return out


def prior_log_loss(y_train):
    """Log loss on ``y_train`` of always predicting its own label frequencies (the baseline)."""
    y = np.asarray(y_train, dtype=np.int64)
    return log_loss(y, np.tile(class_frequencies(y), (len(y), 1)))


def tta_average(probs_ab, probs_ba):
    """Average predictions on the original and the A/B-swapped input.

    In ``probs_ba`` the responses were shown B first, so its class 0 means "original B
    wins": columns 0 and 1 are swapped back before averaging; tie stays tie.
    """
    probs_ab = np.asarray(probs_ab, dtype=np.float64)
    probs_ba = np.asarray(probs_ba, dtype=np.float64)
    if probs_ab.shape != probs_ba.shape:
        raise ValueError(f"shape mismatch: {probs_ab.shape} vs {probs_ba.shape}")
    return (probs_ab + probs_ba[:, MIRROR]) / 2


def fold_scores(y, probs, folds):
    """Per-fold log losses, ordered by fold number."""
    y, probs = _check(y, probs)
    folds = np.asarray(folds)
    if folds.shape != y.shape:
        raise ValueError(f"{len(folds)} fold numbers for {len(y)} rows")
    return [log_loss(y[folds == k], probs[folds == k]) for k in np.unique(folds)]


def calibration_table(y, probs, n_bins=10):
    """Reliability data: per class and probability bin, mean predicted vs observed frequency.

    Bins split ``[0, 1]`` into ``n_bins`` equal widths; empty bins are left out. Columns:
    ``class``, ``label``, ``bin``, ``bin_lower``, ``bin_upper``, ``mean_predicted``,
    ``observed``, ``count``.
    """
    y, probs = _check(y, probs)
    frames = []
    for c, name in enumerate(LABELS):
        p = probs[:, c]
        # p == 1.0 belongs to the last bin, not to a bin of its own
        bins = np.minimum((p * n_bins).astype(np.int64), n_bins - 1)
        t = (
            pd.DataFrame({"bin": bins, "p": p, "hit": (y == c).astype(np.float64)})
            .groupby("bin", sort=True)
            .agg(mean_predicted=("p", "mean"), observed=("hit", "mean"), count=("p", "size"))
            .reset_index()
        )
        t.insert(0, "class", c)
        t.insert(1, "label", name)
        t.insert(3, "bin_lower", t["bin"] / n_bins)
        t.insert(4, "bin_upper", (t["bin"] + 1) / n_bins)
        frames.append(t)
    return pd.concat(frames, ignore_index=True)
