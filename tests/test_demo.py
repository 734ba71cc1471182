"""The synthetic demo data: Kaggle format and quirks, determinism, and a learnable signal."""

import json

import numpy as np
import pandas as pd
import pytest
from arena_pref import LABELS
from arena_pref.data.demo import make_demo_data, write_demo_csvs
from arena_pref.data.kaggle_csv import read_kaggle_csv
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss

TRAIN_COLUMNS = [
    "id",
    "model_a",
    "model_b",
    "prompt",
    "response_a",
    "response_b",
    *LABELS,
]
TEST_COLUMNS = ["id", "prompt", "response_a", "response_b"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """A demo of the size the learnability check needs, written and parsed back."""
    d = tmp_path_factory.mktemp("demo")
    write_demo_csvs(d / "train.csv", d / "test.csv", n_train=2000, n_test=300, seed=0)
    return {
        "dir": d,
        "train": read_kaggle_csv(d / "train.csv", "train"),
        "test": read_kaggle_csv(d / "test.csv", "test"),
    }


def turns(df, columns=("response_a", "response_b")):
    return [t for col in columns for cell in df[col] for t in cell]


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    paths = {}
    for name, seed in [("a", 3), ("b", 3), ("c", 4)]:
        paths[name] = (tmp_path / f"{name}_train.csv", tmp_path / f"{name}_test.csv")
        write_demo_csvs(*paths[name], n_train=200, n_test=50, seed=seed)
    for k in range(2):
        assert paths["a"][k].read_bytes() == paths["b"][k].read_bytes()
        assert paths["a"][k].read_bytes() != paths["c"][k].read_bytes()


def test_columns_and_raw_cells_as_in_kaggle(demo):
    raw_train = pd.read_csv(demo["dir"] / "train.csv", dtype=str, keep_default_na=False)
    raw_test = pd.read_csv(demo["dir"] / "test.csv", dtype=str, keep_default_na=False)
    assert list(raw_train.columns) == TRAIN_COLUMNS and len(raw_train) == 2000
    assert list(raw_test.columns) == TEST_COLUMNS and len(raw_test) == 300
    # exactly one winner column set per row
    onehot = raw_train[list(LABELS)].astype(int).to_numpy()
    assert set(np.unique(onehot)) == {0, 1} and (onehot.sum(axis=1) == 1).all()
    # non-ASCII text is written as \u escapes, so the files are pure ASCII
    for name in ("train.csv", "test.csv"):
        assert (demo["dir"] / name).read_bytes().isascii()
    assert (raw_train["model_a"] != raw_train["model_b"]).all()


def test_make_demo_data_matches_files(demo):
    train, test = make_demo_data(n_train=2000, n_test=300, seed=0)
    assert list(train.columns) == TRAIN_COLUMNS and list(test.columns) == TEST_COLUMNS
    assert train["id"].tolist() == demo["train"]["id"].tolist()
    assert [json.loads(c) for c in test["prompt"]][:5] == demo["test"]["prompt"].tolist()[:5]


def test_ids_look_like_kaggle(demo):
    ids = np.concatenate([demo["train"]["id"], demo["test"]["id"]])
    assert len(np.unique(ids)) == len(ids)
    assert (np.diff(demo["train"]["id"]) > 0).all()  # sorted, as in the Kaggle files
    assert ids.min() >= 10_000 and ids.max() < 2**32


def test_quirks_are_present(demo):
    train = demo["train"]
    raw = (demo["dir"] / "train.csv").read_text()
    assert (train["prompt"].map(len) > 1).mean() > 0.1  # multi-turn
    assert (train["prompt"].map(len) == train["response_a"].map(len)).all()
    null_share = np.mean([t is None for t in turns(train)])
    assert 0.005 < null_share < 0.06
    assert "\\u00e9" in raw and "\\u957f" in raw  # é and CJK as escapes
    assert "\\ud83d\\ude" in raw  # emoji as a valid surrogate pair
    texts = [t for t in turns(train, ("prompt", "response_a", "response_b")) if t]
    assert any("é" in t for t in texts) and any("😊" in t or "🚀" in t for t in texts)
    lone = np.mean(
        [any("\ufffd" in (t or "") for t in a + b) for a, b in zip(train["response_a"], train["response_b"])]
    )
    assert 0.002 < lone < 0.03  # lone surrogates, replaced on reading
    shared = train["prompt"].map(tuple).duplicated(keep=False).mean()
    assert 0.1 < shared < 0.35


def test_label_balance_like_kaggle(demo):
    freq = np.bincount(demo["train"]["label"], minlength=3) / len(demo["train"])
    assert ((freq > 0.25) & (freq < 0.42)).all(), freq


def test_answers_are_short_enough_for_a_cpu_model(demo):
    words = [len(t.split()) for t in turns(demo["train"]) if t]
    assert min(words) >= 5 and max(words) <= 80


def test_signal_is_learnable_from_simple_features(demo):
    """Refusal keywords and answer lengths alone beat the label prior clearly."""
    df = demo["train"]

    def features(df):
        a, b = (df[c].map(lambda t: " ".join(x for x in t if x)) for c in ("response_a", "response_b"))
        refusal = "sorry|apologi|AI language model|unable"
        diff = (a.str.split().map(len) - b.str.split().map(len)) / 10
        return np.column_stack([a.str.contains(refusal), b.str.contains(refusal), diff, diff.abs()])

    x, y = features(df).astype(float), df["label"].to_numpy()
    fit, held = slice(0, 1500), slice(1500, None)
    model = LogisticRegression(max_iter=1000).fit(x[fit], y[fit])
    prior = np.bincount(y[fit], minlength=3) / len(y[fit])
    model_loss = log_loss(y[held], model.predict_proba(x[held]), labels=[0, 1, 2])
    prior_loss = log_loss(y[held], np.tile(prior, (len(y[held]), 1)), labels=[0, 1, 2])
    assert model_loss < prior_loss - 0.1, (model_loss, prior_loss)
