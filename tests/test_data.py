"""Reading the Kaggle CSVs: every format quirk, and a clear error for every bad input."""

import json

import numpy as np
import pandas as pd
import pytest
from arena_pref import LABELS
from arena_pref.data.kaggle_csv import (
    check_training_labels,
    read_kaggle_csv,
    read_parsed,
    warn_shared_ids,
    write_parsed,
)
from arena_pref.errors import InputError

ONE_HOT = {0: ("1", "0", "0"), 1: ("0", "1", "0"), 2: ("0", "0", "1")}


def row(id="4242", prompt='["Hi"]', a='["Hello!"]', b='["Hey."]', label=0, models=True):
    """One CSV row as raw cell strings; ``label`` is a class or a tuple of three cells."""
    r = {"id": id}
    if models:
        r.update(model_a="gpt-4-0613", model_b="vicuna-13b")
    r.update(prompt=prompt, response_a=a, response_b=b)
    if label is not None:
        r.update(zip(LABELS, ONE_HOT[label] if isinstance(label, int) else label))
    return r


def write(tmp_path, rows, name="train.csv"):
    path = tmp_path / name
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


# --- format quirks ---------------------------------------------------------------------


def test_parses_turns_nulls_and_labels_in_file_order(tmp_path):
    path = write(
        tmp_path,
        [
            row(
                id="30",
                prompt='["Hi", "How are you?"]',
                a='["Hello", null]',
                b='[null, "Fine"]',
                label=1,
            ),
            row(id="10", label=2),
            row(id="20", label=0),
        ],
    )
    df = read_kaggle_csv(path, "train")
    assert list(df.columns) == [
        "id",
        "model_a",
        "model_b",
        "prompt",
        "response_a",
        "response_b",
        "label",
    ]
    assert df["id"].dtype == np.int64 and df["label"].dtype == np.int64
    assert df["id"].tolist() == [30, 10, 20]
    assert df["label"].tolist() == [1, 2, 0]
    assert df.loc[0, "prompt"] == ["Hi", "How are you?"]
    assert df.loc[0, "response_a"] == ["Hello", None]
    assert df.loc[0, "response_b"] == [None, "Fine"]
    assert df.loc[0, "model_a"] == "gpt-4-0613"


def test_unicode_escapes_and_surrogates(tmp_path):
    path = write(
        tmp_path,
        [
            row(
                id="1",
                prompt='["caf\\u00e9 \\u4e2d\\u6587"]',
                a='["\\ud83d"]',
                b='["ok \\ud83d\\ude00"]',
            ),
            row(
                id="2",
                prompt='["a\\ud83dx\\ude00b"]',
                a='["\\ude00\\ud83d"]',
                b='["é direct"]',
            ),
        ],
    )
    df = read_kaggle_csv(path, "train")
    assert df.loc[0, "prompt"] == ["café 中文"]
    assert df.loc[0, "response_a"] == ["\ufffd"]  # lone high surrogate
    assert df.loc[0, "response_b"] == ["ok 😀"]  # a valid pair is the real emoji
    assert df.loc[1, "prompt"] == ["a\ufffdx\ufffdb"]
    assert df.loc[1, "response_a"] == ["\ufffd\ufffd"]  # reversed halves are no pair
    assert df.loc[1, "response_b"] == ["é direct"]


def test_cells_are_kept_verbatim(tmp_path):
    # strings pandas would turn into NaN by default must stay text
    path = write(
        tmp_path,
        [row(prompt='["NA"]', a='["null"]', b='["N/A", ""]') | {"model_a": "NA"}],
    )
    df = read_kaggle_csv(path, "train")
    assert df.loc[0, "model_a"] == "NA"
    assert (df.loc[0, "prompt"], df.loc[0, "response_a"], df.loc[0, "response_b"]) == (
        ["NA"],
        ["null"],
        ["N/A", ""],
    )


def test_model_columns_are_optional(tmp_path):
    df = read_kaggle_csv(write(tmp_path, [row(models=False)]), "train")
    assert list(df.columns) == ["id", "prompt", "response_a", "response_b", "label"]


