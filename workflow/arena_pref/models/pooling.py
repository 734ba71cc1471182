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

from arena_pref.models import flexmask, varlen

POOLINGS = ("auto", "last", "mean", "cls", "pair")


@dataclass
class Parts:
    body: torch.nn.Module  # the transformer: token ids -> hidden states
    head: torch.nn.Module  # hidden -> 3 logits (peft's saved copy when wrapped)
    dropout: torch.nn.Module | None
    pooler: torch.nn.Module | None
    decoder: bool


def model_parts(model):
    """Body, head and kind of a (peft-wrapped or plain) ``*ForSequenceClassification``."""
    seqcls = model.get_base_model() if hasattr(model, "get_base_model") else model
    body = getattr(seqcls, seqcls.base_model_prefix)
    if hasattr(seqcls, "score"):  # Llama, Gemma2, Mistral, Qwen2 ...
        return Parts(body, seqcls.score, None, None, decoder=True)
    if hasattr(seqcls, "classifier"):  # BERT-like encoders
        return Parts(
            body, seqcls.classifier, getattr(seqcls, "dropout", None), getattr(body, "pooler", None), decoder=False
        )
    raise TypeError(f"{type(seqcls).__name__}: no score or classifier head to pool into")


def resolve_pooling(pooling, parts):
    if pooling not in POOLINGS:
        raise ValueError(f"unknown pooling {pooling!r}; choose one of {POOLINGS}")
    if pooling == "auto":
        return "last" if parts.decoder else "mean"
    if pooling == "cls" and parts.pooler is None:
        raise ValueError("pooling 'cls' needs an encoder with a pooler (BERT-like)")
    return pooling


PACKING_ATTENTION = ("eager", "sdpa", "flex_attention", "flash_attention_2", "flash_attention_3", "flash_attention_4")


def packing_unsupported(model):
    """Why ``model`` cannot run padding-free packed rows, or None when it can.

    Packing needs a body that takes ``position_ids`` and attention that keeps each sequence to
    itself: transformers' attention interface (``varlen.py`` hooks in there) with eager or SDPA
    attention, ``flex_attention`` with a block mask per pass (``flexmask.py``), or flash-attention's
    varlen kernel. Callers fall back to padded batches."""
    parts = model_parts(model)
    seqcls = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not getattr(type(seqcls), "_supports_attention_backend", False):
        return f"{type(seqcls).__name__} does not use transformers' attention interface"
    impl = varlen.base_implementation(parts.body.config)
    if impl not in PACKING_ATTENTION:
        return f"attention implementation {impl!r}"
    if "position_ids" not in inspect.signature(parts.body.forward).parameters:
        return f"{type(parts.body).__name__}.forward takes no position_ids"
    return None


def packed_inputs(sequences, device=None):
    """One row of concatenated ``sequences`` with restarting position ids (on ``device``) and their
    lengths (on the host: :func:`classify` reads the boundaries from them without a device sync).
    (Segment ids are concatenated the same way: :func:`concat_row`.)"""
    lengths = torch.tensor([len(s) for s in sequences], dtype=torch.long)
    ids = concat_row(sequences)
    starts = torch.cumsum(lengths, 0) - lengths
    positions = torch.arange(int(lengths.sum())) - torch.repeat_interleave(starts, lengths)
    return ids.to(device), positions[None].to(device), lengths


def concat_row(arrays, device=None):
    """Token-aligned arrays (ids, segment ids) of the sequences of a packed row, as (1, T); one copy
    into a fresh array (cached token lists are read-only numpy arrays)."""
    return torch.from_numpy(np.concatenate([np.asarray(a, dtype=np.int64) for a in arrays]))[None].to(device)


def pad_rows(arrays, width, value=0):
    """Token-aligned arrays (ids, segment ids) of a padded batch, right-padded with ``value``
    to ``width``, as (n, width)."""
    out = torch.full((len(arrays), width), value, dtype=torch.long)
    for row, a in enumerate(arrays):
        out[row, : len(a)] = torch.tensor(np.asarray(a), dtype=torch.long)
    return out


def padded_inputs(sequences, width, pad_token_id):
    """Token ids right-padded with ``pad_token_id`` to ``width`` and their attention mask, as
    (n, width): one padding for training and prediction, whatever side the tokenizer pads on."""
    ids = pad_rows(sequences, width, pad_token_id)
    mask = (torch.arange(width)[None] < torch.tensor([len(s) for s in sequences])[:, None]).long()
    return ids, mask


def _segment_ids(lengths):
    return torch.repeat_interleave(torch.arange(len(lengths), device=lengths.device), lengths)


def _segment_means(h, seq_index, n_seqs, weight):
    """Per-sequence weighted means of token vectors ``h`` (tokens, hidden)."""
    sums = torch.zeros((n_seqs, h.shape[-1]), dtype=h.dtype, device=h.device)
    sums.index_add_(0, seq_index, h * weight.unsqueeze(-1).to(h.dtype))
    counts = torch.zeros(n_seqs, dtype=h.dtype, device=h.device).index_add_(0, seq_index, weight.to(h.dtype))
    return sums / counts.clamp(min=1).unsqueeze(-1)


def _pool_pair(h, seq_index, n_seqs, segments):
    from arena_pref.data.templates import FIRST_SEGMENT, SECOND_SEGMENT

    first = _segment_means(h, seq_index, n_seqs, segments == FIRST_SEGMENT)
    second = _segment_means(h, seq_index, n_seqs, segments == SECOND_SEGMENT)
    return first - second


