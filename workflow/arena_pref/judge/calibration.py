"""A judge's answer logits made into calibrated probabilities, per fold.

A zero-shot judge's probabilities (softmax over its three answer logits) are badly calibrated:
the model is over- or under-confident and favours an answer or a position. Each fold fits a
temperature T > 0 and class biases b (b_tie fixed at 0) minimising the log loss of
softmax(logits / T + b) on the training rows of the fold (the rows *not* in it), and applies them
to the fold's held-out rows (its OOF file) and to the test rows (its test file).

Raw score files (``results/judge/<model>/<split>.parquet``, :mod:`arena_pref.judge.zero_shot`) hold ``id``
and the logits of the answer tokens ``A, B, tie`` of each sequence as shown: ``ab_a, ab_b,
ab_tie`` for (A, B) as given and, where the swapped order was scored, ``ba_a, ba_b, ba_tie`` for
the sequence showing B first (so ``ba_a`` is the logit of "the answer shown first", original B).
The calibration is fitted in that "as shown" frame over both orders, each row twice with its label
mirrored for the swapped order: a judge's preference for the first position is then a bias the
fit can remove. Its probabilities per order are what the other members write (``a, b, tie`` and
the swapped order mapped back and averaged in ``a_tta, b_tta, tie_tta``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from arena_pref.errors import InputError
from arena_pref.metrics import MIRROR, log_loss
from arena_pref.predict.prediction_files import frame_from_probs

AB_COLUMNS = ["ab_a", "ab_b", "ab_tie"]
BA_COLUMNS = ["ba_a", "ba_b", "ba_tie"]
MIN_T, MAX_T = 1e-3, 1e3


@dataclass(frozen=True)
class Calibration:
    temperature: float
    bias: tuple  # (b_a, b_b, 0.0)

    def to_json(self):
        return {**asdict(self), "bias": list(self.bias)}

    @classmethod
    def from_json(cls, data):
        return cls(temperature=float(data["temperature"]), bias=tuple(float(b) for b in data["bias"]))


IDENTITY = Calibration(1.0, (0.0, 0.0, 0.0))


def load(path):
    """A calibration saved by the judge_fold rule (``calibration.json``); a file that is not one is
    an :class:`InputError` naming it."""
    import json

    try:
        with open(path, encoding="utf-8") as fh:
            fitted = Calibration.from_json(json.load(fh))
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as err:
        raise InputError(
            f"file '{path}': not a judge calibration (temperature, bias) written by judge_fold "
            f"({type(err).__name__}: {err})"
        ) from None
    if not fitted.temperature > 0 or len(fitted.bias) != 3:
        raise InputError(f"file '{path}': a calibration needs a temperature > 0 and three biases")
    return fitted


def softmax(z):
    z = np.asarray(z, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def apply(calibration, logits):
    """softmax(logits / T + b), (n, 3)."""
    logits = np.asarray(logits, dtype=np.float64)
    return softmax(logits / calibration.temperature + np.asarray(calibration.bias))


def _loss_and_grad(params, logits, onehot):
    """Mean log loss of softmax(logits * exp(-params[0]) + (params[1], params[2], 0)) and its
    gradient in params (log T, b_a, b_b)."""
    inv_t = np.exp(-params[0])
    z = logits * inv_t + np.array([params[1], params[2], 0.0])
    z = z - z.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    loss = -np.mean(np.sum(onehot * log_p, axis=1))
    d = (np.exp(log_p) - onehot) / len(logits)  # d loss / d z
    return loss, np.array([np.sum(d * (-logits * inv_t)), d[:, 0].sum(), d[:, 1].sum()])


def fit(logits, y):
    """The :class:`Calibration` minimising the log loss of ``y`` (classes 0..2) under
    softmax(logits / T + b)."""
    from scipy.optimize import minimize

    logits = np.asarray(logits, dtype=np.float64)
    logits = logits - logits.mean(axis=1, keepdims=True)  # softmax does not see a row's offset
    onehot = np.eye(3)[np.asarray(y, dtype=np.int64)]
    bounds = [(np.log(MIN_T), np.log(MAX_T)), (None, None), (None, None)]
    res = minimize(
        _loss_and_grad,
        np.zeros(3),
        args=(logits, onehot),
        jac=True,
        method="L-BFGS-B",
        bounds=bounds,
        options={"maxiter": 500, "gtol": 1e-9, "ftol": 1e-13},
    )
    t, b_a, b_b = float(np.exp(res.x[0])), float(res.x[1]), float(res.x[2])
    return Calibration(temperature=t, bias=(b_a, b_b, 0.0))


def shown_frame(raw, labels):
    """Logits and labels in the "as shown" frame: each row's (A, B) logits with its label, and
    where the swapped order was scored its (B, A) logits with the mirrored label."""
    y = raw["id"].map(labels).to_numpy()
    if np.isnan(y.astype(np.float64)).any():
        raise InputError(f"judge scores of ids without a label: {raw['id'][pd.isna(y)].head().tolist()}")
    y = y.astype(np.int64)
    logits, ys = [raw[AB_COLUMNS].to_numpy(np.float64)], [y]
    if set(BA_COLUMNS) <= set(raw.columns):
        logits.append(raw[BA_COLUMNS].to_numpy(np.float64))
        ys.append(MIRROR[y])
    return np.vstack(logits), np.concatenate(ys)


def predict_frame(calibration, raw, tta):
    """A prediction file (``a, b, tie`` and with ``tta`` the ``*_tta`` columns) from raw scores."""
    probs = [apply(calibration, raw[AB_COLUMNS])]
    if tta:
        if not set(BA_COLUMNS) <= set(raw.columns):
            raise InputError("TTA needs the swapped order's judge scores, and the score file has none")
        probs.append(apply(calibration, raw[BA_COLUMNS]))
    return frame_from_probs(raw, np.vstack(probs), tta)


def calibrate_fold(train_raw, labels, assignment, fold):
    """Fold ``fold``: the calibration fitted on the training rows outside it and its held-out rows'
    predictions (an OOF frame with ``fold``, both orders); the test rows are calibrated apart
    (:func:`predict_frame`, rule judge_predict), and only for a member. ``labels``,
    ``assignment``: id -> label, id -> fold. Also the held-out log loss of the raw and the
    calibrated probabilities (as given, not TTA)."""
    folds = train_raw["id"].map(assignment)
    if folds.isna().any():
        raise InputError(
            f"judge scores of training rows without a fold: ids {train_raw['id'][folds.isna()].head().tolist()}"
        )
    fit_rows, held = train_raw[folds != fold], train_raw[folds == fold].reset_index(drop=True)
    if fit_rows.empty or held.empty:
        raise InputError(f"fold {fold} has no {'training' if fit_rows.empty else 'validation'} rows")
    calibration = fit(*shown_frame(fit_rows, labels))
    oof = predict_frame(calibration, held, tta=True)
    oof.insert(1, "fold", np.int64(fold))
    y_held = held["id"].map(labels).to_numpy()
    scores = {
        "raw": log_loss(y_held, apply(IDENTITY, held[AB_COLUMNS])),
        "calibrated": log_loss(y_held, oof[["a", "b", "tie"]].to_numpy()),
    }
    return oof, calibration, scores