def test_test_split_needs_no_labels_and_ignores_them(tmp_path):
    df = read_kaggle_csv(write(tmp_path, [row(label=None, models=False)], "test.csv"), "test")
    assert list(df.columns) == ["id", "prompt", "response_a", "response_b"]
    # label columns in a test CSV are ignored, even broken ones
    df = read_kaggle_csv(write(tmp_path, [row(label=("1", "1", ""))], "test.csv"), "test")
    assert "label" not in df.columns and "winner_tie" not in df.columns


def test_byte_order_mark_is_accepted(tmp_path):
    path = write(tmp_path, [row()])
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert read_kaggle_csv(path, "train")["id"].tolist() == [4242]


def test_round_trip_through_parquet(tmp_path):
    path = write(
        tmp_path,
        [
            row(
                id="1",
                prompt='["Hi", "Again"]',
                a='["\\ud83d", null]',
                b='["x", "y"]',
                label=2,
            ),
            row(id="2", label=1),
        ],
    )
    df = read_kaggle_csv(path, "train")
    write_parsed(df, tmp_path / "out" / "train.parquet")
    back = read_parsed(tmp_path / "out" / "train.parquet")
    assert back.to_dict("records") == df.to_dict("records")
    assert isinstance(back.loc[0, "response_a"], list) and back.loc[0, "response_a"] == ["\ufffd", None]
    assert back["id"].dtype == np.int64 and back["label"].dtype == np.int64