def _pool_padded(hidden, attention_mask, pooling, segments=None):
    """Pool a padded batch, padded on either side: tokenizers of the Gemma and Llama families pad
    on the left, and the first and last real tokens are found from the mask, not assumed. The
    mask and segment ids go where the hidden states are (a model split over GPUs ends on its
    last one; its inputs went to the first)."""
    attention_mask = attention_mask.to(hidden.device)
    segments = segments.to(hidden.device) if segments is not None else None
    if pooling == "pair":
        b, w, _ = hidden.shape
        seq_index = torch.arange(b, device=hidden.device).repeat_interleave(w)
        seg = segments.reshape(-1) * attention_mask.reshape(-1).to(segments.dtype)
        return _pool_pair(hidden.reshape(b * w, -1), seq_index, b, seg)
    if pooling == "mean":
        m = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1)
    real = attention_mask.bool().int()
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    if pooling == "last":
        return hidden[rows, hidden.shape[1] - 1 - real.flip(1).argmax(1)]
    return hidden[rows, real.argmax(1)]  # cls: the first real token


def _pool_packed(hidden, lengths, pooling, segments=None):
    h = hidden[0]
    lengths = lengths.to(h.device)  # a split model's hidden states are on its last device
    segments = segments.to(h.device) if segments is not None else None
    if pooling == "pair":
        return _pool_pair(h, _segment_ids(lengths), len(lengths), segments.reshape(-1))
    ends = torch.cumsum(lengths, 0)
    if pooling == "last":
        return h[ends - 1]
    if pooling == "mean":
        return _segment_means(h, _segment_ids(lengths), len(lengths), torch.ones_like(h[:, 0]))
    return h[ends - lengths]


def classify(
    model,
    *,
    input_ids,
    attention_mask=None,
    lengths=None,
    position_ids=None,
    bounds=None,
    pooling="auto",
    segments=None,
    pack_to=None,
):
    """Logits (n, 3) for a padded batch (``attention_mask``, padded on either side) or for one
    packed row (``input_ids`` of shape (1, T) holding sequences of ``lengths``, with
    ``position_ids``; ``bounds``: the sequences' boundaries as host ints, read from ``lengths``
    when not given; ``pack_to``: the job's pass budget, by which ``flex_attention`` pads every
    pass to one of a few sizes, so that its kernel compiles a few times per job, not once per
    pass). ``segments`` (shaped like ``input_ids``): answer segment ids, for ``pooling="pair"``."""
    parts = model_parts(model)
    pooling = resolve_pooling(pooling, parts)
    if pooling == "pair" and segments is None:
        raise ValueError("pooling 'pair' needs the segment ids of the token cache")
    if lengths is None:
        kwargs = {"use_cache": False} if parts.decoder else {}
        hidden = parts.body(input_ids=input_ids, attention_mask=attention_mask, **kwargs).last_hidden_state
        pooled = _pool_padded(hidden, attention_mask, pooling, segments)
    else:
        if position_ids is None:
            raise ValueError("packed input needs position_ids")
        if bounds is None:  # one read per batch (free for host lengths), never one per layer
            bounds = (0, *np.cumsum(lengths.tolist()).tolist())
        hidden = _packed_body(parts, input_ids, position_ids, tuple(bounds), pack_to)
        pooled = _pool_packed(hidden, lengths, pooling, segments)
    if pooling == "cls":
        pooled = parts.pooler(pooled[:, None])
    if parts.dropout is not None:
        pooled = parts.dropout(pooled)
    return parts.head(pooled.to(_head_dtype(parts.head, pooled.dtype)))


def _packed_body(parts, input_ids, position_ids, bounds, pack_to=None):
    """Hidden states of one packed row, each sequence attending to itself only."""
    kwargs = {"position_ids": position_ids}
    if parts.decoder:
        kwargs["use_cache"] = False
    config = parts.body.config
    if config._attn_implementation == flexmask.NAME:
        # one flex_attention call per layer over a pass of one of a few sizes, block masks made once
        size = flexmask.pass_size(bounds[-1], pack_to)
        ids, kwargs["position_ids"] = flexmask.pad_pass(input_ids, position_ids, size)
        kwargs["attention_mask"] = flexmask.packed_masks(config, bounds, size, input_ids.device, causal=parts.decoder)
        with flexmask.static_shapes():
            return parts.body(input_ids=ids, **kwargs).last_hidden_state[:, : bounds[-1]]
    if varlen.install(config):
        # eager / SDPA: attention per sequence from host boundaries (varlen.py)
        kwargs["arena_bounds"] = bounds
    else:
        # flash-attention: its varlen kernel, given the boundaries instead of re-deriving them from
        # the position ids in every layer
        cu = torch.tensor(bounds, dtype=torch.int32, device=input_ids.device)
        longest = int(np.diff(bounds).max())
        kwargs.update(cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=longest, max_length_k=longest)
    with varlen.packed_forward():
        return parts.body(input_ids=input_ids, **kwargs).last_hidden_state


def _head_dtype(head, default):
    """The dtype the head computes in. A peft-wrapped head (modules_to_save) answers with its
    trained copy's weight, not the frozen original's (which stays 16-bit beside an fp32 copy)."""
    weight = getattr(head, "weight", None)
    return weight.dtype if isinstance(weight, torch.Tensor) and weight.is_floating_point() else default
