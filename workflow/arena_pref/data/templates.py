"""Prompt templates and truncation strategies, in token space.

A row becomes one sequence per order: (A, B) as given and (B, A) swapped, for
test-time augmentation. Each part (prompt, response A, response B) is tokenized once
without special tokens; strategies then cut and join token lists, so the swapped order
costs no second tokenization and budgets are exact.

Strategies (``truncation`` in a model's config):

``concat``
    Prompt, A and B joined, then cut at ``max_length``, keeping the head, as the public
    baselines do. Long prompts or long A answers can cut B away entirely.
``per_part``
    Each part gets a budget: the three share the room equally (the prompt at most
    ``prompt_max_frac`` of it) and room a short part does not use goes to the others, so
    neither answer is cut away. Each part keeps its head.
``tail``
    Turn by turn (prompt_i, A_i, B_i for every turn), then cut from the left: the last
    turns are kept whole, the earliest are dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

STRATEGIES = ("concat", "per_part", "tail")
NULL_TURN = "null"  # how a null turn (the model gave no answer) is shown to the model
TURN_SEPARATOR = "\n\n"  # before the prompt of every turn after the first (``tail``)

DEFAULT_TEMPLATE = {
    "prompt": "<prompt>: ",
    "response_a": "\n\n<response_a>: ",
    "response_b": "\n\n<response_b>: ",
}


def turn_text(turn):
    return NULL_TURN if turn is None else turn


def join_turns(turns, sep="\n"):
    return sep.join(turn_text(t) for t in turns)


@dataclass(frozen=True)
class Layout:
    """Token ids that frame every sequence: special tokens and the part labels."""

    prefix: list  # special tokens before the text (e.g. [CLS] or <bos>)
    suffix: list  # special tokens after the text (e.g. [SEP])
    label_prompt: list
    label_first: list  # label of the answer shown first ("response_a")
    label_second: list
    label_next_turn: list  # label of the prompt of a later turn (``tail``): a separator first

    @property
    def fixed_len(self):
        return (
            len(self.prefix)
            + len(self.suffix)
            + len(self.label_prompt)
            + len(self.label_first)
            + len(self.label_second)
        )


def special_tokens(tokenizer):
    """(prefix, suffix) special-token ids the tokenizer adds around a single text."""
    bare = tokenizer("x", add_special_tokens=False)["input_ids"]
    full = tokenizer("x", add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(bare) + 1):
        if full[start : start + len(bare)] == bare:
            return list(full[:start]), list(full[start + len(bare) :])
    raise ValueError("cannot locate the text inside the tokenizer's special tokens")


def make_layout(tokenizer, template=None):
    template = {**DEFAULT_TEMPLATE, **(template or {})}
    enc = tokenizer(
        [template["prompt"], template["response_a"], template["response_b"], TURN_SEPARATOR + template["prompt"]],
        add_special_tokens=False,
    )["input_ids"]
    prefix, suffix = special_tokens(tokenizer)
    return Layout(prefix, suffix, *(list(e) for e in enc))


def waterfill(lengths, budget, caps=None):
    """Split ``budget`` tokens over parts of ``lengths``: equal shares, unused room redistributed.

    ``caps`` bounds individual parts (None = no bound beyond the part's length).
    Returns one allocation per part, each <= its length (and cap), summing to
    min(budget, total wanted).
    """
    want = [min(n, c) if c is not None else n for n, c in zip(lengths, caps or [None] * len(lengths))]
    alloc = [0] * len(want)
    open_parts = [i for i, w in enumerate(want) if w > 0]
    left = max(budget, 0)
    while open_parts and left > 0:
        share, extra = divmod(left, len(open_parts))
        if share == 0:
            # fewer tokens than parts: the earliest open parts get one each
            for i in open_parts[:extra]:
                alloc[i] += 1
            break
        still_open = []
        for i in open_parts:
            take = min(share, want[i] - alloc[i])
            alloc[i] += take
            left -= take
            if alloc[i] < want[i]:
                still_open.append(i)
        open_parts = still_open
    return alloc


PROMPT_SEGMENT, FIRST_SEGMENT, SECOND_SEGMENT = 0, 1, 2


def build_sequence(
    strategy, layout, max_length, prompt, first, second, turns=None, prompt_max_frac=1 / 3, segments=False
):
    """Token ids of one sequence (answer ``first`` shown as A, ``second`` as B), and its untruncated length.

    ``prompt``, ``first`` and ``second`` are token lists of the joined turns; ``tail``
    instead uses ``turns``: a list of (prompt_i, first_i, second_i) token lists.
    With ``segments`` also one segment id per token: 1 for the answer shown first, 2 for the
    second, 0 for everything else (special tokens, labels, prompts) — what ``pooling: pair`` needs.
    """
    budget = max_length - len(layout.prefix) - len(layout.suffix)
    if budget <= layout.fixed_len - len(layout.prefix) - len(layout.suffix):
        raise ValueError(f"max_length {max_length} leaves no room for text after the template")
    body, seg = [], []

    def add(tokens, segment=PROMPT_SEGMENT):
        body.extend(tokens)
        seg.extend([segment] * len(tokens))

    if strategy == "concat":
        add(layout.label_prompt + prompt + layout.label_first)
        add(first, FIRST_SEGMENT)
        add(layout.label_second)
        add(second, SECOND_SEGMENT)
        full_len = len(body)
        body, seg = body[:budget], seg[:budget]
    elif strategy == "per_part":
        room = budget - len(layout.label_prompt) - len(layout.label_first) - len(layout.label_second)
        cap = max(1, int(room * prompt_max_frac))
        n_p, n_a, n_b = waterfill([len(prompt), len(first), len(second)], room, [cap, None, None])
        # a capped prompt may leave room the answers cannot use; give it back to the prompt
        spare = room - n_p - n_a - n_b
        n_p = min(len(prompt), n_p + spare)
        add(layout.label_prompt + prompt[:n_p] + layout.label_first)
        add(first[:n_a], FIRST_SEGMENT)
        add(layout.label_second)
        add(second[:n_b], SECOND_SEGMENT)
        full_len = layout.fixed_len - len(layout.prefix) - len(layout.suffix) + len(prompt) + len(first) + len(second)
    elif strategy == "tail":
        for t, (p, a, b) in enumerate(turns):
            add((layout.label_next_turn if t else layout.label_prompt) + p + layout.label_first)
            add(a, FIRST_SEGMENT)
            add(layout.label_second)
            add(b, SECOND_SEGMENT)
        full_len = len(body)
        body, seg = body[-budget:], seg[-budget:]
    else:
        raise ValueError(f"unknown truncation strategy {strategy!r}; choose one of {STRATEGIES}")
    specials = len(layout.prefix) + len(layout.suffix)
    ids = layout.prefix + body + layout.suffix
    if segments:
        return (
            ids,
            full_len + specials,
            [PROMPT_SEGMENT] * len(layout.prefix) + seg + [PROMPT_SEGMENT] * len(layout.suffix),
        )
    return ids, full_len + specials