def test_parsing_never_executes_data(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = "__import__('os').system('touch PWNED')"
    df = read_kaggle_csv(write(tmp_path, [row(prompt=json.dumps([code]))]), "train")
    assert df.loc[0, "prompt"] == [code]
    assert not (tmp_path / "PWNED").exists()
    # a Python literal that is not JSON is rejected, not evaluated
    with pytest.raises(InputError, match="invalid JSON"):
        read_kaggle_csv(write(tmp_path, [row(prompt="['a']")]), "train")


# --- bad input -------------------------------------------------------------------------


def assert_error(path, expected, split="train"):
    """The error names the file and contains every expected piece (row id, column, problem)."""
    with pytest.raises(InputError) as info:
        read_kaggle_csv(path, split)
    message = str(info.value)
    assert path.name in message
    for piece in expected:
        assert piece in message, f"{piece!r} not in {message!r}"
    assert "\n" not in message  # one message, no traceback-like dump


def test_missing_file(tmp_path):
    assert_error(tmp_path / "nope.csv", ["not found"])


def test_not_utf8(tmp_path):
    path = write(tmp_path, [row(id="1"), row(id="2", prompt='["caf\u00e9"]')])
    path.write_bytes(path.read_bytes().replace("é".encode(), b"\xe9"))  # latin-1 byte
    assert_error(path, ["UTF-8", "byte offset", "line 3"])


@pytest.mark.parametrize("content", ["", "\n  \n"])
def test_empty_file(tmp_path, content):
    path = tmp_path / "train.csv"
    path.write_text(content)
    assert_error(path, ["empty"])


def test_header_only(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text(",".join(row()) + "\n")
    assert_error(path, ["no data rows"])


def test_missing_columns(tmp_path):
    r = row()
    del r["prompt"], r["winner_tie"]
    assert_error(write(tmp_path, [r]), ["missing", "prompt", "winner_tie"])


def test_missing_columns_in_test_split(tmp_path):
    r = row(label=None)
    del r["response_b"]
    assert_error(write(tmp_path, [r], "test.csv"), ["missing", "response_b"], split="test")


def test_malformed_csv(tmp_path):
    path = write(tmp_path, [row()])
    path.write_text(path.read_text() + "1,2,3,4,5,6,7,8,9,10,11\n")
    assert_error(path, ["not a valid CSV"])


@pytest.mark.parametrize(
    "column, cell, problem",
    [
        ("prompt", '["Hi"', "invalid JSON"),
        ("response_a", "", "empty"),
        ("response_b", "   ", "empty"),
        ("prompt", '"Hi"', "found a JSON string"),
        ("response_a", '{"turn": "Hi"}', "found a JSON object"),
        ("response_b", "null", "found a JSON null"),
        ("prompt", '["Hi", 3]', "turn 1 is a JSON number"),
        ("response_a", '[["nested"]]', "turn 0 is a JSON list"),
        ("response_b", "[true]", "turn 0 is a JSON boolean"),
        ("prompt", "[NaN]", "turn 0 is a JSON number"),
    ],
)
def test_bad_turn_cell(tmp_path, column, cell, problem):
    r = row(id="4242") | {column: cell}
    assert_error(
        write(tmp_path, [row(id="1"), r]),
        ["row id 4242", f"column '{column}'", problem],
    )


def test_short_row_is_reported_as_empty_cell(tmp_path):
    path = write(tmp_path, [row(id="1")])
    path.write_text(path.read_text() + "4242,gpt-4-0613,vicuna-13b\n")
    assert_error(path, ["row id 4242", "column 'prompt'", "empty"])


@pytest.mark.parametrize(
    "cell, problem",
    [
        ("abc", "'abc' is not a plain integer"),
        ("1.5", "not a plain integer"),
        ("", "empty"),
        # int() takes these, and the submission would carry another id than the one written
        ("1_000", "'1_000' is not a plain integer"),
        (" +0077 ", "' +0077 ' is not a plain integer"),
        ("0077", "'0077' is not a plain integer"),
        ("\u0661\u0662", "is not a plain integer"),
    ],
)
def test_bad_id(tmp_path, cell, problem):
    assert_error(
        write(tmp_path, [row(id="1"), row(id=cell)]),
        ["column 'id'", "data row 2", problem],
    )


def test_duplicate_id(tmp_path):
    path = write(tmp_path, [row(id="7"), row(id="4242"), row(id="8"), row(id="4242")])
    assert_error(path, ["row id 4242", "column 'id'", "duplicate"])


@pytest.mark.parametrize(
    "cells, column, problem",
    [
        (("1", "", "0"), "winner_model_b", "empty"),
        (("nan", "0", "1"), "winner_model_a", "not an integer"),
        (("0", "0.5", "1"), "winner_model_b", "not an integer"),
        (("0", "0", "2"), "winner_tie", "not 0 or 1"),
        (("1", "1", "0"), "winner_tie", "not one-hot"),
        (("0", "0", "0"), "winner_model_a", "not one-hot"),
    ],
)
def test_bad_labels(tmp_path, cells, column, problem):
    # for "not one-hot" every winner column is named, so any one of them will do
    assert_error(
        write(tmp_path, [row(id="1"), row(id="4242", label=cells)]),
        ["row id 4242", column, problem],
    )


def test_label_columns_missing_in_train(tmp_path):
    path = write(tmp_path, [row(label=None)])
    assert_error(path, ["missing", *LABELS])


def test_unknown_split(tmp_path):
    with pytest.raises(ValueError, match="split"):
        read_kaggle_csv(write(tmp_path, [row()]), "valid")


def test_negative_and_zero_ids_are_plain_integers(tmp_path):
    assert read_kaggle_csv(write(tmp_path, [row(id="0"), row(id="-12")]), "train")["id"].tolist() == [0, -12]


def test_training_rows_of_one_class_are_an_error(tmp_path):
    """With one class the prior and every model score a perfect 0: nothing could be learnt."""
    path = write(tmp_path, [row(id=str(i), label=1) for i in range(5)])
    df = read_kaggle_csv(path, "train")
    with pytest.raises(InputError, match=r"every one of the 5 rows has winner_model_b = 1"):
        check_training_labels(df, path)
    check_training_labels(read_kaggle_csv(write(tmp_path, [row(id="1", label=1), row(id="2", label=2)]), "train"), path)


def test_test_ids_seen_in_training_are_reported(tmp_path, caplog):
    train = read_kaggle_csv(write(tmp_path, [row(id="1"), row(id="2"), row(id="3")]), "train")
    test_path = write(tmp_path, [row(id="3", label=None), row(id="9", label=None)], name="test.csv")
    warn_shared_ids(train, read_kaggle_csv(test_path, "test"), test_path)
    assert "1 test id(s) also appear in the training data (e.g. 3)" in caplog.text
