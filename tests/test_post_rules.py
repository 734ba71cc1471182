import numpy as np
import pandas as pd
import pytest
from arena_pref.blend.blender import blend_run
from arena_pref.blend.post_rules import PRIOR_ROWS, PostRulePlan, kind_probs, row_kinds
from arena_pref.settings import BlendSettings, PostRules

WEIGHTS_UNGUARDED = BlendSettings("weights", {}, 1.0, False, False, PostRules(False, False))
"""Equal weights, no guard (the flags off: the tests give the post-rule plan itself)."""


def parsed(rows):
    return pd.DataFrame(
        {
            "id": np.arange(len(rows), dtype=np.int64),
            "prompt": [["q"]] * len(rows),
            "response_a": [r[0] for r in rows],
            "response_b": [r[1] for r in rows],
        }
    )


def test_row_kinds():
    kinds = row_kinds(
        parsed(
            [
                (["x"], ["x"]),
                (["x", None], ["x", None]),
                ([None], ["y"]),
                (["y"], ["  "]),
                (["x", ""], ["y", "z"]),
                ([""], [None]),
                (["x"], ["y"]),
                (["x", "z"], ["y", "z"]),
            ]
        )
    )
    assert kinds.tolist() == ["identical", "identical", "a_empty", "b_empty", "a_empty", "identical", "", ""]


def test_kind_probs_are_symmetric_and_smoothed_toward_the_prior():
    prior = np.array([0.4, 0.3, 0.3])
    kinds = np.array(["identical"] * 4 + ["a_empty"] * 3 + ["b_empty"] * 2 + [""])
    y = np.array([2, 2, 2, 0, 1, 1, 2, 0, 0, 1])
    ident = kind_probs("identical", kinds, y, prior)
    # counts (1, 0, 3) -> (0.5, 0.5, 3); prior made symmetric (0.35, 0.35, 0.3)
    expected = (np.array([0.5, 0.5, 3]) + PRIOR_ROWS * np.array([0.35, 0.35, 0.3])) / (4 + PRIOR_ROWS)
    np.testing.assert_allclose(ident, expected)
    empty = kind_probs("a_empty", kinds, y, prior)
    # A empty: B won twice, tie once; B empty mirrored: A won twice -> B won twice
    counts = np.array([0, 4, 1])
    np.testing.assert_allclose(empty, (counts + PRIOR_ROWS * np.array([0.35, 0.35, 0.3])) / (5 + PRIOR_ROWS))
    assert kind_probs("identical", np.array(["", "a_empty"]), np.array([0, 1]), prior) is None


def _run(post_rules, y, kinds_train, kinds_test, folds, blend_settings=WEIGHTS_UNGUARDED):
    n, n_test = len(y), len(kinds_test)
    ids, test_ids = np.arange(n), np.arange(1000, 1000 + n_test)
    flat = np.full((n, 3), 1 / 3)
    oof = {
        "m": pd.DataFrame(
            {
                "id": ids,
                "fold": folds,
                "a": flat[:, 0],
                "b": flat[:, 1],
                "tie": flat[:, 2],
                "a_tta": flat[:, 0],
                "b_tta": flat[:, 1],
                "tie_tta": flat[:, 2],
            }
        )
    }
    test = {"m": pd.DataFrame({"id": test_ids, "a": 0.4, "b": 0.4, "tie": 0.2})}
    plan = (
        None
        if post_rules is None
        else PostRulePlan(post_rules, pd.Series(kinds_train, index=ids), pd.Series(kinds_test, index=test_ids))
    )
    return blend_run(
        oof,
        test,
        pd.Series(y, index=ids),
        pd.Series(folds, index=ids),
        blend_settings,
        use_tta={"m": False},
        rule_plan=plan,
    )


