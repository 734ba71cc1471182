"""The pair-feature model: exact symmetry of its statistics, hand-counted examples, learners
that learn, are deterministic and symmetric, and saved models that predict the same."""

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from arena_pref.data import demo, kaggle_csv
from arena_pref.errors import InputError
from arena_pref.features import pair_features
from arena_pref.metrics import log_loss, prior_log_loss, tta_average


def learner(learner="hgb", **changes):
    """A features member's learner settings, as the workflow builds them (small and fast here)."""
    from arena_pref import settings

    small = (
        {"max_iter": 60, "learning_rate": 0.1, "max_leaf_nodes": 7, "min_samples_leaf": 10} if learner == "hgb" else {}
    )
    return settings.model_config({"kind": "features", "learner": learner, **small, **changes}).learner


LEARNERS = [learner(), learner(learner="logreg", max_iter=500)]
TABLE = """| name | value |
|------|-------|
| a    | 1     |"""
CODE = "Here:\n```python\nprint(1)\n```\nand\n```\nx\n```"


def table(*rows):
    """A parsed table from ``(prompt, response_a, response_b)`` turn lists."""
    return pd.DataFrame(
        {
            "id": np.arange(10, 10 + len(rows), dtype=np.int64),
            "prompt": [r[0] for r in rows],
            "response_a": [r[1] for r in rows],
            "response_b": [r[2] for r in rows],
        }
    )


def swapped(parsed):
    return parsed.rename(columns={"response_a": "response_b", "response_b": "response_a"})


def one(prompt, a, b=("",)):
    """The statistics of a single row as a Series."""
    return pair_features.pair_stats(table((list(prompt), list(a), list(b)))).iloc[0]


VARIED = table(
    (["Explain lists"], ["# Title\n- one\n- two\n1. three\n**bold** and __also__"], ["Sure. I can’t help, sorry."]),
    (["first", "second?"], ["I'm sorry, I cannot.", None], [TABLE, "see https://x.org and [doc](docs/a.md)"]),
    (["q", None, "r"], ["same", "", "  "], ["same", "", "  "]),
    (["write code"], [CODE], ["As an AI, I won't. My apologies. I apologize!"]),
    (["empty answers"], [], [None]),
    (["prompt words overlap"], ["prompt words here", "and overlap"], ["nothing shared"]),
)


def side_to_side(stats):
    """``stats`` with the a_ and b_ columns exchanged, in the original column order."""
    renamed = stats.rename(
        columns=lambda c: {"a_": "b_", "b_": "a_"}.get(c[:2], "") + c[2:] if c[:2] in ("a_", "b_") else c
    )
    return renamed[stats.columns]


# ------------------------------------------------------------------------------ pair_stats


def test_pair_stats_columns_and_types():
    stats = pair_features.pair_stats(VARIED)
    assert list(stats.columns) == (
        ["id"]
        + [f"a_{s}" for s in pair_features.SIDE_STATS]
        + [f"b_{s}" for s in pair_features.SIDE_STATS]
        + list(pair_features.SHARED_STATS)
    )
    assert stats["id"].dtype == np.int64 and stats["id"].tolist() == VARIED["id"].tolist()
    assert (stats.dtypes.drop("id") == np.float64).all()
    assert np.isfinite(stats.drop(columns="id").to_numpy()).all()


def test_pair_stats_is_exactly_symmetric_in_the_two_answers():
    stats = pair_features.pair_stats(VARIED)
    mirrored = pair_features.pair_stats(swapped(VARIED))
    pd.testing.assert_frame_equal(mirrored, side_to_side(stats), check_exact=True)
    # the rows are not all symmetric themselves, or the test would prove nothing
    assert not stats["a_words"].equals(stats["b_words"])


def test_pair_stats_of_a_parsed_parquet_table(tmp_path):
    """The table as the workflow reads it (lists of turns back from parquet, demo data with its
    null turns, emoji and repaired lone surrogates), learnt from better than the prior."""
    demo.write_demo_csvs(tmp_path / "train.csv", tmp_path / "test.csv", n_train=300, n_test=10, seed=3)
    kaggle_csv.write_parsed(kaggle_csv.read_kaggle_csv(tmp_path / "train.csv", "train"), tmp_path / "train.parquet")
    parsed = kaggle_csv.read_parsed(tmp_path / "train.parquet")
    stats = pair_features.pair_stats(parsed)
    assert len(stats) == 300 and (stats["a_refusal"] > 0).any() and (stats["a_list_items"] > 0).any()
    probs = pair_features.predict(pair_features.fit(stats, parsed["label"], learner()), stats)
    assert log_loss(parsed["label"], probs) < prior_log_loss(parsed["label"])


