"""The blender: how the members' probabilities become the submission. The blend rule fits it on OOF
(:func:`fit_blend`, :func:`blend_run`) and writes it to ``results/blender.json``; any run applies it
(:func:`apply_blender`): the blend rule to its test predictions, a run from trained models (the
Kaggle bundle's too) to the file as read back (:func:`read_blender`).

Probabilities are ``(n, 3)`` arrays in the class order of :data:`arena_pref.LABELS`; the combiners
themselves are in :mod:`arena_pref.blend.combiners`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from arena_pref import LABELS, PROB_COLUMNS, TTA_COLUMNS, atomic
from arena_pref.blend.combiners import METHODS, combiner, cross_fit, few, nested
from arena_pref.errors import InputError
from arena_pref.metrics import accuracy, class_frequencies, clip_probs, fold_scores, log_loss, prior_log_loss

log = logging.getLogger(__name__)

BLENDER_FORMAT = 1
"""Version of the blender file's layout (``blender.json``): a run refuses a layout it does not know."""

REQUIRED_KEYS = ("members", "tta", "method", "calibrate", "params", "post_rules", "class_prior")
"""The keys every blender file has besides ``format`` (``oof_log_loss`` and ``n_train`` may be absent)."""

SUBMISSION_COLUMNS = ["id", *LABELS]


@dataclass(frozen=True)
class Blender:
    """A fitted blender, as ``blender.json`` keeps it (:meth:`to_json`, :meth:`from_json`).

    ``members``: the models it combines, in the order it was fitted on; ``tta``: model -> whether
    its TTA-averaged predictions were used; ``method`` and ``calibrate``: its combiner
    (:func:`arena_pref.blend.combiners.combiner`), whose fitted ``params`` are plain JSON data;
    ``post_rules``: row kind -> the 3 probabilities a post-rule gives its test rows (empty: none);
    ``class_prior``: the class frequencies it predicts instead where the guard fell back, else None;
    ``oof_log_loss`` and ``n_train``: what it scored on how many training rows (None: not fitted on
    labels, :meth:`from_weights`)."""

    members: tuple
    tta: dict
    method: str
    calibrate: bool
    params: dict
    post_rules: dict
    class_prior: list | None
    oof_log_loss: float | None
    n_train: int | None

    @classmethod
    def from_json(cls, data, source="the blender"):
        """The blender of a ``blender.json``'s data, after checking its layout; an :class:`InputError`
        naming ``source`` (its file) otherwise."""
        fmt = data.get("format") if isinstance(data, dict) else None
        if fmt != BLENDER_FORMAT:
            raise InputError(
                f'{source}: "format" is {fmt!r}, this version reads {BLENDER_FORMAT}: fit it again '
                "(the blend rule writes results/blender.json)"
            )
        absent = [k for k in REQUIRED_KEYS if k not in data]
        if absent:
            raise InputError(
                f"{source} lacks {', '.join(absent)}: was it edited? The blend rule writes results/blender.json"
            )
        return cls(
            members=tuple(data["members"]),
            tta=dict(data["tta"]),
            method=data["method"],
            calibrate=data["calibrate"],
            params=data["params"],
            post_rules=dict(data["post_rules"]),
            class_prior=data["class_prior"],
            oof_log_loss=data.get("oof_log_loss"),
            n_train=data.get("n_train"),
        )

    def to_json(self):
        """The blender as ``blender.json`` keeps it (format first, then the fields in order)."""
        return {
            "format": BLENDER_FORMAT,
            "members": list(self.members),
            "tta": dict(self.tta),
            "method": self.method,
            "calibrate": self.calibrate,
            "params": self.params,
            "post_rules": dict(self.post_rules),
            "class_prior": self.class_prior,
            "oof_log_loss": self.oof_log_loss,
            "n_train": self.n_train,
        }

    @classmethod
    def from_weights(cls, weights, tta):
        """A blender from given weights alone (a run from trained models without a fitted blender):
        no stacker, temperature or post-rules, since nothing here has labels to fit them on."""
        return cls(
            members=tuple(sorted(weights)),
            tta={m: bool(tta[m]) for m in sorted(weights)},
            method="weights",
            calibrate=False,
            params={m: float(w) for m, w in weights.items()},
            post_rules={},
            class_prior=None,
            oof_log_loss=None,
            n_train=None,
        )

    def check(self, tta, source="the blender"):
        """Raise :class:`InputError` in one line unless the members are exactly the models of ``tta``
        (model -> the run's TTA setting, or None for any), each fitted with the same TTA setting.
        ``source`` names the blender (its file) in the message."""
        names = list(self.members)
        missing, extra = sorted(set(names) - set(tta)), sorted(set(tta) - set(names))
        if missing or extra:
            parts = [f"no model {', '.join(missing)} in this run"] if missing else []
            parts += [f"models {', '.join(extra)} are not in it"] if extra else []
            raise InputError(f"{source} was fitted on models {', '.join(names)}: {'; '.join(parts)}")
        for m in names:
            if tta[m] is not None and bool(tta[m]) != self.tta.get(m):
                raise InputError(
                    f"config models.{m}.predict.tta is {tta[m]}, but {source} was fitted on its predictions "
                    f"with tta {self.tta.get(m)}: set it back, or fit a blender for this setting"
                )


