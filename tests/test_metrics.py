import numpy as np
import pytest
from arena_pref import LABELS
from arena_pref.metrics import (
    EPS,
    accuracy,
    calibration_table,
    clip_probs,
    fold_scores,
    log_loss,
    prior_log_loss,
    tta_average,
)
from sklearn.metrics import log_loss as sk_log_loss


def sample(n=500, seed=0):
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet([2, 2, 2], size=n)
    y = rng.integers(0, 3, size=n)
    return y, probs


def test_log_loss_matches_sklearn():
    y, probs = sample()
    assert probs.min() > EPS and probs.max() < 1 - EPS  # unclipped inputs
    assert abs(log_loss(y, probs) - sk_log_loss(y, probs, labels=[0, 1, 2])) < 1e-9


def test_log_loss_single_class_present_matches_sklearn():
    _, probs = sample(50)
    y = np.full(50, 2)
    assert abs(log_loss(y, probs) - sk_log_loss(y, probs, labels=[0, 1, 2])) < 1e-9


def test_log_loss_clips_and_renormalises():
    y = np.array([0, 1])
    probs = np.array([[0.0, 1.0, 0.0], [0.2, 0.6, 0.2]])
    first = -np.log(EPS / (1 + EPS))  # (0, 1, 0) -> (EPS, 1-EPS, EPS) / (1 + EPS)
    assert log_loss(y, probs) == pytest.approx((first - np.log(0.6)) / 2, rel=1e-12)
    # rows not summing to 1 are renormalised
    assert log_loss(y[1:], probs[1:] / 2) == pytest.approx(-np.log(0.6), rel=1e-12)


def test_clip_probs_bounds_and_sums():
    p = clip_probs(np.array([[1.0, 0.0, 0.0], [0.3, 0.3, 0.4]]))
    assert (p > 0).all() and (p < 1).all()
    np.testing.assert_allclose(p.sum(axis=1), 1, atol=1e-15)
    np.testing.assert_allclose(p[1], [0.3, 0.3, 0.4], atol=1e-15)


def test_accuracy():
    y = np.array([0, 1, 2, 2])
    probs = np.array([[0.5, 0.3, 0.2], [0.1, 0.2, 0.7], [0.2, 0.2, 0.6], [0.4, 0.5, 0.1]])
    assert accuracy(y, probs) == 0.5


def test_prior_log_loss():
    y = np.array([0] * 5 + [1] * 3 + [2] * 2)
    freq = np.array([0.5, 0.3, 0.2])
    expected = -(freq * np.log(freq)).sum()
    assert prior_log_loss(y) == pytest.approx(expected, rel=1e-12)
    assert prior_log_loss(y) == pytest.approx(sk_log_loss(y, np.tile(freq, (10, 1))), abs=1e-9)


def test_tta_average_unswaps_columns():
    probs_ab = np.array([[0.6, 0.3, 0.1], [0.2, 0.2, 0.6]])
    # the swapped input showed B first: its column 0 is "original B wins"
    probs_ba = np.array([[0.4, 0.5, 0.1], [0.1, 0.5, 0.4]])
    expected = np.array([[0.55, 0.35, 0.1], [0.35, 0.15, 0.5]])
    np.testing.assert_allclose(tta_average(probs_ab, probs_ba), expected, atol=1e-15)


def test_tta_average_symmetric_model_is_fixed_point():
    _, p = sample(20)
    np.testing.assert_allclose(tta_average(p, p[:, [1, 0, 2]]), p, atol=1e-15)


def test_tta_average_shape_mismatch():
    with pytest.raises(ValueError, match="shape"):
        tta_average(np.ones((2, 3)) / 3, np.ones((3, 3)) / 3)


def test_fold_scores_ordered_by_fold():
    y, probs = sample(300)
    folds = np.random.default_rng(1).permutation(np.repeat([2, 0, 1], 100))
    scores = fold_scores(y, probs, folds)
    expected = [sk_log_loss(y[folds == k], probs[folds == k], labels=[0, 1, 2]) for k in (0, 1, 2)]
    np.testing.assert_allclose(scores, expected, atol=1e-9)
    assert all(isinstance(s, float) for s in scores)


def test_calibration_table():
    y = np.array([0, 0, 1, 2])
    probs = np.array([[1.0, 0.0, 0.0], [0.95, 0.05, 0.0], [0.15, 0.8, 0.05], [0.12, 0.08, 0.8]])
    t = calibration_table(y, probs, n_bins=10)
    assert list(t.columns) == [
        "class",
        "label",
        "bin",
        "bin_lower",
        "bin_upper",
        "mean_predicted",
        "observed",
        "count",
    ]
    assert (t.groupby("class")["count"].sum() == 4).all()
    assert t["label"].tolist()[0] == LABELS[0]
    a = t[t["class"] == 0].set_index("bin")
    # p == 1.0 goes to the last bin together with 0.95
    assert a.loc[9, "count"] == 2 and a.loc[9, "mean_predicted"] == pytest.approx(0.975)
    assert a.loc[9, "observed"] == 1.0
    assert a.loc[1, "count"] == 2 and a.loc[1, "observed"] == 0.0
    assert (t["mean_predicted"] >= t["bin_lower"]).all()
    assert (t["mean_predicted"] <= t["bin_upper"]).all()


def test_calibration_table_calibrated_model():
    rng = np.random.default_rng(3)
    probs = rng.dirichlet([1, 1, 1], size=20000)
    y = np.array([rng.choice(3, p=p) for p in probs])
    t = calibration_table(y, probs)
    big = t[t["count"] > 500]
    assert np.abs(big["mean_predicted"] - big["observed"]).max() < 0.05


@pytest.mark.parametrize(
    "y, probs, match",
    [
        (np.array([0, 1]), np.ones((2, 2)) / 2, "shape"),
        (np.array([0, 1, 2]), np.ones((2, 3)) / 3, "labels for"),
        (np.array([0, 3]), np.ones((2, 3)) / 3, "labels must be"),
    ],
)
def test_bad_inputs(y, probs, match):
    with pytest.raises(ValueError, match=match):
        log_loss(y, probs)
