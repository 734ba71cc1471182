"""Segment-wise attention for packed rows where flash-attention's varlen kernel is not installed.

A packed row holds several sequences one after another. flash-attention (``flash_attn_varlen``)
attends within each sequence from the boundaries alone; without it, transformers falls back to a
dense block-diagonal mask over the whole row, which costs (row length)^2 — on a CPU or a GPU
without flash-attention that throws away what packing saves. This attention implementation,
registered with transformers' ``AttentionInterface`` as ``arena_varlen``, instead runs the
model's own attention (eager or SDPA, softcapping and sliding windows included) once per
sequence: cost sum(length^2), like varlen.

:func:`install` routes a model's attention through it for good, not just around one forward:
gradient checkpointing recomputes layers during the backward pass, long after a forward has
returned, and the recompute must attend per sequence exactly as the forward did. Calls that bring
no packed boundaries (padded batches, the stock ``model(...)``) go straight to the model's own
attention with the mask its own mask function builds, so installing changes nothing for them.

A packed forward runs inside :func:`packed_forward` and passes the boundaries as
``arena_bounds``, a tuple of host ints computed once per batch: reading device tensors in every
layer would stall the GPU once per layer. Inside it no (T x T) mask is built at all.
"""

from __future__ import annotations

import contextlib
import contextvars
import sys

import torch

NAME = "arena_varlen"
BASE_ATTR = "_arena_base_attn"  # the model's own implementation, kept on its config
SEGMENTWISE = ("eager", "sdpa")

_registered = False
_packed = contextvars.ContextVar("arena_packed_forward", default=False)
_mask_cache = {}  # (window, dtype, device) -> (N, N) additive causal mask; a length-L mask is its [:L, :L]


def _base_name(config):
    return getattr(config, BASE_ATTR)


def _base_function(module, base):
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    if base == "eager":
        # each model family defines its own eager attention next to its attention module
        return sys.modules[type(module).__module__].eager_attention_forward
    return ALL_ATTENTION_FUNCTIONS[base]


def _mask(*args, config, **kwargs):
    """Mask function of ``arena_varlen``: none inside a packed forward (the boundaries say it all),
    else what the model's own implementation builds."""
    if _packed.get():
        return None
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    return ALL_MASK_ATTENTION_FUNCTIONS[_base_name(config)](*args, config=config, **kwargs)


def causal_mask(length, *, window, dtype, device):
    """Additive (1, 1, L, L) causal mask (with a sliding ``window``), sliced from one cached mask
    per (window, dtype, device): the top-left L x L block of a longer causal mask is the mask of
    length L, so every length shares one allocation."""
    key = (window, dtype, str(device))
    cached = _mask_cache.get(key)
    if cached is None or cached.shape[-1] < length:
        size = -(-length // 256) * 256  # grown in steps of 256 tokens: few rebuilds, little waste
        i = torch.arange(size, device=device)
        allowed = i[None, :] <= i[:, None]
        if window:
            allowed &= i[:, None] - i[None, :] < window
        cached = torch.zeros((size, size), dtype=dtype, device=device).masked_fill_(~allowed, torch.finfo(dtype).min)
        _mask_cache[key] = cached
    return cached[:length, :length][None, None]


def _segment_call(module, base, *, length, window, dtype, device):
    """(mask, is_causal) for one segment: SDPA with ``is_causal`` and no mask wherever no window
    cuts into the segment (so its flash and memory-efficient kernels can run), a cached additive
    mask otherwise (eager attention, which softcapping models such as Gemma-2 need)."""
    if not getattr(module, "is_causal", True):
        return None, False  # encoders: each sequence attends to all of itself
    window_applies = bool(window) and length > window
    if base == "sdpa" and not window_applies:
        return None, True
    return causal_mask(length, window=window if window_applies else None, dtype=dtype, device=device), False


def varlen_attention(module, query, key, value, attention_mask, *, arena_bounds=None, **kwargs):
    base = _base_name(module.config)
    base_fn = _base_function(module, base)
    if arena_bounds is None:  # not packed: the model's own attention, unchanged
        return base_fn(module, query, key, value, attention_mask, **kwargs)
    window = kwargs.pop("sliding_window", None)
    for k in ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k", "position_ids", "is_causal"):
        kwargs.pop(k, None)
    outputs = []
    for start, end in zip(arena_bounds[:-1], arena_bounds[1:]):
        mask, is_causal = _segment_call(
            module, base, length=end - start, window=window, dtype=query.dtype, device=query.device
        )
        if base == "sdpa":
            kwargs["is_causal"] = is_causal
        out, _ = base_fn(module, query[:, :, start:end], key[:, :, start:end], value[:, :, start:end], mask, **kwargs)
        outputs.append(out)  # (1, length, heads, head_dim)
    return torch.cat(outputs, dim=1), None


def register():
    global _registered
    if _registered:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(NAME, varlen_attention)
    AttentionMaskInterface.register(NAME, _mask)
    _registered = True


def install(config):
    """Route the attention of the model with ``config`` through ``arena_varlen`` (idempotent).
    Returns whether packed rows then run segment-wise: False for implementations that handle
    packed rows themselves (flash-attention) and leaves those untouched."""
    impl = config._attn_implementation
    if impl == NAME:
        return True
    if impl not in SEGMENTWISE:
        return False
    register()
    setattr(config, BASE_ATTR, impl)
    config._attn_implementation = NAME
    return True


def base_implementation(config):
    """The model's own attention implementation, whether or not ``arena_varlen`` is installed."""
    impl = config._attn_implementation
    return _base_name(config) if impl == NAME else impl


@contextlib.contextmanager
def packed_forward():
    """Mark a forward pass as packed: no attention masks are built inside it."""
    token = _packed.set(True)
    try:
        yield
    finally:
        _packed.reset(token)
