"""What a fold trains toward: its rows' labels, and soft targets from teachers.

Distillation (``distill``): each training row also has the teacher's probabilities for it, taken
from the teacher's OOF predictions, so made by the teacher fold that did not train on that row;
the loss is ``alpha * KL(teacher || model) + (1 - alpha) * CE(label)``. Pseudo-labels
(``pseudo_labels``): unlabelled pairs (``data.extra_csv``) with a teacher's averaged test-time
predictions as their only target (``alpha`` 1, no label). The loss itself is
:func:`arena_pref.train.trainer.soft_target_loss`. Light (no torch): the steps build targets from files.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from arena_pref import PROB_COLUMNS, TTA_COLUMNS
from arena_pref.errors import InputError

NO_LABEL = -1  # a pseudo-labelled row (counted as a row by the Trainer, unlike -100)
SWAP = np.array([1, 0, 2])  # class index in the (B, A) order: A wins <-> B wins, tie stays


@dataclass(frozen=True)
class Targets:
    """Per training row: ``labels`` (int64, NO_LABEL on pseudo rows); with teachers also ``soft``
    (float64 (n, 3) teacher probabilities in the row's order) and ``alpha`` (float64 (n,): the
    weight of the KL term; 0 where a row has no teacher probabilities)."""

    labels: np.ndarray
    soft: np.ndarray | None = None
    alpha: np.ndarray | None = None

    def swapped(self):
        """The same rows with A and B exchanged."""
        return Targets(_swap_labels(self.labels), None if self.soft is None else self.soft[:, SWAP], self.alpha)

    def concat(self, other):
        """These rows, then ``other``'s."""
        if (self.soft is None) != (other.soft is None):
            self, other = self.with_soft(), other.with_soft()
        return Targets(
            np.concatenate([self.labels, other.labels]),
            None if self.soft is None else np.vstack([self.soft, other.soft]),
            None if self.alpha is None else np.concatenate([self.alpha, other.alpha]),
        )

    def with_soft(self):
        """The same targets with explicit soft columns (zero weight where there were none)."""
        if self.soft is not None:
            return self
        n = len(self.labels)
        return Targets(self.labels, np.full((n, 3), 1 / 3), np.zeros(n))


def _swap_labels(labels):
    return np.where(labels >= 0, SWAP[np.clip(labels, 0, 2)], NO_LABEL)


def hard(labels):
    return Targets(np.asarray(labels, dtype=np.int64))


def teacher_probs(paths, *, name):
    """A teacher's prediction files (OOF or test-pass format, :mod:`predictions`) as one frame of
    ``a, b, tie`` indexed by id: the TTA-averaged columns where the files have them. Each row must
    be a probability distribution and appear once (``name``: the teacher, for errors)."""
    frames = [pd.read_parquet(p).assign(_file=str(p)) for p in paths]
    df = pd.concat(frames, ignore_index=True)
    cols = TTA_COLUMNS if set(TTA_COLUMNS) <= set(df.columns) else PROB_COLUMNS
    dup = df[df["id"].duplicated(keep=False)]
    if len(dup):
        raise InputError(
            f"teacher '{name}': row id {dup['id'].iloc[0]} is in more than one of its files "
            f"({', '.join(dup['_file'].unique()[:2])})"
        )
    probs = df[cols].to_numpy(dtype=np.float64)
    bad = ~(np.isfinite(probs).all(axis=1) & (probs >= 0).all(axis=1) & (np.abs(probs.sum(axis=1) - 1) < 1e-3))
    if bad.any():
        row = df.iloc[int(np.argmax(bad))]
        raise InputError(
            f"{row['_file']}: row id {row['id']}: columns {', '.join(cols)}: teacher '{name}' gives "
            f"{probs[bad][0].round(4).tolist()}, not probabilities summing to 1"
        )
    return pd.DataFrame(probs, index=df["id"].to_numpy(), columns=PROB_COLUMNS)


def _lookup(teacher, ids, *, name, what):
    """The ``teacher`` frame's probabilities of rows ``ids``; every row must have them."""
    missing = ~np.isin(ids, teacher.index.to_numpy())
    if missing.any():
        raise InputError(
            f"teacher '{name}': its {what} lack {int(missing.sum())} row(s), e.g. ids {ids[missing][:5].tolist()}"
        )
    return teacher.loc[ids, PROB_COLUMNS].to_numpy(dtype=np.float64)


def distilled(ids, labels, teacher, *, alpha, name):
    """Targets of labelled rows ``ids`` with the ``teacher`` frame's probabilities (by id) and
    weight ``alpha`` (``name``: the teacher, for errors)."""
    ids = np.asarray(ids, dtype=np.int64)
    soft = _lookup(teacher, ids, name=name, what="OOF predictions (made with this run's folds?)")
    return Targets(np.asarray(labels, dtype=np.int64), soft, np.full(len(ids), float(alpha)))


def pseudo(ids, teacher, *, name):
    """Targets of unlabelled rows ``ids``: the teacher's probabilities alone (alpha 1, no label)."""
    ids = np.asarray(ids, dtype=np.int64)
    soft = _lookup(teacher, ids, name=name, what="pseudo-labels")
    return Targets(np.full(len(ids), NO_LABEL, dtype=np.int64), soft, np.ones(len(ids)))
