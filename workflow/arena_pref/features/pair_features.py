"""Pair features: a cheap CPU preference model from hand-made statistics of the two answers.

Three steps, each its own function so the workflow can cache the slow one:

* :func:`pair_stats` reads a parsed table (:func:`arena_pref.data.kaggle_csv.read_parsed`) and measures
  each answer (lengths, markdown structure, refusal and apology phrases, overlap with the
  prompt, empty turns) and the pair (prompt size, turns, how alike the two answers are).
  Per-answer statistics are ``a_<stat>`` and ``b_<stat>``, computed by the same code for both
  sides; shared ones are symmetric in the two answers. So exchanging the answers exchanges the
  ``a_`` and ``b_`` columns and changes nothing else, which is what makes the mirrored rows
  below exact.
* :func:`design_matrix` turns the statistics into what the learner sees: for each per-answer
  statistic both values, their difference, their log ratio and A's share, then the shared ones.
  ``swap=True`` builds the mirror image (A and B exchanged) from the same statistics. Every
  derived column of the mirror is a sign flip or an affine function of the row's own (the
  shares of A and B sum to 1), so mirroring is a linear map of the features.
* :func:`fit` learns on every row twice, as given and mirrored with the labels "A wins" and "B
  wins" exchanged: the data the learner sees is then symmetric, so it cannot learn a position
  bias the real data does not have. Logistic regression's fit is then its own mirror image (the
  linear map above carries it to itself), so it gives mirrored rows mirrored probabilities, up
  to where its solver stops (1e-5 or so); gradient-boosted trees do so only on average. Test-time averaging with
  :func:`arena_pref.metrics.tta_average` makes any learner's final prediction exactly symmetric.

Probabilities are ``(n, 3)`` in the class order of :data:`arena_pref.LABELS` (A wins, B wins,
tie). Phrase lists are data, kept in ``feature_phrases.yaml`` beside this module.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import yaml
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from arena_pref import LABELS
from arena_pref.atomic import atomic_path
from arena_pref.data.kaggle_csv import last_turn_empty
from arena_pref.errors import InputError
from arena_pref.metrics import MIRROR, with_all_classes

PHRASES_FILE = Path(__file__).with_name("feature_phrases.yaml")
LEARNERS = ("hgb", "logreg")
DERIVED = ("a", "b", "diff", "logratio", "share")
"""The design-matrix columns made from each per-answer statistic, in order."""

# Markdown structure, over an answer's turns joined by newlines with one more newline at each
# end. Line patterns start with a literal "\n" rather than "^" under re.M: the regex engine then
# jumps from newline to newline instead of trying every position (3 to 4 times faster).
_LIST_ITEM = re.compile(r"\n[ \t]*(?:[-*+]|\d{1,3}[.)])[ \t]+\S")
_HEADER = re.compile(r"\n[ \t]{0,3}#{1,6}[ \t]+\S")
_FENCE = re.compile(r"\n[ \t]*```")
_TABLE_ROW = re.compile(r"\n[ \t]*\|[^\n]*\|[ \t]*(?=\n)")
# one pattern per literal start ("**", "__"; "http", "["), again so the engine can skip ahead
_BOLD = (re.compile(r"\*\*[^\s*](?:[^*\n]*[^\s*])?\*\*"), re.compile(r"__[^\s_](?:[^_\n]*[^\s_])?__"))
# a markdown link to an http(s) address is counted once, by its address
_LINKS = (re.compile(r"https?://\S+"), re.compile(r"\[[^\]\n]+\]\((?!https?://)[^)\s]+\)"))
_MARKDOWN = {
    "list_items": (_LIST_ITEM,),
    "headers": (_HEADER,),
    "bold": _BOLD,
    "table_rows": (_TABLE_ROW,),
    "links": _LINKS,
}

# Words, for word counts, phrases and overlaps: lower-cased, ASCII punctuation taken as space,
# apostrophes kept inside words ("can't") with the curly ones made straight, so "I can’t" is
# "i can't". They are UTF-8 bytes: bytes.translate is a table look-up per byte, while
# str.translate on text with any non-ASCII character made the word split 4 times slower.
_PUNCTUATION = b'!"#$%&()*+,-./:;<=>?@[\\]^_`{|}~'
_PUNCTUATION_TO_SPACE = bytes.maketrans(_PUNCTUATION, b" " * len(_PUNCTUATION))


def _words(text):
    # "replace": a lone surrogate (data.py fixes them, other callers may not) is no reason to fail
    text = text.lower().replace("’", "'").replace("‘", "'")
    return text.encode("utf-8", "replace").translate(_PUNCTUATION_TO_SPACE).split()


def _haystack(words):
    # words between two spaces on each side: " i  can't  i  can't " holds " i can't " twice
    # without the matches sharing a space, so bytes.count (non-overlapping) counts both
    return b" " + b"  ".join(words) + b" "


def _load_phrases(path=PHRASES_FILE):
    """``{list name: ((needle, its words), ...)}`` from the phrase file; needles are searched
    in haystacks, and only where the answer has all their words."""
    with open(path, encoding="utf-8") as fh:
        lists = yaml.safe_load(fh)
    if not isinstance(lists, dict) or not all(
        isinstance(v, list) and v and all(isinstance(p, str) and _words(p) for p in v) for v in lists.values()
    ):
        raise ValueError(f"{path}: expected a mapping of names to non-empty lists of phrases")
    return {
        name: tuple((_haystack(words), frozenset(words)) for words in map(_words, phrases))
        for name, phrases in lists.items()
    }


PHRASES = _load_phrases()

SIDE_STATS = (
    "turns",
    "empty_turns",
    "last_chars",
    "last_words",
    "last_lines",
    "chars",
    "words",
    "lines",
    *_MARKDOWN,
    "code_blocks",
    *PHRASES,
    "prompt_jaccard",
    "prompt_coverage",
)
"""Per-answer statistics: columns ``a_<stat>`` and ``b_<stat>`` of :func:`pair_stats`."""
SHARED_STATS = ("n_turns", "prompt_chars", "prompt_words", "identical", "near_identical", "any_last_empty")
"""Statistics of the pair, symmetric in the two answers."""


def _lines(text):
    return text.count("\n") + 1 if text else 0


def _jaccard(x, y):
    union = len(x | y)
    return len(x & y) / union if union else 0.0


def _phrase_counts(words, word_set):
    """Matches of each phrase list in an answer's words."""
    # most answers lack a word of every phrase: the set test spares building the haystack
    candidates = [[needle for needle, needed in needles if needed <= word_set] for needles in PHRASES.values()]
    if not any(candidates):
        return [0] * len(candidates)
    haystack = _haystack(words)
    return [sum(haystack.count(needle) for needle in needles) for needles in candidates]


