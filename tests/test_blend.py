import json

import numpy as np
import pandas as pd
import pytest
from arena_pref import LABELS
from arena_pref.blend.blender import Blender, blend_run, make_submission, validate_submission
from arena_pref.blend.combiners import apply_temperature, blend, fit_temperature, optimize_weights
from arena_pref.errors import InputError
from arena_pref.metrics import EPS, log_loss, tta_average
from arena_pref.settings import BlendSettings, PostRules
from sklearn.metrics import log_loss as sk_log_loss


def softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def labelled(n=2000, seed=0):
    """Calibrated ``truth`` probabilities and labels drawn from them."""
    rng = np.random.default_rng(seed)
    truth = softmax(rng.normal(scale=1.5, size=(n, 3)))
    y = (rng.random(n)[:, None] > truth.cumsum(axis=1)).sum(axis=1)
    return truth, y, rng


# --- blend ---------------------------------------------------------------------------


def test_blend_weighted_average_normalised():
    p = np.array([[0.6, 0.3, 0.1]])
    q = np.array([[0.2, 0.2, 0.6]])
    out = blend({"p": p, "q": q}, {"p": 3, "q": 1})
    np.testing.assert_allclose(out, 0.75 * p + 0.25 * q)
    np.testing.assert_allclose(blend({"p": p, "q": q}, {"p": 2, "q": 2}), (p + q) / 2)


def test_blend_zero_weight_allowed():
    p, q = np.array([[0.6, 0.3, 0.1]]), np.array([[0.2, 0.2, 0.6]])
    np.testing.assert_allclose(blend({"p": p, "q": q}, {"p": 0, "q": 5}), q)


@pytest.mark.parametrize(
    "weights, match",
    [
        ({"p": 1.0}, "no blend weight for model.*q"),
        ({"p": 1.0, "q": 1.0, "r": 1.0}, "without predictions: r"),
        ({"p": 0.0, "q": 0.0}, "all be zero"),
        ({"p": -1.0, "q": 2.0}, "non-negative"),
        ({"p": float("nan"), "q": 2.0}, "finite"),
    ],
)
def test_blend_bad_weights(weights, match):
    probs = {"p": np.ones((2, 3)) / 3, "q": np.ones((2, 3)) / 3}
    with pytest.raises(InputError, match=match):
        blend(probs, weights)


def test_blend_shape_mismatch():
    with pytest.raises(InputError, match="shape"):
        blend({"p": np.ones((2, 3)) / 3, "q": np.ones((3, 3)) / 3}, {"p": 1, "q": 1})


# --- optimize_weights ----------------------------------------------------------------


def test_optimize_weights_prefers_good_model():
    truth, y, rng = labelled()
    oof = {"noise": rng.dirichlet([1, 1, 1], size=len(y)), "good": truth}
    w = optimize_weights(oof, y)
    assert set(w) == {"noise", "good"}
    assert all(v >= 0 for v in w.values()) and sum(w.values()) == pytest.approx(1, abs=1e-12)
    assert w["good"] > 0.8
    blended = sk_log_loss(y, blend(oof, w), labels=[0, 1, 2])
    assert blended <= min(sk_log_loss(y, p, labels=[0, 1, 2]) for p in oof.values()) + 1e-12
    assert optimize_weights(oof, y) == w  # deterministic


def test_optimize_weights_mixes_complementary_models():
    truth, y, rng = labelled(seed=1)
    # two independently noisy views of the truth: their average beats either
    a = softmax(np.log(truth) + rng.normal(scale=1.0, size=truth.shape))
    b = softmax(np.log(truth) + rng.normal(scale=1.0, size=truth.shape))
    w = optimize_weights({"a": a, "b": b}, y)
    assert 0.3 < w["a"] < 0.7
    assert log_loss(y, blend({"a": a, "b": b}, w)) < min(log_loss(y, a), log_loss(y, b))


def test_optimize_weights_single_model():
    truth, y, _ = labelled(100)
    assert optimize_weights({"only": truth}, y) == {"only": 1.0}


# --- temperature ---------------------------------------------------------------------


def test_temperature_softens_over_confident():
    truth, y, _ = labelled(5000, seed=2)
    over = softmax(3 * np.log(truth))
    t = fit_temperature(over, y)
    assert t > 1
    assert t == pytest.approx(3, rel=0.15)
    assert log_loss(y, apply_temperature(over, t)) < log_loss(y, over)


