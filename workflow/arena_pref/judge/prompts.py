"""Judging prompts in token space: the template around a row's texts, the answer tokens, truncation.

A judge (``kind: judge``) reads one sequence per row and order: the template (``{prompt}``,
``{response_a}``, ``{response_b}`` filled with the conversation's turns joined by newlines) as the
user's message through the tokenizer's chat template, with its generation prompt, where the
tokenizer has one; else the template as plain text, after the tokenizer's own leading special
tokens (``<bos>``), followed by ``plain_suffix``. The model's next token after that sequence
answers.

The template's fixed pieces and the three texts are tokenized separately (as :mod:`text` does for
the fine-tuned members), so the swapped order costs no second tokenization and truncation is exact:
when a row is too long the texts are cut (each keeps its head; the conversation's prompt gets at
most ``prompt_max_frac`` of the room, room a short part leaves goes to the others), never the
template, so the question at its end always reaches the model.

Answer tokens: each class's answer string is read as the token it encodes to *as it follows the
last fixed piece directly* (the cue, or the chat template's generation prompt), found by tokenizing
that piece with and without the answer appended. It must be one token of its own: SentencePiece
vocabularies such as Mistral-7B's hold '▁tie' but not 'tie', so 'tie' right after '[/INST]' or a
new line is 't' + 'ie', and reading 't' would score a fragment. Such an answer is a one-line
config error naming the label, which offers the answer with a leading space where that one is a
token. No space is put before the answers by default: the default ``plain_suffix`` ends with a new
line, as chat templates' generation prompts often do, so the answer starts a line ("A", not " A").
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

from arena_pref.data.templates import join_turns, special_tokens, waterfill
from arena_pref.errors import InputError

PARTS = ("prompt", "response_a", "response_b")
ANSWER_KEYS = ("a", "b", "tie")  # class order of PROB_COLUMNS
_PLACEHOLDER = re.compile(r"\{(prompt|response_a|response_b)\}")
_SENTINEL = "\u2063ARENA_PREF_MESSAGE\u2063"  # stands for the user's message while the chat template renders
MIN_TEXT_TOKENS = 3  # the prompt and each answer need at least a token


@dataclass(frozen=True)
class PromptLayout:
    """The token ids around a row's texts, and the answer tokens read after them."""

    fixed: tuple  # 4 token lists: before the first text, between the texts, after the last (the cue)
    order: tuple  # the parts (PARTS) in the order the template shows them
    answer_ids: tuple  # the token of the a, b and tie answers
    chat: bool  # the tokenizer's chat template was applied

    @property
    def fixed_len(self):
        return sum(len(f) for f in self.fixed)


def split_template(template):
    """(the 4 text pieces around the placeholders, the parts in template order)."""
    pieces = _PLACEHOLDER.split(template)
    texts, order = pieces[0::2], tuple(pieces[1::2])
    if sorted(order) != sorted(PARTS):
        raise InputError(
            f"judge template must hold {{prompt}}, {{response_a}} and {{response_b}} once each (found {list(order)})"
        )
    return texts, order


