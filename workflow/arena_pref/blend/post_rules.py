"""Post-rules: fixed probabilities for rows whose answers say it all, applied after the blend.

Two kinds of row are common in arena data and easy to recognise, yet models fed truncated token
sequences can miss them: the two answers are identical (the vote is then mostly a tie, or a coin
toss between equal sides), or one answer is empty (the other usually wins). Such rows get the
class frequencies of training rows of the same kind instead of the blend's probabilities, where
that lowers the log loss of those rows on OOF (a rule that does not help is left out and logged).

The frequencies are symmetric (an identical pair gives A and B the same probability; "B empty" is
"A empty" mirrored, and the two pool their rows) and smoothed toward the overall class prior with
the weight of :data:`PRIOR_ROWS` rows, so a kind seen a handful of times stays close to the prior.
For each fold's OOF rows they are estimated, and the rule chosen, from the other folds' rows (an
honest OOF figure); for the test rows from all training rows.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from arena_pref import LABELS
from arena_pref.data.kaggle_csv import last_turn_empty
from arena_pref.metrics import MIRROR, class_frequencies, log_loss

log = logging.getLogger(__name__)

PRIOR_ROWS = 3.0  # the prior's weight, in rows, in each kind's smoothed frequencies
RULES = {"identical": ("identical",), "empty": ("a_empty", "b_empty")}  # config key -> row kinds


def row_kinds(parsed):
    """``Series`` id -> ``identical``, ``a_empty``, ``b_empty`` or ``""`` (neither) of a parsed
    table (identical first: two empty answers are identical)."""
    kinds = []
    for a, b in zip(parsed["response_a"], parsed["response_b"]):
        a, b = list(a), list(b)
        a_empty, b_empty = last_turn_empty(a), last_turn_empty(b)
        if a == b or (a_empty and b_empty):
            kinds.append("identical")
        else:
            kinds.append("a_empty" if a_empty else "b_empty" if b_empty else "")
    return pd.Series(kinds, index=parsed["id"].to_numpy(dtype=np.int64), dtype=object)


def kind_probs(kind, kinds, y, prior):
    """Smoothed, symmetric class frequencies of the training rows of ``kind`` (``a_empty``
    orientation for the empty kinds); None when there are none."""
    if kind == "identical":
        labels = y[kinds == "identical"]
    else:
        labels = np.concatenate([y[kinds == "a_empty"], MIRROR[y[kinds == "b_empty"]]])
    if not len(labels):
        return None
    counts = np.bincount(labels, minlength=len(LABELS)).astype(np.float64)
    if kind == "identical":
        counts[:2] = counts[:2].mean()
        prior = np.array([(prior[0] + prior[1]) / 2] * 2 + [prior[2]])
    else:
        prior = (prior + prior[MIRROR]) / 2
    return (counts + PRIOR_ROWS * prior) / (len(labels) + PRIOR_ROWS)


def set_kinds(probs, kinds, estimate):
    """``probs`` with the rows of each kind replaced by its estimate (``b_empty`` mirrored)."""
    out = probs.copy()
    for kind, p in estimate.items():
        rows = kinds == kind
        out[rows] = p[MIRROR] if kind == "b_empty" else p
    return out


def _lowers(rule, kinds, y, before, after):
    """Whether ``after`` has a lower log loss than ``before`` on the rows of the rule's kinds."""
    rows = np.isin(kinds, RULES[rule])
    return bool(rows.any()) and log_loss(y[rows], after[rows]) < log_loss(y[rows], before[rows])