def test_markdown_counts():
    text = (
        "# Title\n## Sub\n#hashtag\n- one\n* two\n+ three\n1. four\n2) five\n-not an item\n---\n"
        "**bold** and __bold__ but ** not ** or **\n**, x\n"
        + TABLE
        + "\n"
        + CODE
        + "\nhttps://a.org/x, http://b.org [doc](https://c.org) [rel](docs/a.md) [no link]"
    )
    s = one(["p"], [text])
    assert (s.a_headers, s.a_list_items, s.a_bold, s.a_table_rows, s.a_code_blocks, s.a_links) == (2, 5, 2, 3, 2, 4)
    # an unclosed fence opens a block; markdown is counted over all turns
    s = one(["p", "q"], ["```\nx", "# Head\n- item"])
    assert (s.a_code_blocks, s.a_headers, s.a_list_items) == (1, 1, 1)
    assert (s.b_code_blocks, s.b_headers) == (0, 0)


def test_phrase_counts_ignore_case_apostrophes_and_punctuation_but_need_whole_words():
    s = one(
        ["p"],
        [
            "I CAN'T do that. I can’t, really; i   cannot! As an AI... Hi can't; I canned it.",
            "I'm sorry — I’M SORRY. Unfortunately, my apologies",
        ],
    )
    assert (s.a_refusal, s.a_apology) == (4, 4)
    s = one(["p"], ["I can't I can't"])  # adjacent matches both count
    assert s.a_refusal == 2


def test_phrase_lists_never_count_the_same_words_twice():
    for name, needles in pair_features.PHRASES.items():
        phrases = [needle.split() for needle, _ in needles]
        for i, p in enumerate(phrases):
            for j, q in enumerate(phrases):
                if i == j:
                    continue
                inside = any(q[k : k + len(p)] == p for k in range(len(q) - len(p) + 1))
                overlap = any(p[-k:] == q[:k] for k in range(1, min(len(p), len(q))))
                assert not inside and not overlap, f"{name}: {p} and {q} can match the same words"


def test_lengths_turns_and_empty_turns():
    s = one(["Tell me", None], ["first turn\nline two", "last, turn: three words!\n\n"], [None, "  ", ""])
    assert (s.a_last_chars, s.a_last_words, s.a_last_lines) == (26, 4, 3)
    assert (s.a_chars, s.a_words, s.a_lines) == (19 + 26, 4 + 4, 2 + 3)
    assert (s.a_turns, s.a_empty_turns, s.b_turns, s.b_empty_turns) == (2, 0, 3, 3)
    assert (s.b_chars, s.b_words, s.b_last_chars, s.b_last_lines) == (2, 0, 0, 0)
    assert (s.n_turns, s.prompt_chars, s.prompt_words) == (2, 7, 2)
    assert (s.identical, s.any_last_empty) == (0, 1)


def test_identical_and_near_identical():
    s = one(["p"], ["Same words here.", None], ["Same words here.", None])
    assert (s.identical, s.near_identical, s.any_last_empty) == (1, 1, 1)
    s = one(["p"], ["Same words here."], ["same WORDS, here"])
    assert (s.identical, s.near_identical) == (0, 1)
    s = one(["p"], ["one two three"], ["three four"])
    assert s.near_identical == pytest.approx(1 / 4)
    assert one(["p"], [None], [""]).near_identical == 0  # no words: 0, not a division by zero


def test_overlap_with_the_prompt():
    s = one(["What is the sky?", "And the sea"], ["The sky is blue.", "the SEA too"], ["no"])
    # prompt {what, is, the, sky, and, sea}, answer {the, sky, is, blue, sea, too}: 4 shared of 8
    assert s.a_prompt_jaccard == pytest.approx(4 / 8)
    assert s.a_prompt_coverage == pytest.approx(4 / 6)
    assert (s.b_prompt_jaccard, s.b_prompt_coverage) == (0, 0)
    assert one([None], ["words"]).a_prompt_coverage == 0


# ------------------------------------------------------------------------------ design matrix


def test_design_matrix_columns_and_derived_values():
    stats = pair_features.pair_stats(VARIED)
    x = pair_features.design_matrix(stats)
    side = list(pair_features.SIDE_STATS)
    assert list(x.columns) == [f"{k}_{s}" for s in side for k in pair_features.DERIVED] + list(
        pair_features.SHARED_STATS
    )
    a, b = stats["a_chars"], stats["b_chars"]
    np.testing.assert_allclose(x["diff_chars"], a - b)
    np.testing.assert_allclose(x["logratio_chars"], np.log1p(a) - np.log1p(b))
    np.testing.assert_allclose(x["share_chars"], (a + 0.5) / (a + b + 1))
    np.testing.assert_array_equal(x["near_identical"], stats["near_identical"])


