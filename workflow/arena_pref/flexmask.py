"""Block masks for packed passes under ``flex_attention``: one attention call per layer.

A packed pass holds several sequences one after another. Under ``attn_implementation:
flex_attention`` each layer makes one ``flex_attention`` call over the whole pass, with a block
mask that keeps every token to its own sequence (causal, and within Gemma-2's sliding window on
its sliding layers); Gemma-2's logit softcapping is applied by transformers' ``score_mod``.

Every allowed key of query ``q`` lies in one interval ``[lo[q], q]``: from the start of ``q``'s
sequence (or ``q - window + 1`` when that is later) up to ``q``. So the mask is the one function
``lo[q] <= kv <= q`` of a per-token tensor, and its block tables follow from ``lo`` alone, on the
host, in (blocks x blocks) operations: no (T x T) mask is ever built, and the mask is made once
per pass, not once per layer.

Passes are padded to a fixed token count (:func:`pass_size`) with a filler segment whose tokens
attend only to themselves (``lo[q] = q``: one diagonal block per 128 filler tokens), so every pass
of a job has one shape and the compiled kernel is compiled once per job, not once per pass.
"""

from __future__ import annotations

import torch

NAME = "flex_attention"
BLOCK = 128  # flex_attention's default block size (tokens per query and key block)
FILLER_TOKEN = 0  # any id of the vocabulary: filler tokens are never pooled


def pass_size(total, pack_to=None):
    """The token count a packed pass of ``total`` real tokens is padded to: ``pack_to`` (the job's
    pass budget) rounded up to whole blocks, or more blocks for a pass longer than that."""
    size = max(int(pack_to or 0), int(total))
    return -(-size // BLOCK) * BLOCK


def lower_bounds(bounds, size, window=None):
    """``lo`` (int64, ``size``): the first key each query may attend to. ``bounds``: the sequences'
    boundaries (0, end of the first, ..., total); tokens past ``bounds[-1]`` are filler."""
    starts = torch.tensor(bounds[:-1], dtype=torch.long)
    lengths = torch.tensor(bounds[1:], dtype=torch.long) - starts
    lo = torch.arange(size)
    lo[:bounds[-1]] = torch.repeat_interleave(starts, lengths)
    if window:
        lo = torch.maximum(lo, torch.arange(size) - window + 1)
    return lo


def _sparse(blocks):
    """(count, indices) per query block of a (blocks x blocks) bool table, as BlockMask wants them."""
    counts = blocks.sum(1, dtype=torch.int32)
    indices = torch.argsort((~blocks).to(torch.int8), dim=1, stable=True).to(torch.int32)
    return counts[None, None], indices[None, None]


def block_mask(lo, device):
    """The BlockMask of ``lo[q] <= kv <= q`` (``lo`` non-decreasing, as :func:`lower_bounds` makes it).

    A query block [a, b] and a key block [c, d] share an allowed pair when the first query at or
    after c, ``m = max(a, c)``, lies in the block and reaches back to d (``lo[m] <= d``); every pair
    is allowed when the last query reaches back to c (``lo[b] <= c``) and the key block ends by the
    first query (``d <= a``)."""
    from torch.nn.attention.flex_attention import BlockMask

    size = len(lo)
    first = torch.arange(0, size, BLOCK)
    last = first + BLOCK - 1
    a, b, c, d = first[:, None], last[:, None], first[None], last[None]
    m = torch.maximum(a, c)
    partial_or_full = (m <= b) & (lo[m] <= d)
    full = (lo[b] <= c) & (d <= a)
    partial_num, partial_idx = _sparse(partial_or_full & ~full)
    full_num, full_idx = _sparse(full)
    lo_dev = lo.to(device)

    def within_interval(batch, head, q, kv):
        return (kv <= q) & (kv >= lo_dev[q])

    return BlockMask.from_kv_blocks(partial_num.to(device), partial_idx.to(device), full_num.to(device),
                                    full_idx.to(device), BLOCK_SIZE=BLOCK, mask_mod=within_interval,
                                    seq_lengths=(size, size))


def packed_masks(config, bounds, size, device):
    """The attention mask argument of a packed pass: one BlockMask, or for models whose layers
    differ (``config.layer_types``, e.g. Gemma-2's sliding and full layers) one per layer type, as
    transformers' models take a precomputed mask mapping."""
    window = getattr(config, "sliding_window", None)
    layer_types = getattr(config, "layer_types", None)
    if not layer_types:
        uses_window = window and getattr(config, "use_sliding_window", None) is not False  # Mistral: None
        return block_mask(lower_bounds(bounds, size, window if uses_window else None), device)
    return {kind: block_mask(lower_bounds(bounds, size, window if kind == "sliding_attention" else None), device)
            for kind in dict.fromkeys(layer_types)}


def static_shapes():
    """Compile flex_attention for each pass size as its own static kernel: a second size (a pass
    longer than the budget) must not turn the compiled kernel into a dynamic-shape one, which
    Inductor's CPU code generation fails on (torch 2.13) and which runs slower on a GPU."""
    import torch._dynamo

    return torch._dynamo.config.patch(automatic_dynamic_shapes=False)


def pad_pass(input_ids, position_ids, size):
    """``input_ids`` and ``position_ids`` (1, T) padded to (1, ``size``) with filler tokens at
    position 0 (each attends only to itself, and none is pooled)."""
    extra = size - input_ids.shape[1]
    if extra == 0:
        return input_ids, position_ids
    fill = torch.full((1, extra), FILLER_TOKEN, dtype=input_ids.dtype, device=input_ids.device)
    return torch.cat([input_ids, fill], 1), torch.cat([position_ids, torch.zeros_like(fill)], 1)