def _answer_stats(turns, prompt_words):
    """One answer's statistics in :data:`SIDE_STATS` order, and its set of words."""
    texts = [t for t in turns if t]
    last = (turns[-1] if turns else None) or ""
    turn_words = [_words(t) for t in texts]
    words = list(itertools.chain.from_iterable(turn_words))
    word_set = set(words)
    full = "\n" + "\n".join(texts) + "\n"
    return (
        len(turns),
        sum(1 for t in turns if not t or t.isspace()),
        len(last),
        len(turn_words[-1]) if last else 0,
        _lines(last),
        sum(map(len, texts)),
        len(words),
        sum(map(_lines, texts)),
        *(sum(len(p.findall(full)) for p in patterns) for patterns in _MARKDOWN.values()),
        # an unclosed fence still opens a block
        math.ceil(len(_FENCE.findall(full)) / 2),
        *_phrase_counts(words, word_set),
        _jaccard(word_set, prompt_words),
        len(word_set & prompt_words) / len(prompt_words) if prompt_words else 0.0,
    ), word_set


def _row_stats(prompt, response_a, response_b):
    """``(a stats, b stats, shared stats)`` of one row."""
    prompt_texts = [t for t in prompt if t]
    prompt_words = list(itertools.chain.from_iterable(map(_words, prompt_texts)))
    prompt_set = set(prompt_words)
    a, words_a = _answer_stats(response_a, prompt_set)
    b, words_b = _answer_stats(response_b, prompt_set)
    empty_last = [last_turn_empty(r) for r in (response_a, response_b)]
    shared = (
        len(prompt),
        sum(map(len, prompt_texts)),
        len(prompt_words),
        float(response_a == response_b),
        _jaccard(words_a, words_b),
        float(any(empty_last)),
    )
    return a, b, shared


