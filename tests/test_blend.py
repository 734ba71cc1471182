import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import log_loss as sk_log_loss

from arena_pref import LABELS
from arena_pref.blend import (
    apply_temperature,
    blend,
    blend_run,
    fit_temperature,
    make_submission,
    optimize_weights,
    validate_submission,
)
from arena_pref.errors import InputError
from arena_pref.metrics import EPS, log_loss, tta_average


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


def aligned(frame, ids, cols):
    return frame.set_index("id").loc[ids, cols].to_numpy()


@pytest.fixture(scope="module")
def inputs():
    return make_run_inputs()


def test_blend_run_given_weights(inputs):
    oof, test, y_by_id, folds_by_id = inputs
    sub, m, _ = blend_run(
        oof,
        test,
        y_by_id,
        folds_by_id,
        use_tta={"good": True, "noise": False},
        method="weights",
        weights={"good": 3, "noise": 1},
    )
    ids, y = y_by_id.index, y_by_id.to_numpy()
    folds = folds_by_id.to_numpy()
    assert set(m) == {"prior_log_loss", "models", "blend", "n_train", "n_test"}
    assert m["n_train"] == len(y) and m["n_test"] == 50
    freq = np.bincount(y, minlength=3) / len(y)
    assert m["prior_log_loss"] == pytest.approx(
        sk_log_loss(y, np.tile(freq, (len(y), 1))), abs=1e-9
    )

    good = m["models"]["good"]
    assert set(good) == {"log_loss", "log_loss_tta", "accuracy", "folds"}
    plain = aligned(oof["good"], ids, ["a", "b", "tie"])
    tta = aligned(oof["good"], ids, ["a_tta", "b_tta", "tie_tta"])
    assert good["log_loss"] == pytest.approx(sk_log_loss(y, plain, labels=[0, 1, 2]), abs=1e-9)
    assert good["log_loss_tta"] == pytest.approx(sk_log_loss(y, tta, labels=[0, 1, 2]), abs=1e-9)
    assert good["log_loss_tta"] < good["log_loss"]
    assert good["accuracy"] == pytest.approx(np.mean(tta.argmax(axis=1) == y))
    expected_folds = [
        sk_log_loss(y[folds == k], tta[folds == k], labels=[0, 1, 2]) for k in range(N_FOLDS)
    ]
    np.testing.assert_allclose(good["folds"], expected_folds, atol=1e-9)
    noise_plain = aligned(oof["noise"], ids, ["a", "b", "tie"])
    assert m["models"]["noise"]["folds"][0] == pytest.approx(
        sk_log_loss(y[folds == 0], noise_plain[folds == 0], labels=[0, 1, 2]), abs=1e-9
    )

    b = m["blend"]
    assert b["method"] == "weights" and b["temperature"] is None
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
    _, m, _ = blend_run(
        oof, test, y_by_id, folds_by_id, use_tta={"good": False, "noise": False}, method="weights"
    )
    assert m["blend"]["weights"] == {"good": 0.5, "noise": 0.5}


def test_blend_run_optimize_and_calibrate(inputs):
    oof, test, y_by_id, folds_by_id = inputs
    use_tta = {"good": True, "noise": False}
    _, plain, _ = blend_run(oof, test, y_by_id, folds_by_id, use_tta=use_tta, method="optimize")
    sub, m, _ = blend_run(
        oof, test, y_by_id, folds_by_id, use_tta=use_tta, method="optimize", calibrate=True
    )
    b = m["blend"]
    assert b["method"] == "optimize"
    assert b["weights"]["good"] > 0.8
    assert sum(b["weights"].values()) == pytest.approx(1)
    assert b["log_loss"] <= min(mm["log_loss_tta"] for mm in m["models"].values()) + 1e-12
    assert isinstance(b["temperature"], float)
    assert b["log_loss"] <= plain["blend"]["log_loss"] + 1e-12
    assert plain["blend"]["temperature"] is None
    validate_submission(sub, test["good"]["id"])
    assert json.loads(json.dumps(m))["blend"]["temperature"] == b["temperature"]


def test_blend_run_single_model_with_tta_scores_tta_columns(inputs):
    oof, test, y_by_id, folds_by_id = inputs
    _, m, _ = blend_run(
        {"good": oof["good"]},
        {"good": test["good"]},
        y_by_id,
        folds_by_id,
        use_tta={"good": True},
        method="weights",
        weights={"good": 1},
    )
    assert m["blend"]["log_loss"] == pytest.approx(m["models"]["good"]["log_loss_tta"], abs=1e-12)
    assert m["blend"]["folds"] == pytest.approx(m["models"]["good"]["folds"], abs=1e-12)


def _run(oof, test, y_by_id, folds_by_id, **kw):
    kw.setdefault("use_tta", {name: False for name in oof})
    kw.setdefault("method", "weights")
    return blend_run(oof, test, y_by_id, folds_by_id, **kw)


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
        ({"method": "stack"}, "unknown blend method 'stack'"),
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
    from arena_pref import data, io, steps
    from arena_pref.settings import BlendSettings

    oof, test, y_by_id, folds_by_id = inputs
    names = {"good": "test", "noise": "oof"}
    oof_paths, test_paths = {}, {}
    for old, new in names.items():
        frame = oof[old]
        oof_paths[new] = []
        for fold, part in frame.groupby("fold"):
            path = tmp_path / "results" / "oof" / new / f"fold{fold}.parquet"
            io.write_parquet(part, path)
            oof_paths[new].append(path)
        test_paths[new] = tmp_path / "results" / "test" / f"{new}.parquet"
        io.write_parquet(test[old], test_paths[new])
    train = pd.DataFrame({"id": y_by_id.index, "label": y_by_id.to_numpy()})
    data.write_parsed(train, tmp_path / "train.parquet")
    io.write_parquet(pd.DataFrame({"id": folds_by_id.index, "fold": folds_by_id.to_numpy()}), tmp_path / "folds.parquet")
    steps.blend(oof_paths=oof_paths, test_paths=test_paths, train_parquet=tmp_path / "train.parquet",
                folds_parquet=tmp_path / "folds.parquet", settings=BlendSettings("weights", {"test": 3, "oof": 1}, False),
                tta={"test": True, "oof": False}, submission=tmp_path / "sub.csv", metrics_path=tmp_path / "m.json",
                oof_blend_path=tmp_path / "oof_blend.parquet", run_info_path=tmp_path / "run_info.json", config={})
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["blend"]["weights"] == {"test": 0.75, "oof": 0.25}
    _, expected, _ = blend_run(oof, test, y_by_id, folds_by_id, use_tta={"good": True, "noise": False},
                               method="weights", weights={"good": 3, "noise": 1})
    assert metrics["blend"]["log_loss"] == pytest.approx(expected["blend"]["log_loss"])