def test_temperature_sharpens_under_confident():
    truth, y, _ = labelled(5000, seed=3)
    under = softmax(0.5 * np.log(truth))
    t = fit_temperature(under, y)
    assert t < 1
    assert log_loss(y, apply_temperature(under, t)) < log_loss(y, under)


def test_apply_temperature():
    p = np.array([[0.7, 0.2, 0.1], [0.2, 0.3, 0.5]])
    np.testing.assert_allclose(apply_temperature(p, 1.0), p, atol=1e-12)
    np.testing.assert_allclose(apply_temperature(p, 2.0), softmax(np.log(p) / 2), atol=1e-12)
    sharp = apply_temperature(p, 0.05)
    np.testing.assert_allclose(sharp.sum(axis=1), 1, atol=1e-12)
    assert np.isfinite(sharp).all()
    with pytest.raises(ValueError, match="positive"):
        apply_temperature(p, 0.0)


# --- submission ----------------------------------------------------------------------


def test_make_submission_clips_and_keeps_order():
    ids = [30, 10, 20]
    probs = np.array([[1.0, 0.0, 0.0], [0.2, 0.5, 0.3], [0.1, 0.1, 0.8]])
    sub = make_submission(ids, probs)
    assert list(sub.columns) == ["id", *LABELS]
    assert sub["id"].dtype == np.int64 and sub["id"].tolist() == ids
    p = sub[list(LABELS)].to_numpy()
    assert (p >= EPS / (1 + EPS)).all() and (p < 1).all()
    np.testing.assert_allclose(p.sum(axis=1), 1, atol=1e-12)
    np.testing.assert_allclose(p[1], probs[1], atol=1e-12)
    validate_submission(sub, [10, 20, 30])


def test_make_submission_duplicate_ids():
    with pytest.raises(InputError, match="duplicate test id.*7"):
        make_submission([7, 7], np.ones((2, 3)) / 3)


def _good_submission():
    return make_submission([1, 2, 3], np.array([[0.5, 0.3, 0.2]] * 3))


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda s: s[["id", "winner_model_b", "winner_model_a", "winner_tie"]], "columns"),
        (lambda s: s.drop(columns="winner_tie"), "columns"),
        (lambda s: s.iloc[:2], "missing 3"),
        (lambda s: pd.concat([s, s.iloc[:1]]), "repeats id"),
        (lambda s: s.assign(id=[1, 2, 4]), "unexpected 4"),
        (lambda s: s.assign(winner_tie=[0.2, np.nan, 0.2]), "non-finite"),
        (
            lambda s: s.assign(winner_model_a=[0.8, 0.5, 0.5], winner_model_b=[0.0, 0.3, 0.3]),
            "strictly between",
        ),
        (lambda s: s.assign(winner_tie=[0.3, 0.2, 0.2]), "sum to 1"),
    ],
)
def test_validate_submission_rejects(mutate, match):
    with pytest.raises(ValueError, match=match):
        validate_submission(mutate(_good_submission()), [1, 2, 3])


# --- blend_run -----------------------------------------------------------------------


N_FOLDS = 4


def make_run_inputs(n_train=1200, n_test=50, seed=0):
    """Two models: ``good`` (noisy truth, better with TTA) and ``noise`` (random)."""
    truth, y, rng = labelled(n_train, seed)
    train_ids = rng.permutation(np.arange(100, 100 + n_train)).astype(np.int64)
    folds = rng.integers(0, N_FOLDS, size=n_train)
    y_by_id = pd.Series(y, index=train_ids)
    folds_by_id = pd.Series(folds, index=train_ids)
    test_ids = np.arange(10_000, 10_000 + n_test, dtype=np.int64)

    def oof_frame(ab, ba):
        tta = tta_average(ab, ba)
        frame = pd.DataFrame(
            {
                "id": train_ids,
                "fold": folds,
                "a": ab[:, 0],
                "b": ab[:, 1],
                "tie": ab[:, 2],
                "a_tta": tta[:, 0],
                "b_tta": tta[:, 1],
                "tie_tta": tta[:, 2],
            }
        )
        return frame.sample(frac=1, random_state=seed)  # rows in another order than y_by_id

    def noisy():
        return softmax(np.log(truth) + rng.normal(scale=0.7, size=truth.shape))

    def test_frame(p):
        return pd.DataFrame({"id": test_ids, "a": p[:, 0], "b": p[:, 1], "tie": p[:, 2]})

    swapped = noisy()[:, [1, 0, 2]]  # a B-first prediction of the same truth
    oof = {
        "good": oof_frame(noisy(), swapped),
        "noise": oof_frame(rng.dirichlet([1, 1, 1], n_train), rng.dirichlet([1, 1, 1], n_train)),
    }
    test = {
        "good": test_frame(rng.dirichlet([5, 5, 5], n_test)),
        "noise": test_frame(rng.dirichlet([5, 5, 5], n_test)).iloc[::-1],  # other order
    }
    return oof, test, y_by_id, folds_by_id


