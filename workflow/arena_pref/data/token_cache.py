"""Token caches: every row in both orders, (A, B) and (B, A), for one model.

One cache per model and split serves every fold; it depends only on the model's
tokenizer, template, truncation strategy and max_length.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import pandas as pd

from arena_pref.data.templates import build_sequence, join_turns, make_layout, turn_text

log = logging.getLogger(__name__)


def _encode(tokenizer, texts, batch=2048):
    out = []
    for start in range(0, len(texts), batch):
        out += tokenizer(texts[start : start + batch], add_special_tokens=False)["input_ids"]
    return out


def tokenize_frame(df, tokenizer, *, strategy, max_length, template=None, prompt_max_frac=1 / 3):
    """Token cache of a parsed frame (see :mod:`arena_pref.data.kaggle_csv`) for one model."""
    t0 = time.perf_counter()
    layout = make_layout(tokenizer, template)
    n = len(df)
    if strategy == "tail":
        # per-turn pieces; rows may have answers with more or fewer turns than the prompt
        keys, texts = [], []
        for r, (p, a, b) in enumerate(zip(df["prompt"], df["response_a"], df["response_b"])):
            for t in range(max(len(p), len(a), len(b))):
                for part, turns in (("p", p), ("a", a), ("b", b)):
                    keys.append((r, t, part))
                    texts.append(turn_text(turns[t]) if t < len(turns) else "")
        pieces = dict(zip(keys, _encode(tokenizer, texts)))
        n_turns = [max(len(p), len(a), len(b)) for p, a, b in zip(df["prompt"], df["response_a"], df["response_b"])]
    else:
        enc = _encode(tokenizer, [join_turns(t) for col in ("prompt", "response_a", "response_b") for t in df[col]])
        prompts, answers_a, answers_b = enc[:n], enc[n : 2 * n], enc[2 * n :]

    ids, ids_swap, segs, segs_swap, full_lengths = [], [], [], [], []
    for r in range(n):
        if strategy == "tail":
            turns = [(pieces[(r, t, "p")], pieces[(r, t, "a")], pieces[(r, t, "b")]) for t in range(n_turns[r])]
            swapped = [(p, b, a) for p, a, b in turns]
            fwd, full, fwd_seg = build_sequence(
                "tail", layout, max_length, None, None, None, turns=turns, segments=True
            )
            rev, _, rev_seg = build_sequence("tail", layout, max_length, None, None, None, turns=swapped, segments=True)
        else:
            p, a, b = prompts[r], answers_a[r], answers_b[r]
            fwd, full, fwd_seg = build_sequence(
                strategy, layout, max_length, p, a, b, prompt_max_frac=prompt_max_frac, segments=True
            )
            rev, _, rev_seg = build_sequence(
                strategy, layout, max_length, p, b, a, prompt_max_frac=prompt_max_frac, segments=True
            )
        ids.append(np.asarray(fwd, dtype=np.int32))
        ids_swap.append(np.asarray(rev, dtype=np.int32))
        # which answer each token belongs to (1 shown first, 2 second): for pooling "pair"
        segs.append(np.asarray(fwd_seg, dtype=np.int8))
        segs_swap.append(np.asarray(rev_seg, dtype=np.int8))
        full_lengths.append(full)

    out = pd.DataFrame(
        {
            "id": df["id"].to_numpy(dtype=np.int64),
            "input_ids": ids,
            "input_ids_swap": ids_swap,
            "segments": segs,
            "segments_swap": segs_swap,
            "length": np.array([len(x) for x in ids], dtype=np.int64),
            "length_swap": np.array([len(x) for x in ids_swap], dtype=np.int64),
            "truncated": np.array(full_lengths) > max_length,
        }
    )
    elapsed = time.perf_counter() - t0
    log.info(
        "tokenized %d rows x 2 orders in %.1f s (%.0f rows/s); %s; mean length %.0f, %.1f%% truncated at max_length %d",
        n,
        elapsed,
        n / max(elapsed, 1e-9),
        strategy,
        out["length"].mean() if n else 0,
        100 * out["truncated"].mean() if n else 0,
        max_length,
    )
    return out


def read_tokens(path):
    """Read a token cache; id lists come back as int numpy arrays."""
    return pd.read_parquet(path)