def read_blender(path):
    """The :class:`Blender` of a ``blender.json`` (its layout checked, the file named in errors)."""
    return Blender.from_json(atomic.read_json(path), f"the blender {path}")


def write_blender(blender, path):
    """Write ``blender`` to ``path`` as ``blender.json`` (atomically)."""
    atomic.write_json(blender.to_json(), path)


# --------------------------------------------------------------------------- fitting and applying


def blend_run(oof, test, y_by_id, folds_by_id, settings, *, use_tta, rule_plan=None):
    """The blend step: score each model, fit the blender on OOF (:func:`fit_blend`) and apply it to
    the test predictions (:func:`apply_blender`, the same function a run from trained models uses).

    ``test``: ``{name: DataFrame[id, a, b, tie]}``, same ids for every model; the other arguments
    as :func:`fit_blend`'s.

    Returns ``(submission DataFrame, metrics dict, OOF blend DataFrame[id, fold, label, a, b, tie],
    Blender)``.
    """
    _check_members(oof, test, use_tta, settings.method)
    blender, metrics, oof_frame = fit_blend(oof, y_by_id, folds_by_id, settings, use_tta=use_tta, rule_plan=rule_plan)
    submission = apply_blender(blender, test, rule_plan.kinds_test if rule_plan is not None else None)
    metrics["n_test"] = int(len(submission))
    return submission, metrics, oof_frame, blender


def fit_blend(oof, y_by_id, folds_by_id, settings, *, use_tta, rule_plan=None):
    """Score each model on OOF, fit the blend, optionally calibrate, apply the post-rules, and guard
    against doing worse than the class prior.

    ``oof``: ``{name: DataFrame[id, fold, a, b, tie, a_tta, b_tta, tie_tta]}`` covering exactly the
    train ids. ``y_by_id`` / ``folds_by_id``: Series of label / fold indexed by train id.
    ``settings``: :class:`~arena_pref.settings.BlendSettings`: ``method``, ``weights`` (empty: equal),
    ``stack_C`` and ``calibrate`` pick the combiner (:func:`arena_pref.blend.combiners.combiner`);
    with ``guard``, where the final OOF log loss does not beat the class prior's, the prior is what
    the blender predicts (its ``post_rules`` flags are read where ``rule_plan`` is made).
    ``use_tta[name]`` picks the model's ``*_tta`` OOF columns. ``rule_plan``: a
    :class:`~arena_pref.blend.post_rules.PostRulePlan` or None.

    Every fitted thing (stacker, weights, temperature, post-rule frequencies) is fitted on the other
    folds for each fold's OOF rows (nested for the temperature), and on all rows for the blender
    that predicts the test set, so the blend's OOF log loss is an honest estimate.

    Returns ``(Blender, metrics dict, OOF blend DataFrame[id, fold, label, a, b, tie])``.
    """
    names = _check_members(oof, None, use_tta, settings.method)
    train_ids, y, folds = _targets(y_by_id, folds_by_id)
    members = {m: _member(m, oof[m], train_ids, y, folds, use_tta[m]) for m in names}
    oof_probs = {m: probs for m, (probs, _) in members.items()}
    models = {m: scores for m, (_, scores) in members.items()}

    fitted = combiner(
        settings.method, weights=settings.weights or None, stack_C=settings.stack_C, calibrate=settings.calibrate
    )
    oof_blend = cross_fit(fitted, oof_probs, y, folds)
    params = fitted.fit(oof_probs, y, folds)
    summary = {"method": settings.method, "temperature": None, **fitted.describe(params)}
    estimates = {}
    if rule_plan is not None:
        oof_blend, estimates, summary["post_rules"] = rule_plan.apply(
            oof_blend, y=y, folds=folds, train_ids=train_ids, blend_without=nested(fitted, oof_probs, y, folds)
        )
    oof_blend, summary["guard"] = _guard(models, oof_blend, y, folds, settings.guard)

    blender = Blender(
        members=tuple(names),
        tta={m: bool(use_tta[m]) for m in names},
        method=settings.method,
        calibrate=bool(settings.calibrate),
        params=params,
        post_rules={kind: p.tolist() for kind, p in estimates.items()},
        class_prior=class_frequencies(y).tolist() if summary["guard"]["fell_back"] else None,
        oof_log_loss=log_loss(y, oof_blend),
        n_train=int(len(train_ids)),
    )
    metrics = {
        "prior_log_loss": prior_log_loss(y),
        "models": models,
        "blend": {"log_loss": log_loss(y, oof_blend), **summary, "folds": fold_scores(y, oof_blend, folds)},
        "n_train": int(len(train_ids)),
    }
    return blender, metrics, _oof_frame(oof_blend, train_ids, folds, y)