def test_design_matrix_swap_is_the_design_matrix_of_the_swapped_rows():
    stats = pair_features.pair_stats(VARIED)
    mirror = pair_features.design_matrix(stats, swap=True)
    pd.testing.assert_frame_equal(
        mirror, pair_features.design_matrix(pair_features.pair_stats(swapped(VARIED))), check_exact=True
    )
    assert not mirror.equals(pair_features.design_matrix(stats))


def test_design_matrix_rejects_unpaired_statistics():
    stats = pair_features.pair_stats(VARIED).drop(columns="b_bold")
    with pytest.raises(ValueError, match="a_/b_ pairs"):
        pair_features.design_matrix(stats)


# ------------------------------------------------------------------------------ learners


def length_rows(n, seed):
    """Rows whose longer answer usually wins (20% of labels random), similar lengths tie."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 120, size=(n, 2))
    words = [[" ".join(["word"] * k) + "."] for k in lengths.ravel()]
    label = np.where(np.abs(lengths[:, 0] - lengths[:, 1]) < 10, 2, np.where(lengths[:, 0] > lengths[:, 1], 0, 1))
    noisy = rng.random(n) < 0.2
    label[noisy] = rng.integers(0, 3, noisy.sum())
    parsed = table(*[(["question"], words[2 * i], words[2 * i + 1]) for i in range(n)])
    return pair_features.pair_stats(parsed), label


@pytest.fixture(scope="module")
def rows():
    return length_rows(600, seed=0)


@pytest.mark.parametrize("settings", LEARNERS, ids=lambda s: s.learner)
def test_learners_learn_that_the_longer_answer_wins(rows, settings):
    stats, y = rows
    fitted = pair_features.fit(stats.iloc[:400], y[:400], settings)
    probs = pair_features.predict(fitted, stats.iloc[400:])
    assert probs.shape == (200, 3) and probs.dtype == np.float64
    np.testing.assert_allclose(probs.sum(axis=1), 1)
    assert log_loss(y[400:], probs) < prior_log_loss(y[400:]) - 0.2


@pytest.mark.parametrize("settings", LEARNERS, ids=lambda s: s.learner)
def test_labels_without_ties_give_a_zero_tie_column(rows, settings):
    stats, y = rows
    keep = y != 2
    fitted = pair_features.fit(stats[keep], y[keep], settings)
    probs = pair_features.predict(fitted, stats)
    assert probs.shape == (len(stats), 3)
    np.testing.assert_array_equal(probs[:, 2], 0)
    np.testing.assert_allclose(probs.sum(axis=1), 1)


@pytest.mark.parametrize("settings", LEARNERS, ids=lambda s: s.learner)
def test_same_seed_same_probabilities(rows, settings):
    stats, y = rows
    first = pair_features.predict(pair_features.fit(stats, y, settings), stats)
    np.testing.assert_array_equal(first, pair_features.predict(pair_features.fit(stats, y, settings), stats))


@pytest.mark.parametrize("settings", LEARNERS, ids=lambda s: s.learner)
def test_averaging_both_orders_is_exactly_symmetric(rows, settings):
    """The prediction with test-time averaging of a row and of its mirror image are mirrors."""
    stats, y = rows
    fitted = pair_features.fit(stats, y, settings)
    mirror = side_to_side(stats)
    plain = tta_average(pair_features.predict(fitted, stats), pair_features.predict(fitted, stats, swap=True))
    of_mirror = tta_average(pair_features.predict(fitted, mirror), pair_features.predict(fitted, mirror, swap=True))
    np.testing.assert_allclose(of_mirror, plain[:, [1, 0, 2]], rtol=0, atol=1e-12)
    # predicting with swap=True is predicting the mirrored rows
    np.testing.assert_array_equal(
        pair_features.predict(fitted, stats, swap=True), pair_features.predict(fitted, mirror)
    )


def test_logreg_fitted_on_both_orders_gives_mirrored_rows_mirrored_probabilities(rows):
    """Mirroring is a linear map of the design columns (the shares of A and B sum to 1), so the
    regression fitted on both orders is its own mirror image, up to where the solver stops (with
    a share of a / (a + b + 1) the probabilities were up to 0.09 apart)."""
    stats, y = rows
    fitted = pair_features.fit(stats, y, LEARNERS[1])
    plain, mirrored = pair_features.predict(fitted, stats), pair_features.predict(fitted, stats, swap=True)
    np.testing.assert_allclose(mirrored[:, [1, 0, 2]], plain, rtol=0, atol=1e-4)
    assert np.abs(plain[:, 0] - plain[:, 1]).max() > 0.5  # the rows are far from symmetric


def test_hgb_fitted_on_both_orders_gives_mirrored_rows_nearly_mirrored_probabilities(rows):
    """Trees split each column on its own, so not exactly (here at most 0.15 apart): on average
    close, and test-time averaging makes it exact."""
    stats, y = rows
    fitted = pair_features.fit(stats, y, LEARNERS[0])
    plain, mirrored = pair_features.predict(fitted, stats), pair_features.predict(fitted, stats, swap=True)
    assert np.abs(mirrored[:, [1, 0, 2]] - plain).mean() < 0.03


def test_fit_checks_labels_and_learner(rows):
    stats, y = rows
    with pytest.raises(ValueError, match="599 labels for 600 rows"):
        pair_features.fit(stats, y[:-1], learner())
    with pytest.raises(ValueError, match="labels must be in 0..2"):
        pair_features.fit(stats, np.where(y == 2, 3, y), learner())
    with pytest.raises(ValueError, match="learner must be one of"):
        pair_features.fit(stats, y, replace(learner(), learner="svm"))


# ------------------------------------------------------------------------------ save and load


def test_save_load_round_trip(tmp_path, rows):
    stats, y = rows
    fitted = pair_features.fit(stats, y, learner())
    path = tmp_path / "models" / "learner.joblib"
    pair_features.save(fitted, path)
    assert [p.name for p in path.parent.iterdir()] == ["learner.joblib"]  # no temporary file left
    loaded = pair_features.load(path)
    assert loaded.columns == tuple(pair_features.stat_columns(stats)) and loaded.learner == "hgb"
    for swap in (False, True):
        np.testing.assert_array_equal(
            pair_features.predict(loaded, stats, swap=swap), pair_features.predict(fitted, stats, swap=swap)
        )


def test_load_rejects_other_objects(tmp_path):
    import joblib

    joblib.dump({"not": "a model"}, tmp_path / "other.joblib")
    with pytest.raises(InputError, match="other.joblib: not a pair-feature learner written by arena-pref"):
        pair_features.load(tmp_path / "other.joblib")


def test_a_learner_fitted_under_another_scikit_learn_is_named(tmp_path, rows, monkeypatch):
    """A bundle's learner loaded by a Kaggle image's other scikit-learn: an error naming both
    versions, not a pickle that half-loads."""
    import sklearn

    stats, y = rows
    path = tmp_path / "learner.joblib"
    pair_features.save(pair_features.fit(stats, y, learner()), path)
    monkeypatch.setattr(sklearn, "__version__", "0.0.1")
    with pytest.raises(
        InputError,
        match=r"learner.joblib was fitted with scikit-learn \S+, and this is "
        r"scikit-learn 0.0.1",
    ):
        pair_features.load(path)


def test_predict_rejects_statistics_with_other_columns(rows):
    stats, y = rows
    fitted = pair_features.fit(stats, y, learner())
    with pytest.raises(ValueError, match=r"missing \['a_bold', 'b_bold'\], unexpected \[\]"):
        pair_features.predict(fitted, stats.drop(columns=["a_bold", "b_bold"]))
    with pytest.raises(ValueError, match=r"unexpected \['a_emoji', 'b_emoji'\]"):
        pair_features.predict(fitted, stats.assign(a_emoji=0.0, b_emoji=0.0))
    reordered = stats[["id", *reversed(pair_features.stat_columns(stats))]]
    with pytest.raises(ValueError, match="another order"):
        pair_features.predict(fitted, reordered)
    # the id column is no statistic: with or without it, the same prediction
    np.testing.assert_array_equal(
        pair_features.predict(fitted, stats.drop(columns="id")), pair_features.predict(fitted, stats)
    )


# ------------------------------------------------------------------------------ benchmark


def test_features_bench_runs_at_toy_size():
    from arena_pref.tools import bench

    result = bench.bench_features(rows=300, threads=1)
    assert set(result["learners"]) == set(pair_features.LEARNERS) and result["pair_stats_s"] > 0
    for timed in result["learners"].values():
        assert set(timed["seconds"]) == {"fit", "predict", "total_with_stats"}
        assert all(v > 0 for v in timed["rows_per_s"].values())
        assert timed["log_loss_in_sample"] < result["prior_log_loss"]
    assert result["setup"]["stat_columns"] == 2 * len(pair_features.SIDE_STATS) + len(pair_features.SHARED_STATS)
