"""What a competitor reads first about a run's out-of-fold errors: tables for the report.

- per member: OOF log loss as given and with TTA, per fold, against the prior, the stacker's
  reliance on it and its training time;
- position consistency per member, before TTA: how often the predicted winner changes when A and B
  are swapped, and the mean |p(A wins | A shown first) - p(A wins | A shown second)|;
- the blend's log loss by total length, by number of turns and by true class;
- what the post-rules changed;
- the worst OOF rows of the blend.

A row's swapped-order prediction is read back from its OOF file: the ``*_tta`` columns average the
row as given and the swapped order mapped back (A and B exchanged), so the mapped-back swapped
order is ``2 * tta - given``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from arena_pref import PROB_COLUMNS as GIVEN
from arena_pref import TTA_COLUMNS as TTA
from arena_pref.metrics import log_loss

CLASSES = ("A", "B", "tie")  # the labels' names in the tables
LENGTH_BUCKETS = 4  # quartiles of a row's total characters (prompt and both answers)
WORST_ROWS = 20
PROMPT_SHOWN = 80  # characters of the prompt in the worst-rows table


def _chars(turns):
    return sum(len(t) for t in turns if t)


def member_table(metrics, oof, train_seconds):
    """One row per member: ``oof`` maps a member to its OOF rows (all folds, with ``label``),
    ``train_seconds`` to its training jobs' seconds (None: not trained by this run)."""
    reliance = metrics["blend"].get("stack_reliance") or {}
    rows = []
    for name, scores in metrics["models"].items():
        frame = oof[name]
        row = {"model": name, "log_loss": scores["log_loss"], "log_loss_tta": scores.get("log_loss_tta")}
        for fold, part in frame.groupby("fold"):
            y = part["label"].to_numpy()
            row[f"fold{fold}"] = log_loss(y, part[GIVEN].to_numpy())
            row[f"fold{fold}_tta"] = log_loss(y, part[TTA].to_numpy())
        row["beats_prior"] = scores["beats_prior"]
        row["stack_reliance"] = reliance.get(name)
        seconds = train_seconds.get(name)
        row["train_hours"] = None if seconds is None else seconds / 3600
        rows.append(row)
    return pd.DataFrame(rows)


def position_consistency(frame):
    """Flip rate and mean |p(A wins | first) - p(A wins | second)| of one member's OOF rows, before
    TTA; None where the member has no swapped order (its TTA columns are its given ones)."""
    given, tta = frame[GIVEN].to_numpy(), frame[TTA].to_numpy()
    if np.allclose(given, tta):
        return None
    swapped_back = np.clip(2 * tta - given, 0.0, 1.0)
    return {
        "rows": int(len(frame)),
        "flip_rate": float((given.argmax(axis=1) != swapped_back.argmax(axis=1)).mean()),
        "mean_abs_diff_a": float(np.abs(given[:, 0] - swapped_back[:, 0]).mean()),
    }


def loss_by_group(oof_blend, parsed):
    """The blend's OOF log loss by total-length quartile, by number of turns and by true class (ties
    apart): one row per group with its row count."""
    texts = parsed.set_index("id").loc[oof_blend["id"]]
    chars = np.array(
        [_chars(p) + _chars(a) + _chars(b) for p, a, b in texts[["prompt", "response_a", "response_b"]].to_numpy()]
    )
    turns = texts["prompt"].map(len).to_numpy()
    y, probs = oof_blend["label"].to_numpy(), oof_blend[GIVEN].to_numpy()
    edges = np.unique(np.quantile(chars, np.linspace(0, 1, LENGTH_BUCKETS + 1)))
    bucket = np.clip(np.searchsorted(edges, chars, side="right") - 1, 0, len(edges) - 2)
    groups = [
        *(("length (chars)", f"{int(edges[b])}-{int(edges[b + 1])}", bucket == b) for b in range(len(edges) - 1)),
        *(("turns", label, mask) for label, mask in (("1", turns == 1), ("2", turns == 2), ("3+", turns >= 3))),
        *(("label", name, y == k) for k, name in enumerate(CLASSES)),
    ]
    rows = [
        {"by": by, "group": group, "rows": int(mask.sum()), "log_loss": log_loss(y[mask], probs[mask])}
        for by, group, mask in groups
        if mask.any()
    ]
    return pd.DataFrame(rows)


def post_rule_table(metrics):
    """What each post-rule did: its training rows, OOF log loss on them before and after, and the
    test rows it set."""
    rows = []
    for rule, report in (metrics["blend"].get("post_rules") or {}).items():
        rows.append(
            {
                "rule": rule,
                "train_rows": report["n_train"],
                "oof_log_loss_before": report.get("oof_log_loss_before"),
                "oof_log_loss_after": report.get("oof_log_loss_after"),
                "applied_to_test": report["applied_to_test"],
                "test_rows_set": report["n_test"] if report["applied_to_test"] else 0,
            }
        )
    return pd.DataFrame(
        rows,
        columns=["rule", "train_rows", "oof_log_loss_before", "oof_log_loss_after", "applied_to_test", "test_rows_set"],
    )


def worst_rows(oof_blend, parsed, n=WORST_ROWS):
    """The ``n`` OOF rows the blend got most wrong (highest log loss of the true class)."""
    probs = oof_blend[GIVEN].to_numpy()
    y = oof_blend["label"].to_numpy()
    loss = -np.log(np.clip(probs[np.arange(len(y)), y], 1e-15, 1.0))
    order = np.argsort(-loss, kind="stable")[:n]
    texts = parsed.set_index("id")
    rows = []
    for i in order:
        row = texts.loc[oof_blend["id"].iloc[i]]
        prompt = " / ".join(t for t in row["prompt"] if t)
        rows.append(
            {
                "id": int(oof_blend["id"].iloc[i]),
                "prompt": prompt[:PROMPT_SHOWN] + ("…" if len(prompt) > PROMPT_SHOWN else ""),
                "chars_a": _chars(row["response_a"]),
                "chars_b": _chars(row["response_b"]),
                "label": CLASSES[y[i]],
                "p_a": float(probs[i, 0]),
                "p_b": float(probs[i, 1]),
                "p_tie": float(probs[i, 2]),
                "log_loss": float(loss[i]),
            }
        )
    return pd.DataFrame(rows)