def chat_wrapper(tokenizer, model="judge"):
    """(text before, text after) the user's message as the tokenizer's chat template renders it
    with its generation prompt; None where the tokenizer has no chat template."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": _SENTINEL}], add_generation_prompt=True, tokenize=False
    )
    before, sentinel, after = rendered.partition(_SENTINEL)
    if not sentinel:
        raise InputError(
            f"config models.{model}.backbone: the tokenizer's chat template does not show the user's "
            "message as given, so the judge's question cannot be placed in it"
        )
    return before, after


def make_layout(tokenizer, prompt, *, model="judge"):
    """The :class:`PromptLayout` of a :class:`~arena_pref.settings.JudgePrompt` with this tokenizer
    (``model`` names the config entry in errors)."""
    texts, order = split_template(prompt.template)
    wrapper = chat_wrapper(tokenizer, model)
    if wrapper is not None:
        # the chat template renders the leading special tokens (<bos>) itself
        texts[0], texts[-1], prefix = wrapper[0] + texts[0], texts[-1] + wrapper[1], []
    else:
        texts[-1], prefix = texts[-1] + prompt.plain_suffix, special_tokens(tokenizer)[0]
    enc = tokenizer(texts, add_special_tokens=False)["input_ids"]
    fixed = (prefix + list(enc[0]), *(list(e) for e in enc[1:]))
    answers = {k: prompt.answers[k] for k in ANSWER_KEYS}
    return PromptLayout(
        fixed=fixed,
        order=order,
        answer_ids=answer_token_ids(tokenizer, texts[-1], answers, model),
        chat=wrapper is not None,
    )


def answer_token_ids(tokenizer, cue, answers, model):
    """The token of each answer (``answers``: class key -> string) as it follows ``cue`` (the text
    the sequence ends with): it must be one token of its own, or the judge would read a fragment."""
    base = tokenizer(cue, add_special_tokens=False)["input_ids"]
    ids = {}
    for key, answer in answers.items():
        after = _tokens_after(tokenizer, base, cue + answer)
        if after is None:
            raise InputError(
                f"config models.{model}.answers.{key}: {answer!r} merges with the end of the prompt into one "
                f"token: end the template (plain_suffix) with a new line or choose another answer"
            )
        if len(after) != 1:
            raise InputError(
                f"config models.{model}.answers.{key}: {_not_one_token(tokenizer, base, cue, answer, after)}"
            )
        ids[key] = int(after[0])
    if len(set(ids.values())) < len(ids):
        shown = ", ".join(f"{a!r} -> {tokenizer.convert_ids_to_tokens(ids[k])!r}" for k, a in answers.items())
        raise InputError(
            f"config models.{model}.answers: the answers must be different tokens, and {shown} are not: "
            "choose other answers"
        )
    return tuple(ids[k] for k in answers)


def _tokens_after(tokenizer, base, text):
    """The token ids ``text`` encodes to after ``base`` (its beginning's ids), or None where the
    beginning does not stay as it was."""
    full = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(full) <= len(base) or list(full[: len(base)]) != list(base):
        return None
    return list(full[len(base) :])


def _not_one_token(tokenizer, base, cue, answer, after):
    """Why ``answer`` cannot be read, and the answer with a leading space where that one is a token
    (SentencePiece vocabularies hold '▁tie' but not 'tie')."""
    pieces = " + ".join(repr(tokenizer.convert_tokens_to_string([t])) for t in tokenizer.convert_ids_to_tokens(after))
    why = (
        f"{answer!r} after the prompt is {len(after)} tokens ({pieces}), not one of its own, and the judge "
        "reads one token per answer"
    )
    spaced = _tokens_after(tokenizer, base, cue + " " + answer)
    if spaced is not None and len(spaced) == 1 and not answer.startswith(" "):
        return f"{why}: {' ' + answer!r} is one ({tokenizer.convert_ids_to_tokens(spaced[0])!r})"
    return f"{why}: choose a word the tokenizer keeps whole after the prompt"


def check_room(layout, prompt, model):
    """``max_length`` must leave room for the texts after the template."""
    if prompt.max_length - layout.fixed_len < MIN_TEXT_TOKENS:
        raise InputError(
            f"config models.{model}.max_length: the judge template takes {layout.fixed_len} tokens of "
            f"max_length {prompt.max_length}, leaving no room for the conversation"
        )


def build_sequence(layout, texts, max_length, prompt_max_frac):
    """Token ids of one judged sequence (``texts``: part -> token list) and whether a text was cut."""
    room = max_length - layout.fixed_len
    lengths = [len(texts[p]) for p in PARTS]
    cap = max(1, int(room * prompt_max_frac))
    kept = waterfill(lengths, room, [cap, None, None])
    kept[0] = min(lengths[0], kept[0] + room - sum(kept))  # room the answers cannot use goes back to the prompt
    keep = dict(zip(PARTS, kept))
    ids = list(layout.fixed[0])
    for part, after in zip(layout.order, layout.fixed[1:]):
        ids += list(texts[part][: keep[part]]) + list(after)
    return ids, sum(kept) < sum(lengths)


def judge_sequences(df, tokenizer, layout, prompt):
    """Every row of a parsed frame as judged sequences: ``input_ids`` (A, B as given) and
    ``input_ids_swap`` (B shown as A), with ``length`` and whether a text was ``truncated``."""
    n = len(df)
    joined = [join_turns(t) for part in PARTS for t in df[part]]
    enc = []
    for start in range(0, len(joined), 2048):
        enc += tokenizer(joined[start : start + 2048], add_special_tokens=False)["input_ids"]
    ids, ids_swap, cut = [], [], []
    for r in range(n):
        p, a, b = enc[r], enc[n + r], enc[2 * n + r]
        fwd, cut_fwd = build_sequence(
            layout, {"prompt": p, "response_a": a, "response_b": b}, prompt.max_length, prompt.prompt_max_frac
        )
        rev, cut_rev = build_sequence(
            layout, {"prompt": p, "response_a": b, "response_b": a}, prompt.max_length, prompt.prompt_max_frac
        )
        ids.append(np.asarray(fwd, dtype=np.int64))
        ids_swap.append(np.asarray(rev, dtype=np.int64))
        cut.append(cut_fwd or cut_rev)
    return pd.DataFrame(
        {
            "id": df["id"].to_numpy(dtype=np.int64),
            "input_ids": ids,
            "input_ids_swap": ids_swap,
            "length": np.array([len(x) for x in ids], dtype=np.int64),
            "truncated": np.array(cut, dtype=bool),
        }
    )
