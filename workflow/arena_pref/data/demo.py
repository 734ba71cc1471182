"""Synthetic Chatbot Arena data in the exact Kaggle CSV format, for the CPU demo.

The rows reproduce the quirks of the Kaggle files (JSON lists of turns, several turns,
null turns, ``\\u`` escapes for non-ASCII text, lone surrogates, prompts shared by
several rows, random-looking ids) while the winner follows properties a small model can
learn from the first ~100 tokens of each answer:

* each answer comes from one of four generators of increasing quality: a refusal, an
  off-topic answer (about another topic), a short on-topic answer, a complete on-topic
  answer (several sentences, sometimes a list of key points);
* the better generator wins; equal quality (e.g. two refusals, or two near-identical
  answers) is a tie;
* then 15% of the labels are redrawn at random, as human votes are noisy.

Everything is drawn from one ``numpy.random.Generator(seed)``: the same arguments give
byte-identical files.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from arena_pref import LABELS, atomic


def _texts():
    # the text tables live in a data file of the package (demo_texts.yaml)
    with open(Path(__file__).with_name("demo_texts.yaml"), encoding="utf-8") as fh:
        texts = yaml.safe_load(fh)
    topics = tuple((t["name"], tuple(t["keywords"]), tuple(t["facts"])) for t in texts.pop("topics"))
    return topics, {k: tuple(v) for k, v in texts.items()}


# (name, keywords, facts): facts are on-topic sentences that use the keywords
TOPICS, _TEXTS = _texts()
PHRASINGS, CONTEXTS, FOLLOW_UPS = _TEXTS["phrasings"], _TEXTS["contexts"], _TEXTS["follow_ups"]
REFUSALS, OPENERS, EMOJI, MODELS = _TEXTS["refusals"], _TEXTS["openers"], _TEXTS["emoji"], _TEXTS["models"]

# Answer generators by increasing quality; the weights are how often each is drawn.
GENERATORS = ("refusal", "off_topic", "short", "complete")
GENERATOR_WEIGHTS = np.array([0.15, 0.20, 0.30, 0.35])
NEAR_DUPLICATE = 0.06  # share of rows whose two answers are near-identical (a tie)
LABEL_NOISE = 0.15  # share of labels redrawn uniformly at random
SHARED_PROMPT = 0.10  # rows reusing an earlier row's prompt (so ~20% share one)
NULL_TURN = 0.03  # share of response turns that are null
EMOJI_RATE = 0.06  # share of answer turns ending with an emoji
LONE_SURROGATE = 0.01  # share of rows with an emoji cut in half (a lone surrogate)
TURN_COUNTS, TURN_WEIGHTS = (1, 2, 3), (0.8, 0.15, 0.05)
ID_RANGE = (10_000, 4_294_967_295)  # Kaggle ids are unsigned 32-bit ints


def make_demo_data(n_train, n_test, seed, *, with_test_labels=False):
    """Return ``(train_df, test_df)`` with cells exactly as in the Kaggle CSVs (and with
    ``with_test_labels`` the test rows' labels as a third frame: id and the one-hot winner columns,
    what Kaggle keeps hidden, for scoring test predictions)."""
    rng = np.random.default_rng(seed)
    n = n_train + n_test
    # sorted within each split, as in the Kaggle files
    ids = rng.choice(ID_RANGE[1] - ID_RANGE[0], size=n, replace=False) + ID_RANGE[0]
    ids = np.concatenate([np.sort(ids[:n_train]), np.sort(ids[n_train:])])

    rows, seen = [], set()
    for i in range(n):
        if i and rng.random() < SHARED_PROMPT:
            shared = rows[rng.integers(i)]
            topic, prompt = shared["topic"], shared["prompt"]
        else:
            topic, prompt = _new_prompt(rng, seen)
        rows.append(
            {
                "id": int(ids[i]),
                "topic": topic,
                "prompt": prompt,
                **_answers_and_label(rng, topic, len(prompt)),
            }
        )

    train = pd.DataFrame(
        {
            "id": [r["id"] for r in rows[:n_train]],
            "model_a": [r["model_a"] for r in rows[:n_train]],
            "model_b": [r["model_b"] for r in rows[:n_train]],
            **_turn_cells(rows[:n_train]),
            **{col: [int(r["label"] == k) for r in rows[:n_train]] for k, col in enumerate(LABELS)},
        }
    )
    test = pd.DataFrame({"id": [r["id"] for r in rows[n_train:]], **_turn_cells(rows[n_train:])})
    if with_test_labels:
        labels = pd.DataFrame(
            {"id": test["id"], **{col: [int(r["label"] == k) for r in rows[n_train:]] for k, col in enumerate(LABELS)}}
        )
        return train, test, labels
    return train, test


def write_demo_csvs(train_path, test_path, n_train, n_test, seed, test_labels_path=None):
    """Write the demo train and test CSVs (atomically), and the test labels where a path is given."""
    train, test, labels = make_demo_data(n_train, n_test, seed, with_test_labels=True)
    atomic.write_csv(train, train_path)
    atomic.write_csv(test, test_path)
    if test_labels_path is not None:
        atomic.write_csv(labels, test_labels_path)


def _pick(rng, seq):
    return seq[rng.integers(len(seq))]


def _new_prompt(rng, seen):
    """A prompt (list of turns) not used before, unless the space of prompts runs out."""
    for _ in range(50):
        topic = _pick(rng, TOPICS)
        turns = [_pick(rng, PHRASINGS).format(topic[0]) + _pick(rng, CONTEXTS)]
        n_turns = TURN_COUNTS[rng.choice(len(TURN_COUNTS), p=TURN_WEIGHTS)]
        turns += [_pick(rng, FOLLOW_UPS).format(_pick(rng, topic[1])) for _ in range(n_turns - 1)]
        if tuple(turns) not in seen:
            break
    seen.add(tuple(turns))
    return topic, turns


def _answers_and_label(rng, topic, n_turns):
    models = rng.choice(len(MODELS), size=2, replace=False)
    if rng.random() < NEAR_DUPLICATE:
        gen_a = gen_b = GENERATORS[rng.choice(len(GENERATORS), p=GENERATOR_WEIGHTS)]
        answer_a = _answer(rng, gen_a, topic, n_turns)
        answer_b = [_perturb(rng, t) for t in answer_a]
    else:
        gen_a, gen_b = (GENERATORS[g] for g in rng.choice(len(GENERATORS), size=2, p=GENERATOR_WEIGHTS))
        answer_a = _answer(rng, gen_a, topic, n_turns)
        answer_b = _answer(rng, gen_b, topic, n_turns)
    quality_a, quality_b = GENERATORS.index(gen_a), GENERATORS.index(gen_b)
    label = 0 if quality_a > quality_b else 1 if quality_b > quality_a else 2
    if rng.random() < LABEL_NOISE:
        label = int(rng.integers(3))

    if rng.random() < LONE_SURROGATE:
        answer = _pick(rng, (answer_a, answer_b))
        k = rng.integers(n_turns)
        # the high half of an emoji whose low half was cut off, as in the Kaggle data
        answer[k] += " \ud83d"
    answer_a, answer_b = _quirks(rng, answer_a), _quirks(rng, answer_b)
    return {
        "model_a": MODELS[models[0]],
        "model_b": MODELS[models[1]],
        "response_a": answer_a,
        "response_b": answer_b,
        "label": label,
    }


def _answer(rng, generator, topic, n_turns):
    """One answer turn per prompt turn, all from the same generator."""
    if generator == "refusal":
        return [_pick(rng, REFUSALS) for _ in range(n_turns)]
    if generator == "off_topic":
        other = _pick(rng, [t for t in TOPICS if t is not topic])
        form = _pick(rng, ("short", "complete"))
        return [_on_topic(rng, form, other) for _ in range(n_turns)]
    return [_on_topic(rng, generator, topic) for _ in range(n_turns)]


def _on_topic(rng, form, topic):
    _, keywords, facts = topic
    order = rng.permutation(len(facts))
    opener = _pick(rng, OPENERS)
    if form == "short":
        return opener + facts[order[0]]
    # complete: the definition first so the topic shows within the first tokens
    body = " ".join(facts[k] for k in [0, *[k for k in order if k != 0][:2]])
    if rng.random() < 0.5:
        body += "\n\nKey points:\n" + "\n".join(f"- {kw}" for kw in keywords[:3])
    return opener + body


def _perturb(rng, text):
    """A near-identical copy of ``text``: one small change of wording or punctuation."""
    change = rng.integers(3)
    if change == 0:
        return "Sure! " + text if not text.startswith("Sure! ") else text[len("Sure! ") :]
    if change == 1:
        return text[:-1] + "!" if text.endswith(".") else text + "."
    return text.replace(" and ", " & ", 1) if " and " in text else text + " Hope this helps."


def _quirks(rng, answer):
    """Sprinkle null turns and trailing emoji over an answer (a list of turns)."""
    out = []
    for turn in answer:
        if rng.random() < NULL_TURN:
            out.append(None)
        elif rng.random() < EMOJI_RATE:
            out.append(f"{turn} {_pick(rng, EMOJI)}")
        else:
            out.append(turn)
    return out


def _turn_cells(rows):
    # ensure_ascii=True writes non-ASCII text as \u escapes (astral characters as
    # surrogate pairs), exactly as the Kaggle CSVs do
    return {
        col: [json.dumps(r[col], ensure_ascii=True) for r in rows] for col in ("prompt", "response_a", "response_b")
    }