def blend_settings(method="weights", weights=None, stack_C=1.0, calibrate=False, guard=True):
    """The blend rule's settings (the post-rule flags off: the tests give the plan itself)."""
    return BlendSettings(method, weights or {}, stack_C, calibrate, guard, PostRules(False, False))


def aligned(frame, ids, cols):
    return frame.set_index("id").loc[ids, cols].to_numpy()


@pytest.fixture(scope="module")
def inputs():
    return make_run_inputs()


def test_blend_run_given_weights(inputs):
    oof, test, y_by_id, folds_by_id = inputs
    sub, m, _, _blender = blend_run(
        oof,
        test,
        y_by_id,
        folds_by_id,
        blend_settings("weights", {"good": 3, "noise": 1}),
        use_tta={"good": True, "noise": False},
    )
    ids, y = y_by_id.index, y_by_id.to_numpy()
    folds = folds_by_id.to_numpy()
    assert set(m) == {"prior_log_loss", "models", "blend", "n_train", "n_test"}
    assert m["n_train"] == len(y) and m["n_test"] == 50
    freq = np.bincount(y, minlength=3) / len(y)
    assert m["prior_log_loss"] == pytest.approx(sk_log_loss(y, np.tile(freq, (len(y), 1))), abs=1e-9)

    good = m["models"]["good"]
    assert set(good) == {"log_loss", "log_loss_tta", "log_loss_used", "accuracy", "folds", "beats_prior"}
    assert good["log_loss_used"] == good["log_loss_tta"] and good["beats_prior"]
    assert not m["models"]["noise"]["beats_prior"]
    plain = aligned(oof["good"], ids, ["a", "b", "tie"])
    tta = aligned(oof["good"], ids, ["a_tta", "b_tta", "tie_tta"])
    assert good["log_loss"] == pytest.approx(sk_log_loss(y, plain, labels=[0, 1, 2]), abs=1e-9)
    assert good["log_loss_tta"] == pytest.approx(sk_log_loss(y, tta, labels=[0, 1, 2]), abs=1e-9)
    assert good["log_loss_tta"] < good["log_loss"]
    assert good["accuracy"] == pytest.approx(np.mean(tta.argmax(axis=1) == y))
    expected_folds = [sk_log_loss(y[folds == k], tta[folds == k], labels=[0, 1, 2]) for k in range(N_FOLDS)]
    np.testing.assert_allclose(good["folds"], expected_folds, atol=1e-9)
    noise_plain = aligned(oof["noise"], ids, ["a", "b", "tie"])
    assert m["models"]["noise"]["folds"][0] == pytest.approx(
        sk_log_loss(y[folds == 0], noise_plain[folds == 0], labels=[0, 1, 2]), abs=1e-9
    )

    b = m["blend"]
    assert b["method"] == "weights" and b["temperature"] is None and not b["guard"]["fell_back"]
    assert b["weights"] == {"good": 0.75, "noise": 0.25}
    oof_blend = 0.75 * tta + 0.25 * noise_plain
    assert b["log_loss"] == pytest.approx(sk_log_loss(y, oof_blend, labels=[0, 1, 2]), abs=1e-9)
    assert len(b["folds"]) == N_FOLDS

    # submission: first model's test id order, rows aligned by id across models
    test_ids = test["good"]["id"].to_numpy()
    assert sub["id"].tolist() == test_ids.tolist()
    expected = 0.75 * aligned(test["good"], test_ids, ["a", "b", "tie"]) + 0.25 * aligned(
        test["noise"], test_ids, ["a", "b", "tie"]
    )
    np.testing.assert_allclose(sub[list(LABELS)].to_numpy(), expected, atol=1e-12)
    validate_submission(sub, test_ids)
    json.dumps(m)  # plain Python types only


