"""Blend per-model probabilities, calibrate them and write the submission.

Probabilities are ``(n, 3)`` arrays in the class order of :data:`arena_pref.LABELS`.
"""

from __future__ import annotations

import logging
import typing
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.optimize import minimize, minimize_scalar

from arena_pref import LABELS, PROB_COLUMNS, TTA_COLUMNS
from arena_pref.errors import InputError
from arena_pref.metrics import (
    EPS,
    MIRROR,
    accuracy,
    class_frequencies,
    clip_probs,
    fold_scores,
    log_loss,
    prior_log_loss,
    tta_average,
    with_all_classes,
)

log = logging.getLogger(__name__)

SUBMISSION_COLUMNS = ["id", *LABELS]
METHODS = ("stack", "weights", "optimize")
TEMPERATURE_BOUNDS = (0.05, 20.0)


def _few(values, n=5):
    values = sorted(values)
    more = f" (and {len(values) - n} more)" if len(values) > n else ""
    return ", ".join(map(str, values[:n])) + more


def blend(probs, weights):
    """Weighted average of ``{name: (n, 3) array}``; weights are normalised to sum 1.

    Every model needs a weight (0 allowed) and every weighted model must be present.
    """
    unweighted = [m for m in probs if m not in weights]
    if unweighted:
        raise InputError(f"no blend weight for model(s): {_few(unweighted)}")
    absent = [m for m in weights if m not in probs]
    if absent:
        raise InputError(f"blend weights name model(s) without predictions: {_few(absent)}")
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


