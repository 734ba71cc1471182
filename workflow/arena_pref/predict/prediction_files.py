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


def submitted_files(inputs, test_sources):
    """``{model: {source: path}}`` of the blend's (or submit's) inputs named ``test_<source>_<model>``,
    for each member's sources (``folds``, ``full``: blend.test_from)."""
    return {m: {s: getattr(inputs, f"test_{s}_{m}") for s in sources} for m, sources in test_sources.items()}


def submitted_prediction(folds_average, full_pass, tta):
    """A member's test prediction from what it submits (blend.test_from): its folds' averaged
    prediction (final probabilities), its full-data pass (TTA-averaged where ``tta``), or, both
    given, the two averaged half each. Either may be None."""
    final = [] if folds_average is None else [folds_average[["id", *PROB_COLUMNS]]]
    if full_pass is not None:
        final.append(average_folds([full_pass], tta))
    if not final:
        raise ValueError("a member's test prediction needs its folds' average or its full-data pass")
    return average_folds(final, tta=False)


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