def test_blend_run_equal_weights_by_default(inputs):
    oof, test, y_by_id, folds_by_id = inputs
    _, m, _, _blender = blend_run(
        oof, test, y_by_id, folds_by_id, blend_settings("weights"), use_tta={"good": False, "noise": False}
    )
    assert m["blend"]["weights"] == {"good": 0.5, "noise": 0.5}


def test_blend_run_optimize_and_calibrate(inputs):
    oof, test, y_by_id, folds_by_id = inputs
    use_tta = {"good": True, "noise": False}
    _, plain, _, _blender = blend_run(oof, test, y_by_id, folds_by_id, blend_settings("optimize"), use_tta=use_tta)
    sub, m, _, _blender = blend_run(
        oof, test, y_by_id, folds_by_id, blend_settings("optimize", calibrate=True), use_tta=use_tta
    )
    b = m["blend"]
    assert b["method"] == "optimize"
    assert b["weights"]["good"] > 0.8
    assert sum(b["weights"].values()) == pytest.approx(1)
    # weights and temperature are fitted without the fold they score: near, not below, the optimum
    assert b["log_loss"] <= min(mm["log_loss_tta"] for mm in m["models"].values()) + 0.01
    assert isinstance(b["temperature"], float)
    assert b["log_loss"] <= plain["blend"]["log_loss"] + 0.01
    assert plain["blend"]["temperature"] is None
    validate_submission(sub, test["good"]["id"])
    assert json.loads(json.dumps(m))["blend"]["temperature"] == b["temperature"]


def test_blend_run_single_model_with_tta_scores_tta_columns(inputs):
    oof, test, y_by_id, folds_by_id = inputs
    _, m, _, _blender = blend_run(
        {"good": oof["good"]},
        {"good": test["good"]},
        y_by_id,
        folds_by_id,
        blend_settings("weights", {"good": 1}),
        use_tta={"good": True},
    )
    assert m["blend"]["log_loss"] == pytest.approx(m["models"]["good"]["log_loss_tta"], abs=1e-12)
    assert m["blend"]["folds"] == pytest.approx(m["models"]["good"]["folds"], abs=1e-12)


def _run(oof, test, y_by_id, folds_by_id, use_tta=None, **kw):
    use_tta = use_tta if use_tta is not None else {name: False for name in oof}
    return blend_run(oof, test, y_by_id, folds_by_id, blend_settings(**kw), use_tta=use_tta)


def test_blend_run_oof_missing_ids(inputs):
    oof, test, y_by_id, folds_by_id = inputs
    dropped = oof["noise"]["id"].iloc[0]
    bad = dict(oof, noise=oof["noise"].iloc[1:])
    with pytest.raises(InputError, match=rf"OOF predictions of model 'noise'.*missing {dropped}"):
        _run(bad, test, y_by_id, folds_by_id)


def test_blend_run_oof_extra_ids(inputs):
    oof, test, y_by_id, folds_by_id = inputs
    extra = oof["good"].iloc[:1].assign(id=999_999)
    bad = dict(oof, good=pd.concat([oof["good"], extra]))
    with pytest.raises(InputError, match="model 'good'.*unexpected 999999"):
        _run(bad, test, y_by_id, folds_by_id)


def test_blend_run_test_ids_differ(inputs):
    oof, test, y_by_id, folds_by_id = inputs
    bad = dict(test, noise=test["noise"].assign(id=test["noise"]["id"] + 1))
    with pytest.raises(InputError, match="test predictions of model 'noise'.*missing 10000"):
        _run(oof, bad, y_by_id, folds_by_id)


def test_blend_run_fold_mismatch(inputs):
    oof, test, y_by_id, folds_by_id = inputs
    bad = dict(oof, good=oof["good"].assign(fold=(oof["good"]["fold"] + 1) % N_FOLDS))
    with pytest.raises(InputError, match="model 'good' use a different fold"):
        _run(bad, test, y_by_id, folds_by_id)


def test_blend_run_missing_column(inputs):
    oof, test, y_by_id, folds_by_id = inputs
    bad = dict(oof, good=oof["good"].drop(columns="tie_tta"))
    with pytest.raises(InputError, match="model 'good' lack column.*tie_tta"):
        _run(bad, test, y_by_id, folds_by_id)


