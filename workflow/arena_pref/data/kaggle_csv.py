"""Read the Kaggle "LMSYS Chatbot Arena" CSVs into a checked, parsed table.

Kaggle cells ``prompt``, ``response_a`` and ``response_b`` hold JSON lists of turns
(strings or nulls).  They are parsed with :func:`json.loads` only, so data is never
executed.  Any problem in the input raises :class:`~arena_pref.errors.InputError` with one
message naming the file, the row id (when one row is at fault), the column and the problem.

Lone surrogates: the Kaggle texts contain JSON escapes such as ``"\\ud83d"`` (an emoji cut
in half).  ``json.loads`` accepts them and yields a ``str`` holding an unpaired surrogate
code point, which cannot be encoded as UTF-8 and would make parquet writing and tokenizers
fail.  Each unpaired surrogate is therefore replaced by U+FFFD (the replacement character);
valid pairs become the real character.
"""

from __future__ import annotations

import json
import logging
import re
from io import StringIO
from pathlib import Path

import numpy as np
import pandas as pd

from arena_pref import LABELS, atomic
from arena_pref.errors import InputError, describe

TURN_COLUMNS = ("prompt", "response_a", "response_b")
MODEL_COLUMNS = ("model_a", "model_b")
SPLITS = ("train", "test")

log = logging.getLogger(__name__)

_SURROGATE = re.compile("[\ud800-\udfff]")
_INT64 = np.iinfo(np.int64)


def read_kaggle_csv(path, split):
    """Read and check a Kaggle CSV; return one row per conversation, in file order.

    Columns: ``id`` (int64), ``model_a``/``model_b`` (str, only when the CSV has them),
    ``prompt``/``response_a``/``response_b`` (lists of str or None) and, for
    ``split="train"``, ``label`` (int64: 0 = A wins, 1 = B wins, 2 = tie).  Label columns
    in a test CSV are ignored.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
    path = Path(path)
    raw = _read_table(path)
    required = ["id", *TURN_COLUMNS] + (list(LABELS) if split == "train" else [])
    missing = [c for c in required if c not in raw.columns]
    if missing:
        raise InputError(
            f"{describe(path)}: missing required column(s) {', '.join(missing)} "
            f"(found: {', '.join(map(str, raw.columns))})"
        )

    ids = _parse_ids(path, raw["id"])
    out = {"id": ids}
    for col in MODEL_COLUMNS:
        if col in raw.columns:
            out[col] = raw[col].tolist()
    for col in TURN_COLUMNS:
        out[col] = [_parse_turns(path, i, col, cell) for i, cell in zip(ids, raw[col])]
    if split == "train":
        out["label"] = _parse_labels(path, ids, raw)
    return pd.DataFrame(out)


def last_turn_empty(turns):
    """Whether an answer's last turn is missing, null, empty or blank."""
    last = turns[-1] if len(turns) else None
    return last is None or not last.strip()


def check_training_labels(df, path):
    """Training rows must hold more than one class: with one, every model and the prior score a
    perfect 0 and nothing is learnt."""
    counts = np.bincount(df["label"], minlength=len(LABELS))
    if (counts > 0).sum() < 2:
        only = LABELS[int(np.argmax(counts))]
        raise InputError(
            f"{describe(path)}: every one of the {len(df)} rows has {only} = 1: training needs "
            "rows of at least two classes"
        )


def warn_shared_ids(train, test, path):
    """Ids in both train and test are usually a mix-up of files (or leaked rows): say so."""
    shared = np.intersect1d(train["id"].to_numpy(), test["id"].to_numpy())
    if len(shared):
        log.warning(
            "%s: %d test id(s) also appear in the training data (e.g. %s): check that the files are the ones you meant",
            describe(path),
            len(shared),
            ", ".join(map(str, shared[:5])),
        )


def unseen_extra_rows(extra, seen, path):
    """The rows of an extra (unlabelled) table to pseudo-label: rows whose prompt is also in one of
    the ``seen`` tables (train, test) are dropped and counted, since a teacher's label for a test
    prompt, or a training prompt's second copy, would leak into what it is scored on. An id that a
    seen table also has is an error: ids name rows in every prediction file."""
    from arena_pref.data.folds import prompt_key  # the key folds group prompts by (imports scikit-learn: only here)

    for table in seen:
        shared = np.intersect1d(extra["id"].to_numpy(), table["id"].to_numpy())
        if len(shared):
            raise InputError(
                f"{describe(path)}: row id {shared[0]}: column id: {len(shared)} id(s) are also train or "
                "test ids; give the extra rows ids of their own"
            )
    known = {prompt_key(p) for table in seen for p in table["prompt"]}
    keep = np.array([prompt_key(p) not in known for p in extra["prompt"]], dtype=bool)
    log.info(
        "%s: %d of %d rows dropped: their prompt is also in the training or test data; %d rows kept",
        describe(path),
        int((~keep).sum()),
        len(extra),
        int(keep.sum()),
    )
    if not keep.any():
        raise InputError(
            f"{describe(path)}: every row's prompt is also in the training or test data: nothing is "
            "left to pseudo-label"
        )
    return extra[keep].reset_index(drop=True)


def warn_unread_labels(path):
    """Extra rows are pseudo-labelled: label columns in their file are not read, which a file of
    human judgments did not mean; say so."""
    # the header alone: read_kaggle_csv has read and checked the whole file already
    columns = [c for c in LABELS if c in pd.read_csv(path, nrows=0, encoding="utf-8-sig").columns]
    if columns:
        log.warning(
            "%s: columns %s are not read: extra rows train on a teacher's pseudo-labels. Rows with human "
            "labels belong in data.train_csv",
            describe(path),
            ", ".join(columns),
        )


