import pandas as pd
import pytest
from arena_pref.data.templates import build_sequence, make_layout, special_tokens, waterfill
from arena_pref.data.token_cache import tokenize_frame

TEMPLATE = {"prompt": "P:", "response_a": "A:", "response_b": "B:"}


def decode(ids):
    return "".join({1: "[", 2: "]"}.get(i, chr(i)) for i in ids)


def test_special_tokens_found_around_text(char_tokenizer):
    assert special_tokens(char_tokenizer) == ([1], [2])


@pytest.mark.parametrize(
    "lengths,budget,caps,expected",
    [
        ([10, 10, 10], 9, None, [3, 3, 3]),
        ([2, 10, 10], 12, None, [2, 5, 5]),  # room the short prompt leaves goes to the answers
        ([2, 3, 40], 20, None, [2, 3, 15]),
        ([50, 50, 50], 30, [4, None, None], [4, 13, 13]),
        ([1, 1, 1], 30, None, [1, 1, 1]),
        ([5, 5, 5], 2, None, [1, 1, 0]),
    ],
)
def test_waterfill(lengths, budget, caps, expected):
    assert waterfill(lengths, budget, caps) == expected


def seq(strategy, tok, max_length, p, a, b, **kw):
    layout = make_layout(tok, TEMPLATE)
    enc = lambda s: [ord(c) for c in s]  # noqa: E731
    ids, full = build_sequence(
        strategy, layout, max_length, enc(p), enc(a), enc(b), turns=[(enc(p), enc(a), enc(b))], **kw
    )
    return decode(ids), full


def test_concat_keeps_head_and_can_cut_b_away(char_tokenizer):
    text, full = seq("concat", char_tokenizer, 16, "pp", "a" * 20, "bbb")
    assert text == "[P:ppA:aaaaaaaa]"
    assert full == 2 + 6 + 2 + 20 + 3
    assert "B:" not in text


def test_per_part_keeps_both_answers(char_tokenizer):
    text, _ = seq("per_part", char_tokenizer, 20, "pp", "a" * 20, "b" * 20)
    # 20 - 2 specials - 6 label tokens = 12 tokens of text: prompt 2, answers 5 each
    assert text == "[P:ppA:aaaaaB:bbbbb]"


def test_per_part_caps_the_prompt(char_tokenizer):
    text, _ = seq("per_part", char_tokenizer, 26, "p" * 30, "a" * 30, "b" * 30, prompt_max_frac=0.25)
    # room 18: prompt capped at 4, answers 7 each
    assert text == "[P:ppppA:aaaaaaaB:bbbbbbb]"


def test_per_part_fits_untruncated_rows_whole(char_tokenizer):
    text, full = seq("per_part", char_tokenizer, 64, "hi", "yes", "no")
    assert text == "[P:hiA:yesB:no]" and full == len(text)


def test_tail_keeps_last_turns(char_tokenizer):
    layout = make_layout(char_tokenizer, TEMPLATE)
    enc = lambda s: [ord(c) for c in s]  # noqa: E731
    turns = [(enc("p1"), enc("a1"), enc("b1")), (enc("p2"), enc("a2"), enc("b2"))]
    ids, full = build_sequence("tail", layout, 16, None, None, None, turns=turns)
    text = decode(ids)
    assert text.endswith("P:p2A:a2B:b2]") and text.startswith("[")
    assert len(ids) == 16 and "p1" not in text
    assert full == 2 + 12 + (2 + 12)  # specials, turn 1, separator + turn 2


def test_template_must_leave_room(char_tokenizer):
    with pytest.raises(ValueError, match="no room"):
        seq("concat", char_tokenizer, 7, "p", "a", "b")


def test_tokenize_frame_swaps_answers(char_tokenizer):
    df = pd.DataFrame({"id": [7], "prompt": [["q"]], "response_a": [["first", None]], "response_b": [["second"]]})
    for strategy in ("concat", "per_part", "tail"):
        cache = tokenize_frame(df, char_tokenizer, strategy=strategy, max_length=64, template=TEMPLATE)
        fwd, rev = decode(cache["input_ids"][0]), decode(cache["input_ids_swap"][0])
        assert fwd.index("first") < fwd.index("second")
        assert rev.index("second") < rev.index("first")
        assert "null" in fwd  # a null turn is shown, not dropped
        assert not cache["truncated"][0]
        assert cache["length"][0] == len(fwd)


def test_tokenize_frame_flags_truncation(char_tokenizer):
    df = pd.DataFrame(
        {"id": [1, 2], "prompt": [["q"], ["q"]], "response_a": [["x" * 100], ["x"]], "response_b": [["y"], ["y"]]}
    )
    cache = tokenize_frame(df, char_tokenizer, strategy="per_part", max_length=40, template=TEMPLATE)
    assert cache["truncated"].tolist() == [True, False]
    assert cache["length"].max() <= 40


@pytest.mark.parametrize(
    "strategy,max_length", [("concat", 16), ("concat", 40), ("per_part", 20), ("tail", 14), ("tail", 40)]
)
def test_segment_ids_mark_each_answers_tokens(char_tokenizer, strategy, max_length):
    """Segment 1 covers exactly the kept tokens of the answer shown first, 2 those of the second."""
    layout = make_layout(char_tokenizer, TEMPLATE)
    enc = lambda s: [ord(c) for c in s]  # noqa: E731
    p, a, b = "ppp", "a" * 12, "b" * 9
    ids, full, segs = build_sequence(
        strategy, layout, max_length, enc(p), enc(a), enc(b), turns=[(enc(p), enc(a), enc(b))], segments=True
    )
    plain, plain_full = build_sequence(
        strategy, layout, max_length, enc(p), enc(a), enc(b), turns=[(enc(p), enc(a), enc(b))]
    )
    assert (ids, full) == (plain, plain_full) and len(segs) == len(ids)
    text = decode(ids)
    assert "".join(c for c, s in zip(text, segs) if s == 1) == "a" * text.count("a")
    assert "".join(c for c, s in zip(text, segs) if s == 2) == "b" * text.count("b")
    assert all(s == 0 for c, s in zip(text, segs) if c not in "ab")
