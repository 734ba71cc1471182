"""Scoring a run on a labelled real data set (make real-data): the references and each figure."""

import json

import numpy as np
import pandas as pd
import pytest
from arena_pref import LABELS, atomic
from arena_pref.data.demo import write_demo_csvs
from arena_pref.data.kaggle_csv import read_kaggle_csv
from arena_pref.tools import realdata
from sklearn.metrics import log_loss as sk_log_loss


def test_length_regression_reads_the_last_answers_and_survives_empty_ones():
    train = pd.DataFrame(
        {
            "response_a": [["x" * 200], ["hi"], ["a", "x" * 300], ["no"]] * 10,
            "response_b": [["ok"], ["y" * 250], ["b"], []] * 10,
            "label": [0, 1, 0, 2] * 10,
        }
    )
    probs = realdata.length_lr(train, train)
    assert probs.shape == (40, 3) and np.allclose(probs.sum(axis=1), 1)
    assert probs[0, 0] > 0.5 and probs[1, 1] > 0.5  # the longer last answer wins


@pytest.fixture
def scored_run(tmp_path):
    data_dir, workdir = tmp_path / "data", tmp_path / "run"
    data_dir.mkdir()
    write_demo_csvs(data_dir / "train.csv", data_dir / "test.csv", n_train=60, n_test=20, seed=1)
    test = read_kaggle_csv(data_dir / "test.csv", "test")
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, len(test))
    labels = pd.DataFrame(np.eye(3, dtype=int)[y], columns=list(LABELS))
    labels.insert(0, "id", test["id"])
    labels.iloc[::-1].to_csv(data_dir / "test_labels.csv", index=False)  # another row order
    member = rng.dirichlet([2, 2, 2], len(test))
    atomic.write_parquet(
        pd.DataFrame({"id": test["id"], "a": member[:, 0], "b": member[:, 1], "tie": member[:, 2]}),
        workdir / "results/test/m.parquet",
    )
    sub = pd.DataFrame(np.tile([0.5, 0.3, 0.2], (len(test), 1)), columns=list(LABELS))
    sub.insert(0, "id", test["id"])
    atomic.write_csv(sub, workdir / "results/submission.csv")
    atomic.write_json(
        {
            "models": {"m": {"log_loss_used": 0.9}},
            "blend": {"method": "stack", "log_loss": 0.8, "guard": {"prior_oof_log_loss": 1.09}},
        },
        workdir / "results/metrics.json",
    )
    return data_dir, workdir, y, member


def test_score_puts_each_test_figure_beside_its_oof_figure(scored_run):
    data_dir, workdir, y, member = scored_run
    result = realdata.score(data_dir, workdir)
    rows = result["rows"]
    assert list(rows) == ["class prior", "length logistic regression", "m", "blend (stack)"]
    assert rows["m"] == {"test_log_loss": pytest.approx(sk_log_loss(y, member, labels=[0, 1, 2])), "oof_log_loss": 0.9}
    assert rows["blend (stack)"]["test_log_loss"] == pytest.approx(
        sk_log_loss(y, np.tile([0.5, 0.3, 0.2], (len(y), 1)), labels=[0, 1, 2])
    )
    assert result["n_test"] == len(y) and result["oof_prior"] == 1.09
    table = realdata.table(json.loads(json.dumps(result)))
    assert table.splitlines()[2].startswith("| class prior | ") and "| m | " in table