def test_blend_run_non_finite(inputs):
    oof, test, y_by_id, folds_by_id = inputs
    bad = dict(test, good=test["good"].assign(a=np.nan))
    with pytest.raises(InputError, match="model 'good' contain non-finite"):
        _run(oof, bad, y_by_id, folds_by_id)


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"method": "vote"}, "unknown blend method 'vote'"),
        ({"use_tta": {"good": True}}, "no TTA setting for model.*noise"),
        ({"weights": {"good": 1.0}}, "no blend weight for model.*noise"),
    ],
)
def test_blend_run_bad_settings(inputs, kw, match):
    with pytest.raises(InputError, match=match):
        _run(*inputs, **kw)


def test_blend_run_models_differ_between_oof_and_test(inputs):
    oof, test, y_by_id, folds_by_id = inputs
    with pytest.raises(InputError, match="OOF but no test predictions: noise"):
        _run(oof, {"good": test["good"]}, y_by_id, folds_by_id)


def test_blend_step_takes_model_names_from_the_rule_not_from_paths(inputs, tmp_path):
    """Models named like the workflow's directories (``test``, ``oof``, ``fold0``) blend as any
    other: the step is given each model's files by name."""
    from arena_pref import atomic, steps
    from arena_pref.data import kaggle_csv
    from arena_pref.settings import BlendSettings, PostRules

    oof, test, y_by_id, folds_by_id = inputs
    names = {"good": "test", "noise": "oof"}
    oof_paths, test_paths = {}, {}
    for old, new in names.items():
        frame = oof[old]
        oof_paths[new] = []
        for fold, part in frame.groupby("fold"):
            path = tmp_path / "results" / "oof" / new / f"fold{fold}.parquet"
            atomic.write_parquet(part, path)
            oof_paths[new].append(path)
        test_paths[new] = {"folds": tmp_path / "results" / "test" / f"{new}.parquet"}
        atomic.write_parquet(test[old], test_paths[new]["folds"])
    train = pd.DataFrame({"id": y_by_id.index, "label": y_by_id.to_numpy()})
    kaggle_csv.write_parsed(train, tmp_path / "train.parquet")
    atomic.write_parquet(
        pd.DataFrame({"id": folds_by_id.index, "fold": folds_by_id.to_numpy()}), tmp_path / "folds.parquet"
    )
    steps.blend(
        oof_paths=oof_paths,
        test_paths=test_paths,
        train_parquet=tmp_path / "train.parquet",
        test_parquet=None,
        folds_parquet=tmp_path / "folds.parquet",
        settings=BlendSettings("weights", {"test": 3, "oof": 1}, 1.0, False, True, PostRules(False, False)),
        tta={"test": True, "oof": False},
        submission=tmp_path / "sub.csv",
        metrics_path=tmp_path / "m.json",
        oof_blend_path=tmp_path / "oof_blend.parquet",
        blender_path=tmp_path / "blender.json",
        run_info_path=tmp_path / "run_info.json",
        config={},
    )
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["blend"]["weights"] == {"test": 0.75, "oof": 0.25}
    _, expected, _, _blender = blend_run(
        oof,
        test,
        y_by_id,
        folds_by_id,
        blend_settings("weights", {"good": 3, "noise": 1}),
        use_tta={"good": True, "noise": False},
    )
    assert metrics["blend"]["log_loss"] == pytest.approx(expected["blend"]["log_loss"])


# --- stacking, honest OOF, the prior guard ------------------------------------------------


def _members(inputs, use_tta):
    """The inputs' OOF probabilities as blended (by train id order) and the labels and folds."""
    from arena_pref.blend.blender import _member, _targets

    oof, test, y_by_id, folds_by_id = inputs
    ids, y, folds = _targets(y_by_id, folds_by_id)
    probs = {m: _member(m, oof[m], ids, y, folds, use_tta[m])[0] for m in oof}
    return probs, y, folds


def test_stack_learns_to_trust_the_good_member(inputs):
    use_tta = {"good": True, "noise": False}
    sub, m, oof_blend, _blender = blend_run(*inputs, blend_settings("stack"), use_tta=use_tta)
    b = m["blend"]
    assert b["method"] == "stack" and b["stack_C"] == 1.0 and not b["guard"]["fell_back"]
    assert b["stack_reliance"]["good"] > 5 * b["stack_reliance"]["noise"]
    # the noise member is ignored, and the stacker is at least as good as the good member alone
    assert b["log_loss"] <= m["models"]["good"]["log_loss_tta"] + 0.005
    assert b["log_loss"] < b["guard"]["prior_oof_log_loss"] - 0.1
    validate_submission(sub, inputs[1]["good"]["id"])