def test_post_rules_set_their_rows_from_the_other_folds_and_the_test_rows_from_all():
    rng = np.random.default_rng(0)
    n = 400
    kinds = rng.choice(["identical", "a_empty", "b_empty", ""], size=n, p=[0.1, 0.1, 0.1, 0.7])
    # identical answers mostly tie; an empty answer mostly loses
    y = np.where(
        kinds == "identical", 2, np.where(kinds == "a_empty", 1, np.where(kinds == "b_empty", 0, rng.integers(0, 3, n)))
    )
    y = np.where(rng.random(n) < 0.2, rng.integers(0, 3, n), y)
    folds = np.arange(n) % 4
    kinds_test = np.array(["identical", "a_empty", "b_empty", ""])
    sub, m, oof_blend, _blender = _run(("identical", "empty"), y, kinds, kinds_test, folds)
    report = m["blend"]["post_rules"]
    assert report["identical"]["n_train"] == (kinds == "identical").sum() and report["identical"]["n_test"] == 1
    assert report["empty"]["n_train"] == np.isin(kinds, ["a_empty", "b_empty"]).sum()
    for rule in ("identical", "empty"):
        assert report[rule]["oof_log_loss_after"] < report[rule]["oof_log_loss_before"] - 0.3
    p = sub[["winner_model_a", "winner_model_b", "winner_tie"]].to_numpy()
    prior = np.bincount(y, minlength=3) / n
    np.testing.assert_allclose(p[0], kind_probs("identical", kinds, y, prior), atol=1e-6)
    np.testing.assert_allclose(p[1], kind_probs("a_empty", kinds, y, prior), atol=1e-6)
    np.testing.assert_allclose(p[2], kind_probs("a_empty", kinds, y, prior)[[1, 0, 2]], atol=1e-6)
    np.testing.assert_allclose(p[3], [0.4, 0.4, 0.2], atol=1e-6)  # no rule: the blend
    # fold 0's identical rows come from the other folds' rows only
    rows = (folds == 0) & (kinds == "identical")
    f0 = folds != 0
    expected = kind_probs("identical", kinds[f0], y[f0], np.bincount(y[f0], minlength=3) / f0.sum())
    np.testing.assert_allclose(oof_blend.loc[rows, ["a", "b", "tie"]].to_numpy()[0], expected, atol=1e-9)


def test_a_rule_that_does_not_help_is_left_out_and_logged(caplog):
    """Identical answers whose labels are those of the rest: the rule's frequencies do worse on OOF
    than a blend that knows the labels, so the blend stays, in the OOF and the test rows."""
    rng = np.random.default_rng(1)
    n = 400
    y = rng.integers(0, 3, n)
    kinds = np.where(np.arange(n) % 10 == 0, "identical", "")
    folds = np.arange(n) % 4
    ids = np.arange(n)
    good = np.full((n, 3), 0.05)
    good[ids, y] = 0.9
    oof = {
        "m": pd.DataFrame(
            {
                "id": ids,
                "fold": folds,
                "a": good[:, 0],
                "b": good[:, 1],
                "tie": good[:, 2],
                "a_tta": good[:, 0],
                "b_tta": good[:, 1],
                "tie_tta": good[:, 2],
            }
        )
    }
    test = {"m": pd.DataFrame({"id": [1000], "a": [0.4], "b": [0.4], "tie": [0.2]})}
    plan = PostRulePlan(("identical",), pd.Series(kinds, index=ids), pd.Series(["identical"], index=[1000]))
    with caplog.at_level("WARNING", logger="arena_pref"):
        sub, m, oof_blend, _blender = blend_run(
            oof,
            test,
            pd.Series(y, index=ids),
            pd.Series(folds, index=ids),
            WEIGHTS_UNGUARDED,
            use_tta={"m": False},
            rule_plan=plan,
        )
    report = m["blend"]["post_rules"]["identical"]
    assert not report["applied_to_test"] and report["oof_log_loss_after"] == report["oof_log_loss_before"]
    assert "post-rule identical: does not lower the OOF log loss" in caplog.text
    np.testing.assert_allclose(
        sub[["winner_model_a", "winner_model_b", "winner_tie"]].to_numpy()[0], [0.4, 0.4, 0.2], atol=1e-6
    )


def test_a_rule_without_training_rows_of_its_kind_leaves_the_blend():
    y = np.array([0, 1, 2, 0, 1, 2, 0, 1])
    sub, m, _, _blender = _run(("identical",), y, np.array([""] * 8), np.array(["identical"]), np.arange(8) % 2)
    assert m["blend"]["post_rules"]["identical"] == {"n_train": 0, "n_test": 1, "probs": None, "applied_to_test": False}
    np.testing.assert_allclose(
        sub[["winner_model_a", "winner_model_b", "winner_tie"]].to_numpy()[0], [0.4, 0.4, 0.2], atol=1e-6
    )


