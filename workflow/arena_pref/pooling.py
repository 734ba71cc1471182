"""Sequence-classification forward with our own pooling, for padded and for packed batches.

The stock ``*ForSequenceClassification`` models pool one token per row: the last non-pad token
(decoders) or the ``[CLS]`` pooler (BERT-like encoders). That is wrong for packed batches, where
one row holds many sequences, and a poor fit for sentence encoders such as all-MiniLM, which
were trained with mean pooling. Here the transformer body runs alone and the pooling and the
model's own score head (the one LoRA training saves with the adapter) are applied by us, the
same way in training and prediction.

``pooling``:
    ``last``  the last token of each sequence (decoders; the stock choice),
    ``mean``  the mean over each sequence's tokens (sentence encoders),
    ``pair``  mean over the first answer's tokens minus mean over the second's (needs the token
              cache's segment ids): the head then sees how the answers differ, which a sentence
              encoder pooled over the whole (prompt, A, B) sequence must otherwise learn first,
    ``cls``   the first token through the encoder's pooler (the stock BERT choice),
    ``auto``  ``last`` for decoder models, ``mean`` for encoders.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import numpy as np
import torch

from . import varlen

POOLINGS = ("auto", "last", "mean", "cls", "pair")


@dataclass
class Parts:
    body: torch.nn.Module        # the transformer: token ids -> hidden states
    head: torch.nn.Module        # hidden -> 3 logits (peft's saved copy when wrapped)
    dropout: torch.nn.Module | None
    pooler: torch.nn.Module | None
    decoder: bool


def model_parts(model):
    """Body, head and kind of a (peft-wrapped or plain) ``*ForSequenceClassification``."""
    seqcls = model.get_base_model() if hasattr(model, "get_base_model") else model
    body = getattr(seqcls, seqcls.base_model_prefix)
    if hasattr(seqcls, "score"):      # Llama, Gemma2, Mistral, Qwen2 ...
        return Parts(body, seqcls.score, None, None, decoder=True)
    if hasattr(seqcls, "classifier"):  # BERT-like encoders
        return Parts(body, seqcls.classifier, getattr(seqcls, "dropout", None),
                     getattr(body, "pooler", None), decoder=False)
    raise TypeError(f"{type(seqcls).__name__}: no score or classifier head to pool into")


def resolve_pooling(pooling, parts):
    if pooling not in POOLINGS:
        raise ValueError(f"unknown pooling {pooling!r}; choose one of {POOLINGS}")
    if pooling == "auto":
        return "last" if parts.decoder else "mean"
    if pooling == "cls" and parts.pooler is None:
        raise ValueError("pooling 'cls' needs an encoder with a pooler (BERT-like)")
    return pooling


PACKING_ATTENTION = ("eager", "sdpa", "flash_attention_2", "flash_attention_3")


def packing_unsupported(model):
    """Why ``model`` cannot run padding-free packed rows, or None when it can.

    Packing needs a body that takes ``position_ids`` and attention that keeps each sequence to
    itself: transformers' attention interface (``varlen.py`` hooks in there) with eager or SDPA
    attention, or flash-attention's varlen kernel. Callers fall back to padded batches."""
    parts = model_parts(model)
    seqcls = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not getattr(type(seqcls), "_supports_attention_backend", False):
        return f"{type(seqcls).__name__} does not use transformers' attention interface"
    impl = parts.body.config._attn_implementation
    if impl not in PACKING_ATTENTION:
        return f"attention implementation {impl!r}"
    if "position_ids" not in inspect.signature(parts.body.forward).parameters:
        return f"{type(parts.body).__name__}.forward takes no position_ids"
    return None


def packed_inputs(sequences, device=None):
    """One row of concatenated ``sequences`` with restarting position ids and their lengths.
    (Segment ids are concatenated the same way: :func:`concat_row`.)"""
    lengths = torch.tensor([len(s) for s in sequences], dtype=torch.long)
    ids = concat_row(sequences)
    starts = torch.cumsum(lengths, 0) - lengths
    positions = torch.arange(int(lengths.sum())) - torch.repeat_interleave(starts, lengths)
    return ids.to(device), positions[None].to(device), lengths.to(device)


def concat_row(arrays, device=None):
    """Token-aligned arrays (ids, segment ids) of the sequences of a packed row, as (1, T); one copy
    into a fresh array (cached token lists are read-only numpy arrays)."""
    return torch.from_numpy(np.concatenate([np.asarray(a, dtype=np.int64) for a in arrays]))[None].to(device)


def pad_rows(arrays, width, value=0):
    """Token-aligned arrays (ids, segment ids) of a padded batch, right-padded with ``value``
    to ``width``, as (n, width)."""
    out = torch.full((len(arrays), width), value, dtype=torch.long)
    for row, a in enumerate(arrays):
        out[row, :len(a)] = torch.tensor(np.asarray(a), dtype=torch.long)
    return out


def _segment_ids(lengths):
    return torch.repeat_interleave(torch.arange(len(lengths), device=lengths.device), lengths)


