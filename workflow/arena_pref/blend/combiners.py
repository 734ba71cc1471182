"""Combiners: how the members' probabilities become one (given, equal or fitted weights, a stacker),
optionally followed by a temperature, and how a combiner is fitted without the rows it predicts.

Probabilities are ``(n, 3)`` arrays in the class order of :data:`arena_pref.LABELS`; ``probs`` is
``{member: (n, 3) array}``. Every fitted parameter is plain JSON data (the blender file keeps it).
"""

from __future__ import annotations

import typing
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize, minimize_scalar

from arena_pref import LABELS
from arena_pref.errors import InputError
from arena_pref.metrics import EPS, MIRROR, clip_probs, log_loss, tta_average, with_all_classes

METHODS = ("stack", "weights", "optimize")
TEMPERATURE_BOUNDS = (0.05, 20.0)


@dataclass(frozen=True)
class Combiner:
    """A way to turn the members' probabilities into one: ``fit(probs, y, folds) -> params`` and
    ``apply(params, probs) -> (n, 3)``; ``describe(params)`` for metrics.json."""

    fit: typing.Callable
    apply: typing.Callable
    describe: typing.Callable = lambda params: {}


def combiner(method, *, weights=None, stack_C=1.0, calibrate=False):
    """The :class:`Combiner` of a blend method (:data:`METHODS`), followed by a temperature when
    ``calibrate``: ``"stack"`` (a logistic regression over the members' log-probabilities, inverse
    regularisation ``stack_C``), ``"weights"`` (``weights``, normalised; equal weights when None) or
    ``"optimize"`` (weights fitted on the rows). Applying needs only the method and ``calibrate``."""
    if method == "stack":
        base = Combiner(
            fit=lambda probs, y, folds: fit_stacker(probs, y, C=stack_C),
            apply=apply_stacker,
            describe=lambda params: {"stack_C": float(stack_C), **describe_stacker(params)},
        )
    elif method == "optimize":
        base = Combiner(fit=lambda probs, y, folds: optimize_weights(probs, y), apply=_weighted, describe=_normalised)
    else:
        base = Combiner(
            fit=lambda probs, y, folds: dict(weights) if weights is not None else {m: 1.0 for m in probs},
            apply=_weighted,
            describe=_normalised,
        )
    return _calibrated(base) if calibrate else base


def cross_fit(combiner, probs, y, folds):
    """Each fold's rows combined by a ``combiner`` fitted on the other folds' rows."""
    out = np.empty((len(y), len(LABELS)))
    for k in np.unique(folds):
        fit_rows = folds != k
        params = combiner.fit(_rows(probs, fit_rows), y[fit_rows], folds[fit_rows])
        out[~fit_rows] = combiner.apply(params, _rows(probs, ~fit_rows))
    return out


def nested(combiner, probs, y, folds):
    """``without(k)``: the rows outside fold k, cross-fitted among themselves (each of their folds
    combined by a ``combiner`` fitted on neither it nor fold k), for choices about fold k that its
    labels must not sway."""

    def without(k):
        keep = folds != k
        return cross_fit(combiner, _rows(probs, keep), y[keep], folds[keep])

    return without


def few(values, n=5):
    """Up to ``n`` of ``values``, sorted, for a one-line message."""
    values = sorted(values)
    more = f" (and {len(values) - n} more)" if len(values) > n else ""
    return ", ".join(map(str, values[:n])) + more


# --------------------------------------------------------------------------- weights


def blend(probs, weights):
    """Weighted average of ``{name: (n, 3) array}``; weights are normalised to sum 1.

    Every model needs a weight (0 allowed) and every weighted model must be present.
    """
    unweighted = [m for m in probs if m not in weights]
    if unweighted:
        raise InputError(f"no blend weight for model(s): {few(unweighted)}")
    absent = [m for m in weights if m not in probs]
    if absent:
        raise InputError(f"blend weights name model(s) without predictions: {few(absent)}")
    w = np.array([float(weights[m]) for m in probs])
    if not np.isfinite(w).all() or (w < 0).any():
        raise InputError(f"blend weights must be finite and non-negative, got {dict(weights)}")
    if w.sum() <= 0:
        raise InputError(f"blend weights must not all be zero, got {dict(weights)}")
    arrays = [np.asarray(p, dtype=np.float64) for p in probs.values()]
    shapes = {p.shape for p in arrays}
    if len(shapes) != 1:
        raise InputError(f"models' probability arrays differ in shape: {sorted(shapes)}")
    return sum(wi * p for wi, p in zip(w / w.sum(), arrays))


def optimize_weights(oof, y):
    """Non-negative weights summing to 1 that minimise the OOF log loss of the blend.

    The loss is convex in the weights, so SLSQP on the simplex from equal weights finds
    the optimum; deterministic (no random start).
    """
    names = list(oof)
    if not names:
        raise InputError("no models to blend")
    y = np.asarray(y, dtype=np.int64)
    rows = np.arange(len(y))
    # only the true class's probability enters the loss: q[i, m] = P_m[i, y_i]
    q = np.column_stack([clip_probs(oof[m])[rows, y] for m in names])

    def loss_and_grad(w):
        p = np.maximum(q @ w, EPS)
        return -np.mean(np.log(p)), -(q / p[:, None]).mean(axis=0)

    k = len(names)
    res = minimize(
        loss_and_grad,
        np.full(k, 1 / k),
        jac=True,
        method="SLSQP",
        bounds=[(0.0, 1.0)] * k,
        constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1, "jac": lambda w: np.ones(k)}],
        options={"ftol": 1e-12, "maxiter": 500},
    )
    w = np.clip(res.x, 0.0, None)
    w = w / w.sum()
    # guard against an early SLSQP stop: never return worse than the best single model
    best_single = np.eye(k)[np.argmin([loss_and_grad(e)[0] for e in np.eye(k)])]
    if loss_and_grad(best_single)[0] < loss_and_grad(w)[0]:
        w = best_single
    return {m: float(wi) for m, wi in zip(names, w)}