@dataclass(frozen=True)
class PostRulePlan:
    """The enabled rules (config keys of :data:`RULES`) and the kind of every training and test
    row (``Series`` by id; the test kinds only count the rows each rule will set, for the report)."""

    rules: tuple
    kinds_train: pd.Series
    kinds_test: pd.Series | None = None

    def _estimate(self, kinds, y, rules=None):
        """{kind: probabilities} of the rules (default: all enabled) from these training rows."""
        if not len(y):
            return {}
        prior, out = class_frequencies(y), {}
        for rule in self.rules if rules is None else rules:
            p = kind_probs(RULES[rule][0], kinds, y, prior)
            if p is not None:
                out.update({kind: p for kind in RULES[rule]})
        return out

    def _helpful(self, blend, kinds, y, folds):
        """The rules that lower the log loss of their rows on these rows, each row's estimate from
        the other folds' (an honest comparison with the blend)."""
        candidate = blend.copy()
        for k in np.unique(folds):
            rows = folds == k
            candidate[rows] = set_kinds(blend[rows], kinds[rows], self._estimate(kinds[~rows], y[~rows]))
        return tuple(rule for rule in self.rules if _lowers(rule, kinds, y, blend, candidate))

    def apply(self, oof_blend, *, y, folds, train_ids, blend_without=None):
        """The blend's OOF probabilities with the rules applied where they help, the probabilities
        that the rules which help give test rows (``{kind: (3,)}``, for :func:`set_kinds`), and a
        report of each rule. Each fold's OOF rows are set, and the rules that help chosen, from the
        other folds' rows only, so the OOF figure stays honest: the choice for fold k compares the
        rules with ``blend_without(k)``, the other folds' rows blended by combiners fitted without
        fold k (``oof_blend``'s rows of the other folds came from combiners that saw fold k's
        labels); None: ``oof_blend``'s rows, for a blend fitted on nothing. A rule sets the test
        rows of its kind when that honest OOF figure of its rows is lower than the blend's. (With
        two folds a choice would rest on one fold's rows estimated from none: no rule is used.)"""
        kinds = self.kinds_train.loc[train_ids].to_numpy()
        if len(np.unique(folds)) < 3:
            log.warning(
                "post-rules need at least 3 folds to be checked on OOF (cv.n_folds is %d): none is used",
                len(np.unique(folds)),
            )
        oof = oof_blend.copy()
        for k in np.unique(folds):
            rows, other = folds == k, folds != k
            rules = ()
            if len(np.unique(folds[other])) > 1:  # one fold left: nothing to estimate its rows from
                blend_other = oof_blend[other] if blend_without is None else blend_without(k)
                rules = self._helpful(blend_other, kinds[other], y[other], folds[other])
            oof[rows] = set_kinds(oof_blend[rows], kinds[rows], self._estimate(kinds[other], y[other], rules))
        rules = tuple(rule for rule in self.rules if _lowers(rule, kinds, y, oof_blend, oof))
        report = {rule: self._report(rule, rule in rules, kinds, y, oof_blend, oof) for rule in self.rules}
        return oof, self._estimate(kinds, y, rules), report

    def _report(self, rule, applied, kinds, y, before, after):
        rows = np.isin(kinds, RULES[rule])
        estimate = self._estimate(kinds, y, (rule,))
        n_test = None if self.kinds_test is None else int(self.kinds_test.isin(RULES[rule]).sum())
        out = {
            "n_train": int(rows.sum()),
            "n_test": n_test,
            "probs": estimate[RULES[rule][0]].tolist() if estimate else None,
            "applied_to_test": applied,
        }
        if rows.any():
            out["oof_log_loss_before"] = log_loss(y[rows], before[rows])
            out["oof_log_loss_after"] = log_loss(y[rows], after[rows])
        if applied:
            log.info(
                "post-rule %s: %d training rows (OOF log loss on them %.4f -> %.4f); sets %s test rows",
                rule,
                out["n_train"],
                out["oof_log_loss_before"],
                out["oof_log_loss_after"],
                out["n_test"],
            )
        elif not rows.any():
            log.info("post-rule %s: no training rows of its kind; its %s test rows keep the blend", rule, out["n_test"])
        else:
            log.warning(
                "post-rule %s: does not lower the OOF log loss of its %d training rows; its %s test rows "
                "keep the blend",
                rule,
                out["n_train"],
                out["n_test"],
            )
        return out
