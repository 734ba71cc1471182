"""Prediction files: what every member (fine-tuned backbone or pair-feature learner) writes per
fold, and how a model's fold predictions of the test set become one.

OOF files hold ``id, fold, a, b, tie, a_tta, b_tta, tie_tta``; fold test files ``id, a, b, tie``
and, with TTA, ``a_tta, b_tta, tie_tta``. Light (no torch): the feature rules use it too.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from arena_pref import PROB_COLUMNS, TTA_COLUMNS
from arena_pref.metrics import tta_average


def frame_from_probs(tokens, probs, tta):
    """``a, b, tie`` in (A, B) order and with ``tta`` also ``a_tta, b_tta, tie_tta``: the (B, A)
    prediction mapped back and averaged."""
    n = len(tokens)
    out = pd.DataFrame(probs[:n], columns=PROB_COLUMNS)
    out.insert(0, "id", tokens["id"].to_numpy(dtype=np.int64))
    if tta:
        out[TTA_COLUMNS] = tta_average(probs[:n], probs[n:])
    return out


def final_probs(pred, tta):
    """The (n, 3) probabilities a model contributes: TTA-averaged when TTA is on."""
    return pred[TTA_COLUMNS if tta else PROB_COLUMNS].to_numpy()


def average_folds(preds, tta):
    """Average per-fold test predictions (frames with identical ids) into one frame."""
    ids = preds[0]["id"].to_numpy()
    for p in preds[1:]:
        if not np.array_equal(p["id"].to_numpy(), ids):
            raise ValueError("fold predictions cover different test ids")
    mean = np.mean([final_probs(p, tta) for p in preds], axis=0)
    out = pd.DataFrame(mean, columns=PROB_COLUMNS)
    out.insert(0, "id", ids)
    return out
