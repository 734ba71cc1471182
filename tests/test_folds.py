import json

import numpy as np
import pandas as pd
import pytest
from arena_pref.data.folds import assign_folds, prompt_key
from arena_pref.errors import InputError


def make_train(n_prompts=150, seed=0):
    """Train-like frame: each prompt repeated 1-8 times, some multi-turn, some None turns."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_prompts):
        turns = [f"prompt {p} turn {t}" for t in range(rng.integers(1, 3))]
        if p % 17 == 0:
            turns.append(None)
        for _ in range(rng.integers(1, 9)):
            rows.append(turns)
    n = len(rows)
    return pd.DataFrame(
        {
            "id": rng.permutation(np.arange(1000, 1000 + n)).astype(np.int64),
            "prompt": rows,
            "response_a": ["a"] * n,
            "response_b": ["b"] * n,
            "label": rng.choice(3, size=n, p=[0.35, 0.34, 0.31]).astype(np.int64),
        }
    )


@pytest.fixture(scope="module")
def train():
    return make_train()


def test_shape_order_and_dtype(train):
    folds = assign_folds(train, 5, seed=42)
    assert list(folds.columns) == ["id", "fold"]
    assert folds["id"].tolist() == train["id"].tolist()
    assert folds["id"].dtype == np.int64 and folds["fold"].dtype == np.int64
    assert set(folds["fold"]) == set(range(5))


def test_same_prompt_same_fold(train):
    folds = assign_folds(train, 5, seed=42)
    keys = train["prompt"].map(json.dumps)
    assert folds.groupby(keys.to_numpy())["fold"].nunique().max() == 1


def test_every_fold_non_empty_and_label_balanced(train):
    folds = assign_folds(train, 5, seed=42)["fold"].to_numpy()
    overall = np.bincount(train["label"], minlength=3) / len(train)
    for k in range(5):
        y = train["label"].to_numpy()[folds == k]
        assert len(y) > 0
        assert np.abs(np.bincount(y, minlength=3) / len(y) - overall).max() < 0.08


def test_deterministic_from_seed(train):
    a = assign_folds(train, 5, seed=1)
    pd.testing.assert_frame_equal(a, assign_folds(train, 5, seed=1))
    assert not a["fold"].equals(assign_folds(train, 5, seed=2)["fold"])


def test_prompt_key_exact_and_array_safe():
    assert prompt_key(["x", None]) == prompt_key(np.array(["x", None], dtype=object))
    assert prompt_key(["a b"]) != prompt_key(["a", "b"])
    assert prompt_key(["x"]) != prompt_key(["x "])


def test_array_prompts_grouped_like_lists(train):
    as_arrays = train.assign(prompt=train["prompt"].map(lambda p: np.array(p, dtype=object)))
    pd.testing.assert_frame_equal(assign_folds(as_arrays, 4, 7), assign_folds(train, 4, 7))


@pytest.mark.parametrize("n_folds", [0, 1])
def test_too_few_folds(train, n_folds):
    with pytest.raises(InputError, match="at least 2"):
        assign_folds(train, n_folds, seed=0)


def test_fewer_prompts_than_folds():
    df = make_train(n_prompts=3)
    with pytest.raises(InputError, match="3 distinct prompt"):
        assign_folds(df, 5, seed=0)


def test_no_label_frequent_enough():
    df = pd.DataFrame({"id": np.arange(6), "prompt": [[f"p{i}"] for i in range(6)], "label": [0, 0, 1, 1, 2, 2]})
    with pytest.raises(InputError, match="no label occurs 4"):
        assign_folds(df, 4, seed=0)


def test_very_uneven_folds_are_reported(caplog):
    """One prompt holding most rows makes one fold huge and the others tiny: said in the log."""
    df = make_train(n_prompts=4, seed=1)
    big = pd.DataFrame(
        {
            "id": np.arange(5000, 5100),
            "prompt": [["the same prompt"]] * 100,
            "response_a": ["a"] * 100,
            "response_b": ["b"] * 100,
            "label": np.arange(100) % 3,
        }
    )
    assign_folds(pd.concat([df, big], ignore_index=True), 2, seed=0)
    assert "fold sizes are very uneven" in caplog.text
    caplog.clear()
    assign_folds(make_train(), 5, seed=0)
    assert "uneven" not in caplog.text
