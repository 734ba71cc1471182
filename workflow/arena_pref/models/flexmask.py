"""Block masks for packed passes under ``flex_attention``: one attention call per layer.

A packed pass holds several sequences one after another. Under ``attn_implementation:
flex_attention`` each layer makes one ``flex_attention`` call over the whole pass, with a block
mask that keeps every token to its own sequence: causal in decoders (and within Gemma-2's sliding
window on its sliding layers), the whole sequence in encoders. Gemma-2's logit softcapping is
applied by transformers' ``score_mod``.

Every key a query ``q`` may attend to lies in one interval ``[lo[q], hi[q]]``: from the start of
``q``'s sequence (or ``q - window + 1`` when that is later) up to ``q`` (decoders) or to the end of
the sequence (encoders). Both bounds are non-decreasing in ``q``, so the mask is the one function
``lo[q] <= kv <= hi[q]`` of two per-token tensors, and its block tables follow from them alone, on
the host, in (blocks x blocks) operations: no (T x T) mask is ever built, and the mask is made
once per pass, not once per layer.

Passes are padded (:func:`pass_size`) with a filler segment whose tokens attend only to themselves
(``lo[q] = hi[q] = q``: one diagonal block per 128 filler tokens) to one of four sizes per job, so
the kernel compiles at most four times per job, never once per pass, and filler stays under a
quarter of the budget.
"""

from __future__ import annotations

import torch

NAME = "flex_attention"
BLOCK = 128  # flex_attention's default block size (tokens per query and key block)
BUCKETS = 4  # pass sizes per job: each compiles its own kernel
FILLER_TOKEN = 0  # any id of the vocabulary: filler tokens are never pooled


def pass_size(total, pack_to=None):
    """The token count a packed pass of ``total`` real tokens is padded to: the next multiple of a
    quarter of ``pack_to`` (the job's pass budget) in whole blocks, so a job's passes take at most
    :data:`BUCKETS` sizes (more only for a pass longer than the budget); without a budget, whole
    blocks."""
    step = -(-int(pack_to or 0) // (BUCKETS * BLOCK)) * BLOCK or BLOCK
    return max(-(-int(total) // step) * step, step)


def token_bounds(bounds, size, *, causal=True, window=None):
    """(``lo``, ``hi``), int64 of ``size``: the first and last key each query may attend to.
    ``bounds``: the sequences' boundaries (0, end of the first, ..., total); tokens past
    ``bounds[-1]`` are filler."""
    starts = torch.tensor(bounds[:-1], dtype=torch.long)
    ends = torch.tensor(bounds[1:], dtype=torch.long)
    position = torch.arange(size)
    lo, hi = position.clone(), position.clone()
    lo[: bounds[-1]] = torch.repeat_interleave(starts, ends - starts)
    if not causal:
        hi[: bounds[-1]] = torch.repeat_interleave(ends - 1, ends - starts)
    if window:
        lo = torch.maximum(lo, position - window + 1)
    return lo, hi


def _sparse(blocks):
    """(count, indices) per query block of a (blocks x blocks) bool table, as BlockMask wants them."""
    counts = blocks.sum(1, dtype=torch.int32)
    indices = torch.argsort((~blocks).to(torch.int8), dim=1, stable=True).to(torch.int32)
    return counts[None, None], indices[None, None]


def block_tables(lo, hi):
    """(some, every): (blocks x blocks) bool tables of the query and key blocks that share at least
    one allowed pair, and those whose every pair is allowed, for ``lo[q] <= kv <= hi[q]`` with
    ``lo`` and ``hi`` non-decreasing.

    The queries that reach key ``d`` or below form a prefix (``lo[q] <= d``: up to ``q1``), those that
    reach key ``c`` or above a suffix (``hi[q] >= c``: from ``q0``): a query block [a, b] and a key
    block [c, d] share a pair when [a, b] meets [q0, q1]. Every pair is allowed when the block's
    last query starts at or before c and its first query reaches d."""
    size = len(lo)
    first = torch.arange(0, size, BLOCK)
    last = first + BLOCK - 1
    q1 = torch.searchsorted(lo, last, right=True) - 1  # per key block: the last query reaching back to it
    q0 = torch.searchsorted(hi, first)  # per key block: the first query reaching forward to it
    a, b = first[:, None], last[:, None]
    some = torch.maximum(a, q0[None]) <= torch.minimum(b, q1[None])
    every = (lo[last][:, None] <= first[None]) & (hi[first][:, None] >= last[None])
    return some, every


def block_mask(lo, hi, device):
    """The BlockMask of ``lo[q] <= kv <= hi[q]`` (:func:`block_tables`)."""
    from torch.nn.attention.flex_attention import BlockMask

    some, every = block_tables(lo, hi)
    partial_num, partial_idx = _sparse(some & ~every)
    full_num, full_idx = _sparse(every)
    lo_dev, hi_dev = lo.to(device), hi.to(device)

    def within_interval(batch, head, q, kv):
        return (kv >= lo_dev[q]) & (kv <= hi_dev[q])

    size = len(lo)
    return BlockMask.from_kv_blocks(
        partial_num.to(device),
        partial_idx.to(device),
        full_num.to(device),
        full_idx.to(device),
        BLOCK_SIZE=BLOCK,
        mask_mod=within_interval,
        seq_lengths=(size, size),
    )


def packed_masks(config, bounds, size, device, *, causal=True):
    """The attention mask argument of a packed pass: one BlockMask, or for models whose layers
    differ (``config.layer_types``, e.g. Gemma-2's sliding and full layers) one per layer type, as
    transformers' models take a precomputed mask mapping. ``causal``: False for encoders."""
    window = getattr(config, "sliding_window", None)
    layer_types = getattr(config, "layer_types", None)

    def mask(windowed):
        return block_mask(*token_bounds(bounds, size, causal=causal, window=window if windowed else None), device)

    if not layer_types:  # Mistral leaves use_sliding_window unset (None) and slides
        return mask(window and getattr(config, "use_sliding_window", None) is not False)
    return {kind: mask(kind == "sliding_attention") for kind in dict.fromkeys(layer_types)}


def static_shapes():
    """Compile flex_attention for each pass size as its own static kernel: a second size must not
    turn the compiled kernel into a dynamic-shape one, which Inductor's CPU code generation fails
    on (torch 2.13) and which runs slower on a GPU. The recompile limit leaves room for the
    :data:`BUCKETS` sizes of both of Gemma-2's layer types and a few passes past the budget."""
    import torch._dynamo

    limit = max(torch._dynamo.config.recompile_limit, 4 * BUCKETS)
    return torch._dynamo.config.patch(automatic_dynamic_shapes=False, recompile_limit=limit)


def pad_pass(input_ids, position_ids, size):
    """``input_ids`` and ``position_ids`` (1, T) padded to (1, ``size``) with filler tokens at
    position 0 (each attends only to itself, and none is pooled)."""
    extra = size - input_ids.shape[1]
    if extra == 0:
        return input_ids, position_ids
    fill = torch.full((1, extra), FILLER_TOKEN, dtype=input_ids.dtype, device=input_ids.device)
    return torch.cat([input_ids, fill], 1), torch.cat([position_ids, torch.zeros_like(fill)], 1)