def apply_blender(blender, test, kinds_test=None):
    """The submission a fitted :class:`Blender` (:func:`fit_blend`, or :func:`read_blender`) makes of
    the members' test predictions ``{name: DataFrame[id, a, b, tie]}``. ``kinds_test``: each test
    row's kind by id (:func:`~arena_pref.blend.post_rules.row_kinds`), needed where the blender carries
    post-rules."""
    blender.check({m: None for m in test})
    test_ids = test[blender.members[0]]["id"].to_numpy(dtype=np.int64)
    if blender.class_prior is not None:
        probs = np.tile(np.asarray(blender.class_prior, dtype=np.float64), (len(test_ids), 1))
    else:
        probs = _combined(blender, test, test_ids, kinds_test)
    submission = make_submission(test_ids, probs)
    validate_submission(submission, test_ids)
    return submission


def _combined(blender, test, test_ids, kinds_test):
    """The members' test probabilities combined by the blender, its post-rules applied."""
    probs_by_member = {
        m: _aligned(test[m], m, "test", test_ids, PROB_COLUMNS)[PROB_COLUMNS].to_numpy(dtype=np.float64)
        for m in blender.members
    }
    probs = combiner(blender.method, calibrate=blender.calibrate).apply(blender.params, probs_by_member)
    if not blender.post_rules:
        return probs
    from arena_pref.blend.post_rules import set_kinds

    if kinds_test is None:
        raise InputError("the blender carries post-rules: the test rows' kinds are needed")
    return set_kinds(
        probs,
        kinds_test.loc[test_ids].to_numpy(),
        {k: np.asarray(p, dtype=np.float64) for k, p in blender.post_rules.items()},
    )


def _oof_frame(oof_blend, train_ids, folds, y):
    frame = pd.DataFrame(oof_blend, columns=PROB_COLUMNS)
    frame.insert(0, "id", train_ids)
    frame.insert(1, "fold", folds)
    frame.insert(2, "label", y)
    return frame


# --------------------------------------------------------------------------- the submission


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
        raise InputError(f"duplicate test id(s): {few(dup)}")
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
        raise ValueError(f"submission repeats id(s): {few(dup)}")
    expected = set(np.asarray(test_ids).tolist())
    got = set(ids.tolist())
    if got != expected:
        raise ValueError(
            f"submission ids differ from the test ids: missing {few(expected - got) or 'none'}; "
            f"unexpected {few(got - expected) or 'none'}"
        )
    p = df[list(LABELS)].to_numpy(dtype=np.float64)
    if not np.isfinite(p).all():
        raise ValueError("submission has non-finite probabilities")
    if ((p <= 0) | (p >= 1)).any():
        raise ValueError("submission probabilities must lie strictly between 0 and 1")
    worst = np.abs(p.sum(axis=1) - 1).max(initial=0.0)
    if worst > 1e-6:
        raise ValueError(f"submission rows must sum to 1 (worst is off by {worst:.3g})")


# --------------------------------------------------------------------------- the prior guard


def _guard(models, oof_blend, y, folds, guard):
    """The OOF blend, or the class prior's OOF probabilities where ``guard`` is on and the blend does
    not beat them, and the guard's report (:func:`_prior_check`'s, with ``fell_back``)."""
    report, prior_oof = _prior_check(models, oof_blend, y, folds)
    report["fell_back"] = bool(guard and not report["beats_prior"])
    if not report["fell_back"]:
        return oof_blend, report
    log.warning("submitting the class prior instead (blend.guard)")
    return prior_oof, report


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


# --------------------------------------------------------------------------- the inputs


def _check_members(oof, test, use_tta, method):
    """The models to blend, after checking they have OOF and test predictions and a TTA setting."""
    if method not in METHODS:
        raise InputError(f"unknown blend method '{method}', expected one of {list(METHODS)}")
    names = list(oof)
    if not names:
        raise InputError("no models to blend")
    if test is not None and set(test) != set(names):
        raise InputError(
            f"models with OOF but no test predictions: {few(set(names) - set(test)) or 'none'}; "
            f"with test but no OOF predictions: {few(set(test) - set(names)) or 'none'}"
        )
    no_flag = [m for m in names if m not in use_tta]
    if no_flag:
        raise InputError(f"no TTA setting for model(s): {few(no_flag)}")
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


def _aligned(frame, name, kind, ids, columns):
    """``frame`` rows in the order of ``ids``, after checking ids and columns."""
    missing_cols = [c for c in ["id", *columns] if c not in frame.columns]
    if missing_cols:
        raise InputError(f"{kind} predictions of model '{name}' lack column(s) {missing_cols}")
    fid = frame["id"].astype(np.int64)
    dup = fid[fid.duplicated()].unique()
    if len(dup):
        raise InputError(f"{kind} predictions of model '{name}' repeat id(s): {few(dup)}")
    missing, extra = set(ids) - set(fid), set(fid) - set(ids)
    if missing or extra:
        raise InputError(
            f"{kind} predictions of model '{name}' do not cover the expected ids: "
            f"missing {few(missing) or 'none'}; unexpected {few(extra) or 'none'}"
        )
    out = frame.set_index(fid).loc[ids]
    values = out[columns].to_numpy(dtype=np.float64)
    if not np.isfinite(values).all():
        raise InputError(f"{kind} predictions of model '{name}' contain non-finite values")
    return out