def _weighted(weights, probs):
    return blend(probs, weights)


def _normalised(weights):
    total = sum(float(v) for v in weights.values())
    return {"weights": {m: float(v) / total for m, v in weights.items()}}


# --------------------------------------------------------------------------- temperature


def apply_temperature(probs, temperature):
    """``softmax(log p / T)``: T > 1 softens over-confident probabilities, T < 1 sharpens."""
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    z = np.log(clip_probs(probs)) / temperature
    z -= z.max(axis=1, keepdims=True)  # avoid overflow in exp for small T
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def fit_temperature(probs, y):
    """Temperature in :data:`TEMPERATURE_BOUNDS` minimising the log loss on ``(probs, y)``."""
    res = minimize_scalar(
        lambda t: log_loss(y, apply_temperature(probs, t)),
        bounds=TEMPERATURE_BOUNDS,
        method="bounded",
        options={"xatol": 1e-6},
    )
    return float(res.x)


def _calibrated(combiner):
    """``combiner`` followed by a temperature fitted on its cross-fitted predictions of the rows it
    was fitted on (with one fold only, its in-sample predictions)."""

    def fit(probs, y, folds):
        params = combiner.fit(probs, y, folds)
        inner = cross_fit(combiner, probs, y, folds) if len(np.unique(folds)) > 1 else combiner.apply(params, probs)
        return {"combined": params, "temperature": fit_temperature(inner, y)}

    def apply(params, probs):
        return apply_temperature(combiner.apply(params["combined"], probs), params["temperature"])

    return Combiner(
        fit=fit,
        apply=apply,
        describe=lambda params: {**combiner.describe(params["combined"]), "temperature": float(params["temperature"])},
    )


def _rows(probs, mask):
    return {m: p[mask] for m, p in probs.items()}


# --------------------------------------------------------------------------- the stacker


def fit_stacker(probs, y, *, C):
    """A multinomial logistic regression (L2, inverse strength ``C``) from the members'
    log-probabilities to the label, fitted on the rows and their mirror images (labels A and B
    exchanged), so that it treats the two answers alike. (Rows of one class only, all ties: the
    class frequencies.)

    Returned as plain data (members, classes, coefficients, intercepts, the inputs' spread), so the
    blender file is JSON and loads under any scikit-learn version."""
    from sklearn.linear_model import LogisticRegression

    names = list(probs)
    x = np.vstack([_stack_inputs(probs, names), _stack_inputs(probs, names, mirror=True)])
    y = np.asarray(y, dtype=np.int64)
    labels = np.concatenate([y, MIRROR[y]])
    classes = np.unique(labels)
    if len(classes) > 1:
        model = LogisticRegression(C=C, max_iter=1000).fit(x, labels)
        coef, intercept = model.coef_, model.intercept_
    else:
        coef, intercept = np.zeros((1, x.shape[1])), np.zeros(1)
    return {
        "members": names,
        "classes": classes.tolist(),
        "coef": coef.tolist(),
        "intercept": intercept.tolist(),
        "spread": x.std(axis=0).tolist(),
    }


def apply_stacker(params, probs):
    """Stacked probabilities, averaged with the mirrored rows' mapped back (exactly symmetric); a
    class absent from the stacker's training rows gets 0 (clipped later)."""
    names = params["members"]

    def predict(x):
        return with_all_classes(params["classes"], _stacker_proba(params, x))

    return tta_average(predict(_stack_inputs(probs, names)), predict(_stack_inputs(probs, names, mirror=True)))


def describe_stacker(params):
    """How much the stacker leans on each member: the mean absolute standardised coefficient of its
    log-probabilities (coefficient times the input's spread: a member that hardly moves from the
    prior weighs little however large its coefficients)."""
    weight = np.abs(np.asarray(params["coef"])) * np.asarray(params["spread"])
    return {"stack_reliance": {m: float(weight[:, 3 * i : 3 * i + 3].mean()) for i, m in enumerate(params["members"])}}


def _stack_inputs(probs, names, *, mirror=False):
    """The stacker's inputs: each member's log-probabilities (of the mirrored rows: A and B
    exchanged)."""
    order = MIRROR if mirror else [0, 1, 2]
    return np.hstack([np.log(clip_probs(probs[m]))[:, order] for m in names])


def _stacker_proba(params, x):
    """``predict_proba`` of the fitted logistic regression, from its coefficients: the softmax of
    the linear scores (one score: the binary model's logistic of the second class)."""
    z = x @ np.asarray(params["coef"]).T + np.asarray(params["intercept"])
    if len(params["classes"]) == 1:
        return np.ones((len(x), 1))
    if z.shape[1] == 1:
        z = np.hstack([np.zeros_like(z), z])
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)
