"""Cross-validation folds: stratified by label, grouped by prompt.

The Arena data holds the same prompt many times (different model pairs answering it).
If one copy sat in train and another in valid, out-of-fold scores would be optimistic,
so all rows sharing a prompt go to the same fold.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from arena_pref.errors import InputError

log = logging.getLogger(__name__)

UNEVEN = 0.5  # a fold below half the mean fold size is called uneven


def prompt_key(prompt):
    """Exact, hashable key for a prompt (list of turns; ``None`` turns kept as ``null``)."""
    if isinstance(prompt, str):
        return json.dumps([prompt])
    # parquet hands lists back as numpy arrays; list() makes both JSON-serialisable
    return json.dumps(list(prompt))


def assign_folds(df, n_folds, seed):
    """Return ``DataFrame[id, fold]`` (fold int64, rows in ``df``'s order).

    Rows with the same prompt share a fold; label proportions are kept close to the
    overall ones. Deterministic for a given ``seed``.
    """
    if n_folds < 2:
        raise InputError(f"n_folds must be at least 2, got {n_folds}")
    groups = df["prompt"].map(prompt_key).to_numpy()
    n_prompts = len(set(groups))
    if n_prompts < n_folds:
        raise InputError(
            f"cannot make {n_folds} folds from {n_prompts} distinct prompt(s) "
            f"({len(df)} rows): every fold needs at least one prompt"
        )
    y = df["label"].to_numpy()
    largest = np.bincount(y).max() if len(y) else 0
    if largest < n_folds:
        # sklearn refuses this case; say why in the user's terms
        raise InputError(
            f"cannot make {n_folds} folds: no label occurs {n_folds} or more times (largest class has {largest} rows)"
        )
    fold = np.full(len(df), -1, dtype=np.int64)
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    for k, (_, valid_idx) in enumerate(splitter.split(np.zeros(len(df)), y, groups)):
        fold[valid_idx] = k
    sizes = np.bincount(fold, minlength=n_folds)
    if (sizes == 0).any():
        # the greedy group assignment can leave a fold empty when a few prompts hold
        # most rows; training on such a split would silently drop a fold
        raise InputError(
            f"fold assignment left fold(s) {np.flatnonzero(sizes == 0).tolist()} empty "
            f"({n_prompts} distinct prompts, {n_folds} folds): use fewer folds"
        )
    if sizes.min() < UNEVEN * sizes.mean():
        log.warning(
            "fold sizes are very uneven (%s rows): a few prompts hold most rows, and the OOF scores of "
            "small folds are noise; consider fewer folds",
            ", ".join(map(str, sizes)),
        )
    return pd.DataFrame({"id": df["id"].to_numpy(dtype=np.int64), "fold": fold})