def pair_stats(parsed):
    """Statistics of each row of a parsed table: ``id``, then ``a_<stat>`` and ``b_<stat>`` for
    every stat of :data:`SIDE_STATS`, then :data:`SHARED_STATS`; all but ``id`` float64.

    Turns are strings or None (a null turn); an empty or blank turn counts as empty like a null
    one. Words (counted, compared with the prompt's and searched for phrases) are lower-cased
    and split at white space and ASCII punctuation but not apostrophes; a markdown bullet is no
    word. Markdown is counted over all turns of an answer. A Jaccard similarity of two empty
    word sets is 0, and so is the share of an empty prompt's words in an answer.
    """
    rows = [_row_stats(*cells) for cells in zip(parsed["prompt"], parsed["response_a"], parsed["response_b"])]
    n = len(rows)
    blocks = [
        np.array([r[k] for r in rows], dtype=np.float64).reshape(n, width)
        for k, width in enumerate((len(SIDE_STATS), len(SIDE_STATS), len(SHARED_STATS)))
    ]
    columns = [f"a_{s}" for s in SIDE_STATS] + [f"b_{s}" for s in SIDE_STATS] + list(SHARED_STATS)
    out = pd.DataFrame(np.hstack(blocks), columns=columns)
    out.insert(0, "id", parsed["id"].to_numpy(dtype=np.int64))
    return out


def stat_columns(stats):
    """The statistic columns of a :func:`pair_stats` table (``id`` left out), in order."""
    return [c for c in stats.columns if c != "id"]


def _split_columns(stats):
    """Per-answer stat names (``a_`` prefix taken off) and shared column names, in order."""
    columns = stat_columns(stats)
    side = [c[2:] for c in columns if c.startswith("a_")]
    b_side = [c[2:] for c in columns if c.startswith("b_")]
    if side != b_side:
        raise ValueError(f"per-answer statistics must come in a_/b_ pairs in the same order; a_: {side}, b_: {b_side}")
    return side, [c for c in columns if not c.startswith(("a_", "b_"))]


def design_matrix(stats, *, swap=False):
    """The learner's features from :func:`pair_stats` output (``id`` ignored).

    For each per-answer stat ``s``, in order: ``a_s``, ``b_s``, ``diff_s`` (a - b),
    ``logratio_s`` (log1p(a) - log1p(b)) and ``share_s`` ((a + 1/2) / (a + b + 1)); then the
    shared stats. ``swap=True`` exchanges A and B before anything is derived: it equals the
    design matrix of the table with the answers exchanged, with the same columns.

    The half in the share makes A's and B's shares sum to 1 (1/2 each when both are 0): with
    a / (a + b + 1) the mirror's share would be no linear function of the row's columns, and a
    logistic regression fitted on both orders gave mirrored rows probabilities up to 0.09 away
    from the mirrored ones.
    """
    side, shared = _split_columns(stats)
    a = stats[[f"a_{s}" for s in side]].to_numpy(dtype=np.float64)
    b = stats[[f"b_{s}" for s in side]].to_numpy(dtype=np.float64)
    if swap:
        a, b = b, a
    derived = np.stack([a, b, a - b, np.log1p(a) - np.log1p(b), (a + 0.5) / (a + b + 1)], axis=2)
    # stacked on a last axis, each stat's five columns stay together
    derived = derived.reshape(len(stats), len(side) * len(DERIVED))
    values = np.hstack([derived, stats[shared].to_numpy(dtype=np.float64)])
    columns = [f"{kind}_{s}" for s in side for kind in DERIVED] + shared
    return pd.DataFrame(values, columns=columns)