def test_stacker_treats_the_answers_alike(inputs):
    from arena_pref.blend.combiners import apply_stacker, fit_stacker

    probs, y, _ = _members(inputs, {"good": True, "noise": False})
    params = fit_stacker(probs, y, C=1.0)
    mirrored = {m: p[:, [1, 0, 2]] for m, p in probs.items()}
    np.testing.assert_allclose(apply_stacker(params, mirrored), apply_stacker(params, probs)[:, [1, 0, 2]], atol=1e-12)


@pytest.mark.parametrize("method,calibrate", [("stack", False), ("stack", True), ("optimize", True)])
def test_each_folds_oof_blend_is_fitted_without_that_folds_labels(inputs, method, calibrate):
    """Scrambling the labels of fold 0 changes nothing of fold 0's OOF blend: the stacker, the
    weights and the temperature that score a fold never saw its labels."""
    oof, test, y_by_id, folds_by_id = inputs
    kw = {"use_tta": {"good": True, "noise": False}}
    s = blend_settings(method, calibrate=calibrate, guard=False)
    _, _, before, _blender = blend_run(oof, test, y_by_id, folds_by_id, s, **kw)
    fold0 = folds_by_id[folds_by_id == 0].index
    scrambled = y_by_id.copy()
    scrambled.loc[fold0] = (scrambled.loc[fold0] + 1) % 3
    _, _, after, _blender = blend_run(oof, test, scrambled, folds_by_id, s, **kw)
    rows = before["fold"] == 0
    np.testing.assert_allclose(after.loc[rows, ["a", "b", "tie"]], before.loc[rows, ["a", "b", "tie"]], atol=1e-9)
    # ... while the other folds' rows, fitted with fold 0's labels, do change
    assert not np.allclose(after.loc[~rows, ["a", "b", "tie"]], before.loc[~rows, ["a", "b", "tie"]], atol=1e-6)


def test_a_blend_worse_than_the_prior_falls_back_to_it(inputs, caplog):
    oof, test, y_by_id, folds_by_id = inputs
    noise_only = ({"noise": oof["noise"]}, {"noise": test["noise"]}, y_by_id, folds_by_id)
    with caplog.at_level("WARNING", logger="arena_pref"):
        sub, m, oof_blend, _blender = blend_run(*noise_only, blend_settings("weights"), use_tta={"noise": False})
    assert "model 'noise' does not beat the class prior on OOF" in caplog.text
    assert "the blend does not beat the class prior on OOF" in caplog.text
    g = m["blend"]["guard"]
    assert g["fell_back"] and not g["beats_prior"] and g["blend_log_loss"] >= g["prior_oof_log_loss"]
    assert m["blend"]["log_loss"] == pytest.approx(g["prior_oof_log_loss"])
    y = y_by_id.to_numpy()
    freq = np.bincount(y, minlength=3) / len(y)
    np.testing.assert_allclose(sub[list(LABELS)].to_numpy(), np.tile(freq, (len(sub), 1)), atol=1e-6)
    # without the guard the noise is submitted, and the log still says so
    _, m, _, _blender = blend_run(*noise_only, blend_settings("weights", guard=False), use_tta={"noise": False})
    assert not m["blend"]["guard"]["fell_back"] and m["blend"]["log_loss"] > g["prior_oof_log_loss"]