def make_submission(ids, probs):
    """``DataFrame[id, winner_model_a, winner_model_b, winner_tie]`` in the given row order.

    Probabilities are clipped to ``[EPS, 1 - EPS]`` and renormalised, as the scores assume.
    """
    ids = np.asarray(ids, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    if probs.shape != (len(ids), len(LABELS)):
        raise InputError(f"{len(ids)} ids but probabilities of shape {probs.shape}")
    dup = pd.Series(ids)[pd.Series(ids).duplicated()].unique()
    if len(dup):
        raise InputError(f"duplicate test id(s): {_few(dup)}")
    sub = pd.DataFrame(clip_probs(probs), columns=list(LABELS))
    sub.insert(0, "id", ids)
    return sub


def validate_submission(df, test_ids):
    """Raise ``ValueError`` unless ``df`` is a well-formed submission for ``test_ids``."""
    if list(df.columns) != SUBMISSION_COLUMNS:
        raise ValueError(f"submission columns must be {SUBMISSION_COLUMNS}, got {list(df.columns)}")
    ids = pd.Series(df["id"])
    dup = ids[ids.duplicated()].unique()
    if len(dup):
        raise ValueError(f"submission repeats id(s): {_few(dup)}")
    expected = set(np.asarray(test_ids).tolist())
    got = set(ids.tolist())
    if got != expected:
        raise ValueError(
            f"submission ids differ from the test ids: missing {_few(expected - got) or 'none'}; "
            f"unexpected {_few(got - expected) or 'none'}"
        )
    p = df[list(LABELS)].to_numpy(dtype=np.float64)
    if not np.isfinite(p).all():
        raise ValueError("submission has non-finite probabilities")
    if ((p <= 0) | (p >= 1)).any():
        raise ValueError("submission probabilities must lie strictly between 0 and 1")
    worst = np.abs(p.sum(axis=1) - 1).max(initial=0.0)
    if worst > 1e-6:
        raise ValueError(f"submission rows must sum to 1 (worst is off by {worst:.3g})")


def _aligned(frame, name, kind, ids, columns):
    """``frame`` rows in the order of ``ids``, after checking ids and columns."""
    missing_cols = [c for c in ["id", *columns] if c not in frame.columns]
    if missing_cols:
        raise InputError(f"{kind} predictions of model '{name}' lack column(s) {missing_cols}")
    fid = frame["id"].astype(np.int64)
    dup = fid[fid.duplicated()].unique()
    if len(dup):
        raise InputError(f"{kind} predictions of model '{name}' repeat id(s): {_few(dup)}")
    missing, extra = set(ids) - set(fid), set(fid) - set(ids)
    if missing or extra:
        raise InputError(
            f"{kind} predictions of model '{name}' do not cover the expected ids: "
            f"missing {_few(missing) or 'none'}; unexpected {_few(extra) or 'none'}"
        )
    out = frame.set_index(fid).loc[ids]
    values = out[columns].to_numpy(dtype=np.float64)
    if not np.isfinite(values).all():
        raise InputError(f"{kind} predictions of model '{name}' contain non-finite values")
    return out


def blend_run(
    oof,
    test,
    y_by_id,
    folds_by_id,
    *,
    use_tta,
    method,
    weights=None,
    stack_C=1.0,
    calibrate=False,
    guard=True,
    post_rules=None,
):
    """The blend step: score each model, fit the blender on OOF (:func:`fit_blend`) and apply it to
    the test predictions (:func:`apply_blender`, the same function a run from trained models uses).

    ``test``: ``{name: DataFrame[id, a, b, tie]}``, same ids for every model; the other arguments
    as :func:`fit_blend`'s.

    Returns ``(submission DataFrame, metrics dict, OOF blend DataFrame[id, fold, label, a, b, tie],
    blender dict)``.
    """
    _check_members(oof, test, use_tta, method)
    blender, metrics, oof_frame = fit_blend(
        oof,
        y_by_id,
        folds_by_id,
        use_tta=use_tta,
        method=method,
        weights=weights,
        stack_C=stack_C,
        calibrate=calibrate,
        guard=guard,
        post_rules=post_rules,
    )
    submission = apply_blender(blender, test, post_rules.kinds_test if post_rules is not None else None)
    metrics["n_test"] = int(len(submission))
    return submission, metrics, oof_frame, blender


def fit_blend(
    oof,
    y_by_id,
    folds_by_id,
    *,
    use_tta,
    method,
    weights=None,
    stack_C=1.0,
    calibrate=False,
    guard=True,
    post_rules=None,
):
    """Score each model on OOF, fit the blend, optionally calibrate, apply the post-rules, and guard
    against doing worse than the class prior.

    ``oof``: ``{name: DataFrame[id, fold, a, b, tie, a_tta, b_tta, tie_tta]}`` covering exactly the
    train ids. ``y_by_id`` / ``folds_by_id``: Series of label / fold indexed by train id.
    ``use_tta[name]`` picks the model's ``*_tta`` OOF columns. ``method``: ``"stack"`` (a logistic
    regression over the members' log-probabilities, inverse regularisation ``stack_C``),
    ``"weights"`` (``weights``, normalised; equal weights when None) or ``"optimize"`` (weights
    fitted on OOF). With ``calibrate`` a temperature is fitted on the blend. ``post_rules``: a
    :class:`~arena_pref.blend.post_rules.PostRulePlan` or None. ``guard``: where the final OOF log loss
    does not beat the class prior's, the prior is what the blender predicts.

    Every fitted thing (stacker, weights, temperature, post-rule frequencies) is fitted on the other
    folds for each fold's OOF rows (nested for the temperature), and on all rows for the blender
    that predicts the test set, so the blend's OOF log loss is an honest estimate.

    Returns ``(blender dict (JSON), metrics dict, OOF blend DataFrame[id, fold, label, a, b, tie])``.
    """
    names = _check_members(oof, None, use_tta, method)
    train_ids, y, folds = _targets(y_by_id, folds_by_id)
    oof_probs, models = {}, {}
    for m in names:
        oof_probs[m], models[m] = _member(m, oof[m], train_ids, y, folds, use_tta[m])

    combiner = _combiner(method, weights, stack_C, calibrate)
    oof_blend = cross_fit(combiner, oof_probs, y, folds)
    params = combiner.fit(oof_probs, y, folds)
    summary = {"method": method, "temperature": None, **combiner.describe(params)}
    estimates = {}
    if post_rules is not None:
        oof_blend, estimates, summary["post_rules"] = post_rules.apply(oof_blend, y=y, folds=folds, train_ids=train_ids)
    summary["guard"], prior_oof = _prior_check(models, oof_blend, y, folds)
    fell_back = bool(guard and not summary["guard"]["beats_prior"])
    if fell_back:
        oof_blend = prior_oof
        log.warning("submitting the class prior instead (blend.guard)")
    summary["guard"]["fell_back"] = fell_back

    blender = {
        "format": BLENDER_FORMAT,
        "members": names,
        "tta": {m: bool(use_tta[m]) for m in names},
        "method": method,
        "calibrate": bool(calibrate),
        "params": params,
        "post_rules": {kind: p.tolist() for kind, p in estimates.items()},
        "class_prior": class_frequencies(y).tolist() if fell_back else None,
        "oof_log_loss": log_loss(y, oof_blend),
        "n_train": int(len(train_ids)),
    }
    metrics = {
        "prior_log_loss": prior_log_loss(y),
        "models": models,
        "blend": {"log_loss": log_loss(y, oof_blend), **summary, "folds": fold_scores(y, oof_blend, folds)},
        "n_train": int(len(train_ids)),
    }
    oof_frame = pd.DataFrame(oof_blend, columns=PROB_COLUMNS)
    oof_frame.insert(0, "id", train_ids)
    oof_frame.insert(1, "fold", folds)
    oof_frame.insert(2, "label", y)
    return blender, metrics, oof_frame


# --------------------------------------------------------------------------- the blender

BLENDER_FORMAT = 1
"""Version of the blender file's layout (``blender.json``): a run refuses a layout it does not know."""


def apply_blender(blender, test, kinds_test=None):
    """The submission a fitted blender (:func:`fit_blend`, or ``blender.json`` as read back) makes of
    the members' test predictions ``{name: DataFrame[id, a, b, tie]}``. ``kinds_test``: each test
    row's kind by id (:func:`~arena_pref.blend.post_rules.row_kinds`), needed where the blender carries
    post-rules."""
    names = _check_blender(blender, test)
    test_ids = test[names[0]]["id"].to_numpy(dtype=np.int64)
    if blender["class_prior"] is not None:
        probs = np.tile(np.asarray(blender["class_prior"], dtype=np.float64), (len(test_ids), 1))
    else:
        probs_by_member = {
            m: _aligned(test[m], m, "test", test_ids, PROB_COLUMNS)[PROB_COLUMNS].to_numpy(dtype=np.float64)
            for m in names
        }
        combiner = _combiner(blender["method"], None, None, blender["calibrate"])
        probs = combiner.apply(blender["params"], probs_by_member)
        if blender["post_rules"]:
            from arena_pref.blend.post_rules import set_kinds

            if kinds_test is None:
                raise InputError("the blender carries post-rules: the test rows' kinds are needed")
            probs = set_kinds(
                probs,
                kinds_test.loc[test_ids].to_numpy(),
                {k: np.asarray(p, dtype=np.float64) for k, p in blender["post_rules"].items()},
            )
    submission = make_submission(test_ids, probs)
    validate_submission(submission, test_ids)
    return submission


def weights_blender(weights, tta):
    """A blender from given weights alone (a run from trained models without a fitted blender):
    no stacker, temperature or post-rules, since nothing here has labels to fit them on."""
    return {
        "format": BLENDER_FORMAT,
        "members": sorted(weights),
        "tta": {m: bool(tta[m]) for m in sorted(weights)},
        "method": "weights",
        "calibrate": False,
        "params": {m: float(w) for m, w in weights.items()},
        "post_rules": {},
        "class_prior": None,
        "oof_log_loss": None,
        "n_train": None,
    }


def _check_blender(blender, test):
    """The blender's members, after checking its layout and that every member has test predictions."""
    check_blender(blender, {m: None for m in test})
    return list(blender["members"])


def check_blender(blender, tta, source="the blender"):
    """Raise :class:`InputError` in one line unless ``blender`` is a blender of this layout whose
    members are exactly the models of ``tta`` (model -> the run's TTA setting, or None for any),
    each fitted with the same TTA setting. ``source`` names it (its file) in the message."""
    fmt = blender.get("format") if isinstance(blender, dict) else None
    if fmt != BLENDER_FORMAT:
        raise InputError(
            f'{source}: "format" is {fmt!r}, this version reads {BLENDER_FORMAT}: fit it again '
            "(the blend rule writes results/blender.json)"
        )
    absent = [
        k for k in ("members", "tta", "method", "calibrate", "params", "post_rules", "class_prior") if k not in blender
    ]
    if absent:
        raise InputError(
            f"{source} lacks {', '.join(absent)}: was it edited? The blend rule writes results/blender.json"
        )
    names = list(blender["members"])
    missing, extra = sorted(set(names) - set(tta)), sorted(set(tta) - set(names))
    if missing or extra:
        parts = [f"no model {', '.join(missing)} in this run"] if missing else []
        parts += [f"models {', '.join(extra)} are not in it"] if extra else []
        raise InputError(f"{source} was fitted on models {', '.join(names)}: {'; '.join(parts)}")
    for m in names:
        if tta[m] is not None and bool(tta[m]) != blender["tta"].get(m):
            raise InputError(
                f"config models.{m}.predict.tta is {tta[m]}, but {source} was fitted on its predictions "
                f"with tta {blender['tta'].get(m)}: set it back, or fit a blender for this setting"
            )


# --------------------------------------------------------------------------- combiners


@dataclass(frozen=True)
class Combiner:
    """A way to turn the members' probabilities into one: ``fit(probs, y, folds) -> params`` and
    ``apply(params, probs) -> (n, 3)``; ``describe(params)`` for metrics.json."""

    fit: typing.Callable
    apply: typing.Callable
    describe: typing.Callable = lambda params: {}


def _combiner(method, weights, stack_C, calibrate):
    """The :class:`Combiner` of a blend method, followed by a temperature when ``calibrate``."""
    if method == "stack":
        combiner = Combiner(
            fit=lambda probs, y, folds: fit_stacker(probs, y, C=stack_C),
            apply=apply_stacker,
            describe=lambda params: {"stack_C": float(stack_C), **describe_stacker(params)},
        )
    elif method == "optimize":
        combiner = Combiner(
            fit=lambda probs, y, folds: optimize_weights(probs, y), apply=_weighted, describe=_normalised
        )
    else:
        combiner = Combiner(
            fit=lambda probs, y, folds: dict(weights) if weights is not None else {m: 1.0 for m in probs},
            apply=_weighted,
            describe=_normalised,
        )
    return _calibrated(combiner) if calibrate else combiner


def _weighted(weights, probs):
    return blend(probs, weights)


def _normalised(weights):
    total = sum(float(v) for v in weights.values())
    return {"weights": {m: float(v) / total for m, v in weights.items()}}


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


def cross_fit(combiner, probs, y, folds):
    """Each fold's rows combined by a ``combiner`` fitted on the other folds' rows."""
    out = np.empty((len(y), len(LABELS)))
    for k in np.unique(folds):
        fit_rows = folds != k
        params = combiner.fit(_rows(probs, fit_rows), y[fit_rows], folds[fit_rows])
        out[~fit_rows] = combiner.apply(params, _rows(probs, ~fit_rows))
    return out


def _rows(probs, mask):
    return {m: p[mask] for m, p in probs.items()}


def _stack_inputs(probs, names, *, mirror=False):
    """The stacker's inputs: each member's log-probabilities (of the mirrored rows: A and B
    exchanged)."""
    order = MIRROR if mirror else [0, 1, 2]
    return np.hstack([np.log(clip_probs(probs[m]))[:, order] for m in names])


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


# --------------------------------------------------------------------------- the prior guard


def _prior_check(models, oof_blend, y, folds):
    """The class prior's OOF log loss (each fold predicted with the other folds' frequencies) beside
    the blend's, each member flagged ``beats_prior`` with a plain warning where it does not; returns
    ``(report, the prior's OOF probabilities)``."""
    prior_oof = np.empty((len(y), len(LABELS)))
    for k in np.unique(folds):
        prior_oof[folds == k] = class_frequencies(y[folds != k])
    prior_loss, blend_loss = log_loss(y, prior_oof), log_loss(y, oof_blend)
    for m, scores in models.items():
        scores["beats_prior"] = bool(scores["log_loss_used"] < prior_loss)
        if not scores["beats_prior"]:
            log.warning(
                "model '%s' does not beat the class prior on OOF: log loss %.4f, prior %.4f",
                m,
                scores["log_loss_used"],
                prior_loss,
            )
    beats = bool(blend_loss < prior_loss)
    if not beats:
        log.warning(
            "the blend does not beat the class prior on OOF (log loss %.4f, prior %.4f)", blend_loss, prior_loss
        )
    return {"prior_oof_log_loss": prior_loss, "blend_log_loss": blend_loss, "beats_prior": beats}, prior_oof


def _check_members(oof, test, use_tta, method):
    """The models to blend, after checking they have OOF and test predictions and a TTA setting."""
    if method not in METHODS:
        raise InputError(f"unknown blend method '{method}', expected one of {list(METHODS)}")
    names = list(oof)
    if not names:
        raise InputError("no models to blend")
    if test is not None and set(test) != set(names):
        raise InputError(
            f"models with OOF but no test predictions: {_few(set(names) - set(test)) or 'none'}; "
            f"with test but no OOF predictions: {_few(set(test) - set(names)) or 'none'}"
        )
    no_flag = [m for m in names if m not in use_tta]
    if no_flag:
        raise InputError(f"no TTA setting for model(s): {_few(no_flag)}")
    return names


def _targets(y_by_id, folds_by_id):
    """Training ids, their labels and folds, checked to cover the same ids."""
    y_by_id, folds_by_id = pd.Series(y_by_id), pd.Series(folds_by_id)
    train_ids = y_by_id.index.to_numpy(dtype=np.int64)
    if not y_by_id.index.is_unique:
        raise InputError("training labels repeat ids")
    if set(folds_by_id.index) != set(train_ids):
        raise InputError("fold assignment and training labels cover different ids")
    return train_ids, y_by_id.to_numpy(dtype=np.int64), folds_by_id.loc[train_ids].to_numpy(dtype=np.int64)


def _member(m, oof, train_ids, y, folds, use_tta):
    """One model's OOF probabilities as blended (TTA or plain) and its scores."""
    frame = _aligned(oof, m, "OOF", train_ids, ["fold", *PROB_COLUMNS, *TTA_COLUMNS])
    if not (frame["fold"].to_numpy(dtype=np.int64) == folds).all():
        # a model trained on other folds leaks its training rows into the blend's OOF
        raise InputError(f"OOF predictions of model '{m}' use a different fold assignment")
    plain = frame[PROB_COLUMNS].to_numpy(dtype=np.float64)
    tta = frame[TTA_COLUMNS].to_numpy(dtype=np.float64)
    used = tta if use_tta else plain
    scores = {
        "log_loss": log_loss(y, plain),
        "log_loss_tta": log_loss(y, tta),
        "log_loss_used": log_loss(y, used),
        "accuracy": accuracy(y, used),
        "folds": fold_scores(y, used, folds),
    }
    return used, scores