@pytest.mark.parametrize("method", ["weights", "stack"])  # stack: no nested blend of a single fold
def test_with_two_folds_no_rule_can_be_checked_so_none_is_used(caplog, method):
    """Each fold's choice would rest on one other fold, its estimates on no rows: the rules stay out
    of the OOF rows, and so (the report and the submission agree) out of the test rows."""
    rng = np.random.default_rng(0)
    n = 200
    kinds = np.where(np.arange(n) % 4 == 0, "identical", "")
    y = np.where(kinds == "identical", 2, rng.integers(0, 2, n))
    with caplog.at_level("WARNING", logger="arena_pref"):
        blend_settings = BlendSettings(method, {}, 1.0, False, False, PostRules(False, False))
        sub, m, _, _blender = _run(("identical",), y, kinds, np.array(["identical"]), np.arange(n) % 2, blend_settings)
    report = m["blend"]["post_rules"]["identical"]
    assert not report["applied_to_test"] and report["oof_log_loss_after"] == report["oof_log_loss_before"]
    assert "post-rules need at least 3 folds" in caplog.text
    plain = _run(None, y, kinds, np.array(["identical"]), np.arange(n) % 2, blend_settings)[0]
    columns = ["winner_model_a", "winner_model_b", "winner_tie"]
    np.testing.assert_allclose(sub[columns].to_numpy(), plain[columns].to_numpy(), atol=1e-12)  # the blend's


STACK_UNGUARDED = BlendSettings("stack", {}, 1.0, False, False, PostRules(False, False))


def fold0_oof_rows(seed, *, redraw_fold0):
    """Fold 0's OOF rows of a stacked blend with the identical rule (3 folds, two noisy members),
    after fold 0's labels are redrawn or not."""
    rng = np.random.default_rng(seed)
    n = 150
    ids, folds = np.arange(n), np.arange(n) % 3
    kinds = np.where(rng.random(n) < 0.15, "identical", "")
    y = rng.integers(0, 3, n)
    y = np.where((kinds == "identical") & (rng.random(n) < 0.25), 2, y)
    if redraw_fold0:
        y = np.where(folds == 0, np.random.default_rng(seed + 1000).integers(0, 3, n), y)
    oof = {}
    for m in ("m1", "m2"):
        p = np.exp(rng.normal(size=(n, 3)))
        p /= p.sum(axis=1, keepdims=True)
        cols = {c: p[:, i] for i, c in enumerate(("a", "b", "tie"))}
        oof[m] = pd.DataFrame({"id": ids, "fold": folds, **cols, **{f"{c}_tta": v for c, v in cols.items()}})
    test = {m: pd.DataFrame({"id": [1000], "a": [0.4], "b": [0.4], "tie": [0.2]}) for m in oof}
    plan = PostRulePlan(("identical",), pd.Series(kinds, index=ids), pd.Series(["identical"], index=[1000]))
    _, _, blend, _ = blend_run(
        oof,
        test,
        pd.Series(y, index=ids),
        pd.Series(folds, index=ids),
        STACK_UNGUARDED,
        use_tta={m: False for m in oof},
        rule_plan=plan,
    )
    return blend.loc[folds == 0, ["a", "b", "tie"]].to_numpy()


def test_fold_k_rules_are_chosen_without_fold_k_labels():
    """Fold k's rule choice compares the rules with a blend of the other folds whose stackers never
    saw fold k: redrawing fold 0's labels leaves fold 0's OOF rows as they were. (Chosen on the
    cross-fitted blend, whose stackers for folds 1 and 2 learnt from fold 0, they changed in 2 of
    these 24 seeds.)"""
    for seed in range(24):
        np.testing.assert_array_equal(
            fold0_oof_rows(seed, redraw_fold0=True), fold0_oof_rows(seed, redraw_fold0=False), err_msg=f"seed {seed}"
        )