def test_the_guard_judges_the_blend_after_the_post_rules(inputs):
    """Post-rules run before the guard: what is compared with the prior is what would be submitted."""
    from arena_pref.blend.post_rules import PostRulePlan

    oof, test, y_by_id, folds_by_id = inputs
    ids = y_by_id.index.to_numpy()
    # identical answers that always tie: the rule alone takes a noise blend below the prior
    y = y_by_id.copy()
    y.iloc[: len(y) // 2] = 2
    kinds = pd.Series(np.where(np.isin(ids, y.index[: len(y) // 2]), "identical", ""), index=ids)
    plan = PostRulePlan(("identical",), kinds, pd.Series("", index=test["noise"]["id"].to_numpy()))
    _, m, _, _blender = blend_run(
        {"noise": oof["noise"]},
        {"noise": test["noise"]},
        y,
        folds_by_id,
        blend_settings("weights"),
        use_tta={"noise": False},
        rule_plan=plan,
    )
    g = m["blend"]["guard"]
    assert m["blend"]["post_rules"]["identical"]["applied_to_test"]
    assert g["beats_prior"] and not g["fell_back"] and g["blend_log_loss"] == pytest.approx(m["blend"]["log_loss"])


def test_a_stacker_of_one_class_predicts_its_frequencies():
    from arena_pref.blend.combiners import apply_stacker, fit_stacker

    probs = {"m": np.full((6, 3), 1 / 3)}
    out = apply_stacker(fit_stacker(probs, np.full(6, 2), C=1.0), probs)
    np.testing.assert_allclose(out, np.tile([0, 0, 1.0], (6, 1)))


def test_labels_without_ties_stack_to_three_columns(inputs):
    """Data without ties (hh-harmless): the stacker knows two classes, the tie column gets the
    clipped minimum, and the blend still scores and submits."""
    oof, test, y_by_id, folds_by_id = inputs
    no_ties = y_by_id.where(y_by_id != 2, 0)
    sub, m, oof_blend, _blender = blend_run(
        oof, test, no_ties, folds_by_id, blend_settings("stack", calibrate=True), use_tta={"good": True, "noise": False}
    )
    assert (oof_blend["tie"] < 1e-3).all() and np.isfinite(m["blend"]["log_loss"])
    validate_submission(sub, test["good"]["id"])


# --- the blender: fitted once, applied by any run ------------------------------------------


@pytest.mark.parametrize(
    "kw",
    [
        dict(method="stack"),
        dict(method="stack", calibrate=True),
        dict(method="optimize", calibrate=True),
        dict(method="weights"),
        dict(method="stack", post_rules=True),
    ],
)
def test_the_blender_file_makes_the_same_submission(inputs, kw, tmp_path):
    """What the blend rule writes to blender.json, read back, gives a run from trained models the
    home run's submission to the last digit (floats survive JSON exactly)."""
    from arena_pref.blend.blender import apply_blender, read_blender, write_blender
    from arena_pref.blend.post_rules import PostRulePlan

    oof, test, y_by_id, folds_by_id = inputs
    plan = None
    if kw.pop("post_rules", False):
        # identical answers: mostly ties, which the members do not know
        kinds_train = pd.Series(
            np.where((y_by_id.to_numpy() == 2) & (y_by_id.index % 2 == 0), "identical", ""), index=y_by_id.index
        )
        test_ids = test["good"]["id"].to_numpy()
        plan = PostRulePlan(
            ("identical", "empty"), kinds_train, pd.Series(np.where(test_ids % 3 == 0, "identical", ""), index=test_ids)
        )
    sub, _, _, blender = blend_run(
        oof, test, y_by_id, folds_by_id, blend_settings(**kw), use_tta={"good": True, "noise": False}, rule_plan=plan
    )
    assert (plan is None) == (not blender.post_rules)
    write_blender(blender, tmp_path / "blender.json")
    read = read_blender(tmp_path / "blender.json")
    assert read == blender and read.to_json() == json.loads((tmp_path / "blender.json").read_text())
    # the members in another order than the blender lists them: rows are matched by id
    reordered = {m: test[m] for m in reversed(list(test))}
    again = apply_blender(read, reordered, None if plan is None else plan.kinds_test)
    pd.testing.assert_frame_equal(again, sub, check_exact=True)


def test_the_blender_file_keeps_its_layout(inputs):
    """blender.json's keys, in order, as every fitted file and the Kaggle bundle have them."""
    *_, blender = blend_run(*inputs, blend_settings("stack"), use_tta={"good": True, "noise": False})
    layout = blender.to_json()
    assert list(layout) == [
        "format",
        "members",
        "tta",
        "method",
        "calibrate",
        "params",
        "post_rules",
        "class_prior",
        "oof_log_loss",
        "n_train",
    ]
    assert layout["format"] == 1 and layout["members"] == ["good", "noise"] and layout["tta"] == blender.tta
    assert layout["post_rules"] == {} and layout["class_prior"] is None and layout["n_train"] == len(inputs[2])
    assert Blender.from_json(json.loads(json.dumps(layout))) == blender


def test_the_stacker_predicts_as_scikit_learn_does(inputs):
    """The blender keeps the stacker as coefficients (no pickle): its probabilities are
    scikit-learn's predict_proba of the fitted model."""
    from arena_pref.blend.combiners import _stack_inputs, _stacker_proba, fit_stacker
    from arena_pref.metrics import MIRROR
    from sklearn.linear_model import LogisticRegression

    probs, y, _ = _members(inputs, {"good": True, "noise": False})
    params = fit_stacker(probs, y, C=0.3)
    x = np.vstack([_stack_inputs(probs, list(probs)), _stack_inputs(probs, list(probs), mirror=True)])
    model = LogisticRegression(C=0.3, max_iter=1000).fit(x, np.concatenate([y, MIRROR[y]]))
    np.testing.assert_allclose(_stacker_proba(params, x), model.predict_proba(x), atol=1e-10)


def test_a_blender_of_another_layout_or_other_members_is_refused(inputs, tmp_path):
    from arena_pref import atomic
    from arena_pref.blend.blender import apply_blender, read_blender

    test = inputs[1]
    *_, blender = blend_run(*inputs, blend_settings("stack"), use_tta={"good": True, "noise": False})
    path = tmp_path / "blender.json"
    atomic.write_json({**blender.to_json(), "format": 99}, path)
    with pytest.raises(InputError, match=r'the blender .*blender.json: "format" is 99, this version reads 1'):
        read_blender(path)
    atomic.write_json({k: v for k, v in blender.to_json().items() if k not in ("tta", "params")}, path)
    with pytest.raises(InputError, match=r"the blender .*blender.json lacks tta, params: was it edited\?"):
        read_blender(path)
    with pytest.raises(InputError, match=r"the blender was fitted on models good, noise: no model noise in this run"):
        apply_blender(blender, {"good": test["good"]})
    with pytest.raises(InputError, match=r"f.json was fitted on models good, noise: models other are not in it"):
        blender.check({"good": True, "noise": False, "other": None}, "f.json")
    with pytest.raises(InputError, match=r"config models.noise.predict.tta is True, but f.json was fitted on its"):
        blender.check({"good": True, "noise": True}, "f.json")
    blender.check({"good": None, "noise": False}, "f.json")


def test_a_weights_blender_is_the_weighted_average(inputs, tmp_path):
    from arena_pref.blend.blender import apply_blender, read_blender, write_blender

    _, test, _, _ = inputs
    blender = Blender.from_weights({"noise": 1.0, "good": 3.0}, {"good": True, "noise": False})
    assert blender.members == ("good", "noise") and blender.params == {"noise": 1.0, "good": 3.0}
    write_blender(blender, tmp_path / "blender.json")
    sub = apply_blender(read_blender(tmp_path / "blender.json"), test)
    ids = test["good"]["id"].to_numpy()
    good = test["good"].set_index("id").loc[ids, ["a", "b", "tie"]].to_numpy()
    noise = test["noise"].set_index("id").loc[ids, ["a", "b", "tie"]].to_numpy()
    np.testing.assert_allclose(
        sub[["winner_model_a", "winner_model_b", "winner_tie"]].to_numpy(), 0.75 * good + 0.25 * noise, atol=1e-12
    )


def test_a_members_test_prediction_from_its_folds_its_full_model_or_both():
    """blend.test_from: the folds' averaged file as it is, the full-data pass TTA-averaged where
    TTA is on, or the two half each."""
    from arena_pref.predict.prediction_files import submitted_prediction

    folds = pd.DataFrame({"id": [7, 8], "a": [0.6, 0.2], "b": [0.3, 0.2], "tie": [0.1, 0.6]})
    full = pd.DataFrame(
        {"id": [7, 8], "a": [0.2, 0.4], "b": [0.4, 0.2], "tie": [0.4, 0.4], "a_tta": [0.4, 0.2]}
        | {"b_tta": [0.2, 0.4], "tie_tta": [0.4, 0.4]}
    )
    probs = ["a", "b", "tie"]
    assert submitted_prediction(folds, None, tta=True).equals(folds)
    assert np.allclose(submitted_prediction(None, full, tta=False)[probs], full[probs])
    # the pass's *_tta columns hold both orders' average
    assert np.allclose(submitted_prediction(None, full, tta=True)[probs], [[0.4, 0.2, 0.4], [0.2, 0.4, 0.4]])
    both = submitted_prediction(folds, full, tta=True)
    assert both["id"].tolist() == [7, 8] and np.allclose(both[probs], [[0.5, 0.25, 0.25], [0.2, 0.3, 0.5]])
    with pytest.raises(ValueError, match="different test ids"):
        submitted_prediction(folds, full.assign(id=[8, 7]), tta=False)