@dataclass(frozen=True)
class PairModel:
    """A fitted learner and the :func:`pair_stats` columns it was fitted on, in order."""

    model: object
    columns: tuple
    learner: str


def _learner(settings):
    if settings.learner == "hgb":
        # early stopping would hold out a random validation split: off, so a seed gives one model
        return HistGradientBoostingClassifier(
            max_iter=settings.max_iter,
            learning_rate=settings.learning_rate,
            max_leaf_nodes=settings.max_leaf_nodes,
            min_samples_leaf=settings.min_samples_leaf,
            l2_regularization=settings.l2_regularization,
            early_stopping=False,
            random_state=settings.seed,
        )
    if settings.learner == "logreg":
        # lbfgs fits the multinomial model for three classes; counts span orders of magnitude,
        # so the features are standardised first
        return make_pipeline(StandardScaler(), LogisticRegression(C=settings.C, max_iter=settings.max_iter))
    raise ValueError(f"learner must be one of {LEARNERS}, not {settings.learner!r}")


def fit(stats, y, settings):
    """Fit ``settings.learner`` on the rows as given (labels ``y``) and mirrored (labels
    exchanged by :data:`MIRROR`); returns a :class:`PairModel`."""
    y = np.asarray(y)
    if y.shape != (len(stats),):
        raise ValueError(f"{len(y)} labels for {len(stats)} rows of statistics")
    if not np.isin(y, np.arange(len(LABELS))).all():
        raise ValueError(f"labels must be in 0..{len(LABELS) - 1}")
    y = y.astype(np.int64)
    x = np.vstack([design_matrix(stats).to_numpy(), design_matrix(stats, swap=True).to_numpy()])
    model = _learner(settings).fit(x, np.concatenate([y, MIRROR[y]]))
    return PairModel(model=model, columns=tuple(stat_columns(stats)), learner=settings.learner)


def _check_columns(fitted, stats):
    columns = tuple(stat_columns(stats))
    if columns != fitted.columns:
        missing = [c for c in fitted.columns if c not in columns]
        extra = [c for c in columns if c not in fitted.columns]
        problem = f"missing {missing}, unexpected {extra}" if missing or extra else "same columns in another order"
        raise ValueError(
            f"statistics do not match the {len(fitted.columns)} columns the pair-feature model was "
            f"fitted on ({problem}): compute them again with this version of arena_pref.features.pair_features"
        )


def predict(fitted, stats, *, swap=False):
    """``(n, 3)`` float64 probabilities (A wins, B wins, tie) of the rows of ``stats``.

    With ``swap=True`` the mirrored rows are predicted and the probabilities are in their own
    order (column 0: the original B wins); :func:`arena_pref.metrics.tta_average` maps them back.
    A class the model never saw gets probability 0.
    """
    _check_columns(fitted, stats)
    proba = fitted.model.predict_proba(design_matrix(stats, swap=swap).to_numpy())
    return with_all_classes(fitted.model.classes_, proba)


def save(fitted, path):
    """Write a :class:`PairModel` with joblib, atomically, with the scikit-learn version that fitted
    it (a pickle is only sure to load under that version)."""
    import sklearn

    with atomic_path(path) as tmp:
        joblib.dump({"sklearn": sklearn.__version__, "model": fitted}, tmp)


def load(path):
    """Read a :class:`PairModel` written by :func:`save`: under another scikit-learn version than
    the one that fitted it, an error naming both (a Kaggle image's scikit-learn may differ from
    yours; install the fitting version there, or refit). joblib files are pickles: load only your
    own."""
    import sklearn

    saved = joblib.load(path)
    if not isinstance(saved, dict) or not isinstance(saved.get("model"), PairModel):
        raise InputError(f"{path}: not a pair-feature learner written by arena-pref")
    if saved["sklearn"] != sklearn.__version__:
        raise InputError(
            f"{path} was fitted with scikit-learn {saved['sklearn']}, and this is scikit-learn "
            f"{sklearn.__version__}: install {saved['sklearn']} (add scikit-learn to kaggle.wheels "
            "and remove it from the image list) or refit the learner"
        )
    return saved["model"]