def write_parsed(df, path):
    """Write a table from :func:`read_kaggle_csv` to parquet, atomically."""
    atomic.write_parquet(df, path)


def read_parsed(path):
    """Read a table written by :func:`write_parsed`, with turn columns as python lists."""
    df = pd.read_parquet(path)
    # parquet hands list columns back as numpy object arrays; callers expect lists
    for col in TURN_COLUMNS:
        if col in df.columns:
            df[col] = [None if v is None else v.tolist() for v in df[col]]
    return df


def _read_table(path):
    """Read every cell as a raw string; report missing, undecodable, empty or malformed files."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{describe(path)}: file not found") from None
    except OSError as e:
        raise InputError(f"{describe(path)}: cannot read file ({e.strerror})") from None
    try:
        # utf-8-sig: tolerate the byte-order mark that spreadsheet programs add
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise InputError(
            f"{describe(path)}: not valid UTF-8 text: undecodable byte "
            f"0x{data[e.start]:02x} at byte offset {e.start} (line {line})"
        ) from None
    if not text.strip():
        raise InputError(f"{describe(path)}: file is empty")
    try:
        # dtype=str and keep_default_na=False keep every cell exactly as written
        # ("null", "NA", "" stay strings) so the checks below see the real content
        df = pd.read_csv(StringIO(text), dtype=str, keep_default_na=False)
    except pd.errors.ParserError as e:
        raise InputError(f"{describe(path)}: not a valid CSV file ({str(e).strip()})") from None
    if df.empty:
        raise InputError(f"{describe(path)}: no data rows (only a header)")
    # cells missing from short rows come back as NaN; make them empty so they are reported
    return df.fillna("")


_ID = re.compile(r"-?(0|[1-9][0-9]*)")  # a plain integer, written the way it is written back


def _parse_ids(path, column):
    ids = []
    for n, cell in enumerate(column, start=1):
        if not _ID.fullmatch(cell):
            # int() would also take ' +0077 ', '1_000' and non-ASCII digits, and the submission
            # would then carry an id other than the one written here
            problem = (
                "id is empty"
                if not cell.strip()
                else f"id {cell!r} is not a plain integer (ASCII digits, a minus sign at most; no plus sign, "
                "spaces, separators or leading zeros)"
            )
            raise InputError(f"{describe(path, column='id')}: data row {n}: {problem}")
        value = int(cell)
        if not _INT64.min <= value <= _INT64.max:
            raise InputError(
                f"{describe(path, column='id')}: data row {n}: id {cell!r} is out of the 64-bit integer range"
            )
        ids.append(value)
    ids = np.array(ids, dtype=np.int64)
    values, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        dup = values[counts > 1]
        first = ids[np.isin(ids, dup)][0]  # the first repeated id in file order
        n = int(counts[values == first][0])
        raise InputError(
            f"{describe(path, row_id=first, column='id')}: duplicate id (appears {n} times; ids must be unique)"
        )
    return ids


def _parse_turns(path, row_id, column, cell):
    """Parse one JSON list of turns; each turn is a string (surrogates fixed) or None."""
    where = describe(path, row_id=row_id, column=column)
    if not cell.strip():
        raise InputError(f"{where}: cell is empty (expected a JSON list of turns)")
    try:
        turns = json.loads(cell)
    except json.JSONDecodeError as e:
        raise InputError(f"{where}: invalid JSON ({e})") from None
    if not isinstance(turns, list):
        raise InputError(f"{where}: expected a JSON list of turns, found a JSON {_json_type(turns)}")
    for k, turn in enumerate(turns):
        if turn is None:
            continue
        if not isinstance(turn, str):
            raise InputError(f"{where}: turn {k} is a JSON {_json_type(turn)}; turns must be strings or null")
        if _SURROGATE.search(turn):
            turns[k] = _fix_surrogates(turn)
    return turns


def _fix_surrogates(text):
    # A round trip through UTF-16 joins valid surrogate pairs into the real character and
    # turns each unpaired surrogate into U+FFFD.  (-le: no byte-order mark to strip.)
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


def _json_type(value):
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return {dict: "object", list: "list", str: "string", type(None): "null"}[type(value)]


def _parse_labels(path, ids, raw):
    """Turn the one-hot winner columns into one label per row (index into LABELS)."""
    onehot = np.column_stack([_parse_label_column(path, ids, raw[col]) for col in LABELS])
    bad = np.flatnonzero(onehot.sum(axis=1) != 1)
    if len(bad):
        n = bad[0]
        values = ", ".join(f"{c}={v}" for c, v in zip(LABELS, onehot[n]))
        raise InputError(
            f"{describe(path, row_id=ids[n])}: labels are not one-hot ({values}; "
            "exactly one of the winner columns must be 1)"
        )
    return onehot.argmax(axis=1).astype(np.int64)


def _parse_label_column(path, ids, column):
    # the common spellings are mapped in one go; only the others are looked at one by one
    values = column.str.strip().map({"0": 0, "1": 1})
    for n in np.flatnonzero(values.isna().to_numpy()):
        cell = column.iloc[n]
        where = describe(path, row_id=ids[n], column=column.name)
        if not cell.strip():
            raise InputError(f"{where}: label is empty (expected 0 or 1)")
        try:
            value = int(cell)
        except ValueError:
            raise InputError(f"{where}: label {cell!r} is not an integer (expected 0 or 1)") from None
        if value not in (0, 1):
            raise InputError(f"{where}: label {cell!r} is not 0 or 1")
        values.iloc[n] = value
    return values.to_numpy(dtype=np.int64)
