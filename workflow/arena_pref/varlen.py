"""Segment-wise attention for packed rows where flash-attention's varlen kernel is not installed.

A packed row holds several sequences one after another. flash-attention (``flash_attn_varlen``)
attends within each sequence from the boundaries alone; without it, transformers falls back to a
dense block-diagonal mask over the whole row, which costs (row length)^2 — on a CPU or a GPU
without flash-attention that throws away what packing saves. This attention implementation,
registered with transformers' ``AttentionInterface`` as ``arena_varlen``, instead runs the
model's own attention (eager or SDPA, softcapping and sliding windows included) once per
sequence: cost sum(length^2), like varlen.

It is switched on only around a packed forward (``packed_attention``), receives the boundaries as
``cu_seq_lens_q`` (the name flash-attention's kwargs use) and refuses to run without them.
"""

from __future__ import annotations

import contextlib
import sys

import torch

NAME = "arena_varlen"
_registered = False


def _no_mask(*args, **kwargs):
    # the boundaries come in as cu_seq_lens_q; no (T x T) mask is built
    return None


def _base_function(module, base):
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    if base == "eager":
        # each model family defines its own eager attention next to its attention module
        return sys.modules[type(module).__module__].eager_attention_forward
    return ALL_ATTENTION_FUNCTIONS[base]


def _segment_mask(length, *, causal, window, dtype, device):
    if not causal:
        return None
    i = torch.arange(length, device=device)
    allowed = i[None, :] <= i[:, None]
    if window:
        allowed &= i[:, None] - i[None, :] < window
    mask = torch.zeros((length, length), dtype=dtype, device=device)
    return mask.masked_fill_(~allowed, torch.finfo(dtype).min)[None, None]


def varlen_attention(module, query, key, value, attention_mask, *, cu_seq_lens_q=None, **kwargs):
    if cu_seq_lens_q is None:
        raise RuntimeError(f"{NAME} attention runs packed rows only (cu_seq_lens_q missing)")
    base = _base_function(module, module.config._arena_base_attn)
    causal = getattr(module, "is_causal", True)
    window = kwargs.get("sliding_window")
    for k in ("cu_seq_lens_k", "max_length_q", "max_length_k", "position_ids", "is_causal"):
        kwargs.pop(k, None)
    bounds = cu_seq_lens_q.tolist()
    outputs = []
    for start, end in zip(bounds[:-1], bounds[1:]):
        mask = _segment_mask(end - start, causal=causal, window=window, dtype=query.dtype, device=query.device)
        out, _ = base(module, query[:, :, start:end], key[:, :, start:end], value[:, :, start:end], mask,
                      is_causal=False, **kwargs)
        outputs.append(out)  # (1, length, heads, head_dim)
    return torch.cat(outputs, dim=1), None


def register():
    global _registered
    if _registered:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(NAME, varlen_attention)
    AttentionMaskInterface.register(NAME, _no_mask)
    _registered = True


@contextlib.contextmanager
def packed_attention(model_config):
    """Run the model's attention per packed sequence for the duration of the block."""
    register()
    base = model_config._attn_implementation
    if base not in ("eager", "sdpa"):
        # flash-attention and friends handle packed rows themselves
        yield False
        return
    model_config._arena_base_attn = base
    model_config._attn_implementation = NAME
    try:
        yield True
    finally:
        model_config._attn_implementation = base
