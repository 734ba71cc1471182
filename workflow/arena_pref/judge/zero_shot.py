"""A zero-shot judge: a causal LM asked which answer is better, read at its next token.

Each row is one judged sequence per order (:mod:`judge_prompt`); the model's next-token logits at
the sequence's last position, restricted to the tokens of the three answers, are the raw
scores (``results/judge/<model>/<split>.parquet``, columns in :mod:`calibration`). The softmax over
those three logits is the judge's raw probability; :mod:`calibration` turns the logits into
calibrated probabilities per fold.

Sequences go through in token-budget batches sorted by length (a row's two orders together),
padded on the tokenizer's side; the last real position of each row is found from its length, its
positions count from its first real token, so left and right padding give the same scores. Only
that position's hidden state goes through the LM head (``logits_to_keep``): a 256k-token
vocabulary is projected once a row, not once a token.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import pandas as pd
import torch

from arena_pref.errors import InputError
from arena_pref.judge.calibration import AB_COLUMNS, BA_COLUMNS
from arena_pref.logs import Rate
from arena_pref.models.batching import padding_efficiency, plan_batches

log = logging.getLogger(__name__)


def padded(sequences, width, pad_token_id, side):
    """(ids, attention mask, position ids, last real position) of sequences padded to ``width``
    on ``side`` (left or right)."""
    n = len(sequences)
    ids = torch.full((n, width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    last = torch.zeros(n, dtype=torch.long)
    for row, seq in enumerate(sequences):
        start = width - len(seq) if side == "left" else 0
        ids[row, start : start + len(seq)] = torch.as_tensor(np.asarray(seq), dtype=torch.long)
        mask[row, start : start + len(seq)] = 1
        last[row] = start + len(seq) - 1
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    return ids, mask, positions, last


def answer_logits(model, sequences, *, answer_ids, pad_token_id, side):
    """The next-token logits of the answer tokens after each sequence (one padded batch), (n, 3)."""
    dev = next(model.parameters()).device
    width = max(len(s) for s in sequences)
    ids, mask, positions, last = padded(sequences, width, pad_token_id, side)
    out = model(
        input_ids=ids.to(dev),
        attention_mask=mask.to(dev),
        position_ids=positions.to(dev),
        logits_to_keep=last[:, None].to(dev),
        use_cache=False,
    )
    return out.logits[:, 0, list(answer_ids)].float()


@torch.inference_mode()
def score_sequences(model, sequences, *, answer_ids, pad_token_id, side, max_tokens, n_pairs=0):
    """Answer logits (n, 3) of every sequence, in token-budget batches of at most ``max_tokens``
    padded slots (``n_pairs``: the second half of ``sequences`` holds the first half's swapped
    orders, kept in the same batch); logs progress with token rates."""
    lengths = np.array([len(s) for s in sequences])
    batches = plan_batches(lengths, method="token_budget", max_tokens=max_tokens, n_pairs=n_pairs)
    log.info(
        "%d sequences in %d batches, padding efficiency %.3f (%s padding)",
        len(sequences),
        len(batches),
        padding_efficiency(batches, lengths),
        side,
    )
    logits = np.zeros((len(sequences), 3), dtype=np.float64)
    rate = Rate(int(lengths.sum()), what="tokens")
    for batch in batches:
        logits[batch.rows] = (
            answer_logits(
                model, [sequences[i] for i in batch.rows], answer_ids=answer_ids, pad_token_id=pad_token_id, side=side
            )
            .cpu()
            .numpy()
        )
        rate.update(int(lengths[batch.rows].sum()))
    return logits


def score_frame(sequences, logits, both_orders):
    """The raw score file of ``sequences`` (:func:`judge_prompt.judge_sequences`) from the logits of
    their (A, B) orders, then with ``both_orders`` their (B, A) orders."""
    n = len(sequences)
    out = pd.DataFrame(logits[:n], columns=AB_COLUMNS)
    out.insert(0, "id", sequences["id"].to_numpy(dtype=np.int64))
    if both_orders:
        out[BA_COLUMNS] = logits[n:]
    return out


def check_finite(logits, *, label, dtype):
    """Stop on non-finite answer logits (float16 overflow) before they reach a file."""
    bad = ~np.isfinite(logits).all(axis=1)
    if bad.any():
        raise InputError(
            f"{label}: {int(bad.sum())} of {len(logits)} sequences got non-finite answer logits "
            f"(dtype {dtype}; float16 overflows past 65504: use bfloat16 or float32)"
        )


def score_rows(*, model, parsed, backbone, settings, both_orders, allow_bf16_emulation=False, device=None):
    """Raw judge scores of a parsed frame (:class:`~arena_pref.settings.JudgeSettings`): each row
    as given and, with ``both_orders``, with A and B swapped (``model``: its name, for errors)."""
    from arena_pref.judge.prompts import check_room, judge_sequences, make_layout
    from arena_pref.models.loading import load_causal_lm, load_tokenizer

    tokenizer = load_tokenizer(backbone)
    layout = make_layout(tokenizer, settings.prompt, model=model)
    check_room(layout, settings.prompt, model)
    t0 = time.perf_counter()
    seqs = judge_sequences(parsed, tokenizer, layout, settings.prompt)
    log.info(
        "%d rows as judged sequences in %.1f s (%s, template %d tokens, answers %s = tokens %s); mean length "
        "%.0f, %.1f%% with a text cut at max_length %d",
        len(seqs),
        time.perf_counter() - t0,
        "chat template" if layout.chat else "plain text",
        layout.fixed_len,
        dict(settings.prompt.answers),
        list(layout.answer_ids),
        seqs["length"].mean() if len(seqs) else 0,
        100 * seqs["truncated"].mean() if len(seqs) else 0,
        settings.prompt.max_length,
    )
    flat = list(seqs["input_ids"]) + (list(seqs["input_ids_swap"]) if both_orders else [])
    if settings.backend == "vllm":
        from arena_pref.judge.vllm_backend import score_vllm

        logits = score_vllm(backbone, flat, answer_ids=layout.answer_ids, settings=settings)
    else:
        lm = load_causal_lm(backbone, settings.loading, device=device, allow_bf16_emulation=allow_bf16_emulation)
        logits = score_sequences(
            lm,
            flat,
            answer_ids=layout.answer_ids,
            pad_token_id=tokenizer.pad_token_id,
            side=tokenizer.padding_side,
            max_tokens=settings.max_tokens_per_batch,
            n_pairs=len(seqs) if both_orders else 0,
        )
    check_finite(logits, label=f"model '{model}'", dtype=settings.dtype)
    return score_frame(seqs, logits, both_orders)