def block_diagonal_mask(lengths, dtype):
    """Additive (1, 1, T, T) mask letting each token attend within its own sequence only: what
    encoders need for packed rows (decoders derive it from the restarting position ids)."""
    seg = _segment_ids(lengths)
    allowed = seg[:, None] == seg[None, :]
    mask = torch.zeros(allowed.shape, dtype=dtype, device=lengths.device)
    return mask.masked_fill_(~allowed, torch.finfo(dtype).min)[None, None]


def _segment_means(h, seq_index, n_seqs, weight):
    """Per-sequence weighted means of token vectors ``h`` (tokens, hidden)."""
    sums = torch.zeros((n_seqs, h.shape[-1]), dtype=h.dtype, device=h.device)
    sums.index_add_(0, seq_index, h * weight.unsqueeze(-1).to(h.dtype))
    counts = torch.zeros(n_seqs, dtype=h.dtype, device=h.device).index_add_(0, seq_index, weight.to(h.dtype))
    return sums / counts.clamp(min=1).unsqueeze(-1)


def _pool_pair(h, seq_index, n_seqs, segments):
    from .text import FIRST_SEGMENT, SECOND_SEGMENT

    first = _segment_means(h, seq_index, n_seqs, segments == FIRST_SEGMENT)
    second = _segment_means(h, seq_index, n_seqs, segments == SECOND_SEGMENT)
    return first - second


def _pool_padded(hidden, attention_mask, pooling, segments=None):
    if pooling == "pair":
        b, w, _ = hidden.shape
        seq_index = torch.arange(b, device=hidden.device).repeat_interleave(w)
        seg = segments.reshape(-1) * attention_mask.reshape(-1).to(segments.dtype)
        return _pool_pair(hidden.reshape(b * w, -1), seq_index, b, seg)
    if pooling == "last":
        # right padding: the last real token sits at (number of real tokens - 1)
        last = attention_mask.sum(1) - 1
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    if pooling == "mean":
        m = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1)
    return hidden[:, 0]


def _pool_packed(hidden, lengths, pooling, segments=None):
    h = hidden[0]
    if pooling == "pair":
        return _pool_pair(h, _segment_ids(lengths), len(lengths), segments.reshape(-1))
    ends = torch.cumsum(lengths, 0)
    if pooling == "last":
        return h[ends - 1]
    if pooling == "mean":
        return _segment_means(h, _segment_ids(lengths), len(lengths), torch.ones_like(h[:, 0]))
    return h[ends - lengths]


def classify(model, *, input_ids, attention_mask=None, lengths=None, position_ids=None,
             pooling="auto", segments=None):
    """Logits (n, 3) for a padded batch (``attention_mask``, right-padded) or for one packed row
    (``input_ids`` of shape (1, T) holding sequences of ``lengths``, with ``position_ids``).
    ``segments`` (shaped like ``input_ids``): answer segment ids, for ``pooling="pair"``."""
    parts = model_parts(model)
    pooling = resolve_pooling(pooling, parts)
    if pooling == "pair" and segments is None:
        raise ValueError("pooling 'pair' needs the segment ids of the token cache")
    packed = lengths is not None
    kwargs = {}
    if parts.decoder:
        # without a KV cache transformers reads packed boundaries from the position ids
        kwargs["use_cache"] = False
    if not packed:
        hidden = parts.body(input_ids=input_ids, attention_mask=attention_mask, **kwargs).last_hidden_state
    else:
        if position_ids is None:
            raise ValueError("packed input needs position_ids")
        kwargs["position_ids"] = position_ids
        with varlen.packed_attention(parts.body.config) as segmentwise:
            if segmentwise:
                # eager / SDPA models: attention per sequence from the boundaries (varlen.py)
                cu = torch.zeros(len(lengths) + 1, dtype=torch.int32, device=lengths.device)
                cu[1:] = torch.cumsum(lengths, 0)
                longest = int(lengths.max())
                kwargs.update(cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=longest, max_length_k=longest)
            elif not parts.decoder:
                # an encoder on flash-style kernels: spell the block-diagonal mask out
                dtype = parts.body.get_input_embeddings().weight.dtype
                kwargs["attention_mask"] = block_diagonal_mask(lengths, dtype)
            # decoders on flash-attention take the boundaries from the restarting position ids
            hidden = parts.body(input_ids=input_ids, **kwargs).last_hidden_state
    if pooling == "cls":
        first = hidden[:, :1] if not packed else _pool_packed(hidden, lengths, "cls")[:, None]
        pooled = parts.pooler(first)
    elif packed:
        pooled = _pool_packed(hidden, lengths, pooling, segments)
    else:
        pooled = _pool_padded(hidden, attention_mask, pooling, segments)
    if parts.dropout is not None:
        pooled = parts.dropout(pooled)
    head_dtype = _head_dtype(parts.head, pooled.dtype)
    return parts.head(pooled.to(head_dtype))


def _head_dtype(head, default):
    for p in head.parameters():
        if p.is_floating_point():
            return p.dtype
    return default
