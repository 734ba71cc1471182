"""Cutting rows into forward passes: batch planning for prediction and training, and sharing
batches out over several devices.

Four ways (``predict.method``; training's token budgets use the last two):

``fixed``           rows in file order, every batch padded to ``max_length`` (the first public
                    notebooks);
``sorted_dynamic``  rows sorted by length, ``batch_size`` rows padded to the longest (the seed's);
``token_budget``    rows sorted by length, batches filled up to ``max_tokens`` padded token slots,
                    so short rows go through in large batches and long ones in small;
``packed``          rows sorted by length and concatenated without padding up to ``max_tokens``
                    tokens (each sequence attends only to itself: :mod:`varlen`).

With TTA a row's two orders go through together (adjacent in the same or the next batch).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

METHODS = ("fixed", "sorted_dynamic", "token_budget", "packed")


@dataclass
class Batch:
    rows: np.ndarray  # indices into the sequence list
    width: int  # padded width (0 for a packed batch)

    def slots(self, lengths):
        """Token positions computed for this batch (real tokens plus padding)."""
        return int(lengths[self.rows].sum()) if self.width == 0 else len(self.rows) * self.width


def _sorted_units(lengths, n_pairs):
    """Units of rows kept together, longest first: pairs (i, i + n_pairs) when the second half of
    ``lengths`` holds the swapped orders of the first half (TTA), single rows otherwise."""
    lengths = np.asarray(lengths)
    if n_pairs:
        firsts = np.arange(n_pairs)
        key = np.maximum(lengths[firsts], lengths[firsts + n_pairs])
        order = np.argsort(-key, kind="stable")
        units = [np.array([i, i + n_pairs]) for i in firsts[order]]
        rest = np.arange(2 * n_pairs, len(lengths))
    else:
        rest = np.arange(len(lengths))
        units = []
    if len(rest):
        units += [np.array([i]) for i in rest[np.argsort(-lengths[rest], kind="stable")]]
        units.sort(key=lambda u: -lengths[u].max())  # stable: pairs keep their order
    return units


def plan_batches(lengths, *, method, batch_size=8, max_tokens=8192, max_length=None, n_pairs=0):
    """Cut sequence indices into batches by ``method``.

    ``n_pairs``: with TTA the first ``n_pairs`` sequences have their swapped twins at
    ``i + n_pairs``; a twin goes into the same batch, or the next one when the budget is full.
    A sequence longer than the budget goes alone.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    if method not in METHODS:
        raise ValueError(f"unknown prediction method {method!r}; choose one of {METHODS}")
    if len(lengths) == 0:
        return []
    if method == "fixed":
        width = int(max_length or lengths.max())
        if n_pairs:
            order = np.stack([np.arange(n_pairs), np.arange(n_pairs) + n_pairs], 1).ravel()
            order = np.concatenate([order, np.arange(2 * n_pairs, len(lengths))])
        else:
            order = np.arange(len(lengths))
        return [Batch(order[i : i + batch_size], width) for i in range(0, len(order), batch_size)]
    order = np.concatenate(_sorted_units(lengths, n_pairs))
    if method == "sorted_dynamic":
        return [
            Batch(b, int(lengths[b].max()))
            for b in (order[i : i + batch_size] for i in range(0, len(order), batch_size))
        ]
    batches, current, width, used = [], [], 0, 0
    for i in order:
        n = int(lengths[i])
        if method == "token_budget":
            fits = (len(current) + 1) * max(width, n) <= max_tokens
        else:
            fits = used + n <= max_tokens
        if current and not fits:
            batches.append(Batch(np.array(current), width if method == "token_budget" else 0))
            current, width, used = [], 0, 0
        current.append(i)
        width, used = max(width, n), used + n
    batches.append(Batch(np.array(current), width if method == "token_budget" else 0))
    return batches


def plan_rows(lengths, rows, **plan):
    """:func:`plan_batches` over the sequences ``rows`` (indices into ``lengths``) only; the
    batches index ``lengths``."""
    rows = np.asarray(rows)
    return [Batch(rows[b.rows], b.width) for b in plan_batches(np.asarray(lengths)[rows], **plan)]


def padding_efficiency(batches, lengths):
    lengths = np.asarray(lengths)
    real = sum(int(lengths[b.rows].sum()) for b in batches)
    return real / max(sum(b.slots(lengths) for b in batches), 1)


def shard_batches(batches, lengths, n_shards):
    """Share batches out to ``n_shards`` devices, balanced by token slots: longest-processing-time
    first (largest batch to the least loaded shard). Returns lists of batches, one per shard."""
    lengths = np.asarray(lengths)
    shards, loads = [[] for _ in range(n_shards)], np.zeros(n_shards, dtype=np.int64)
    for b in sorted(batches, key=lambda b: -b.slots(lengths)):
        k = int(np.argmin(loads))
        shards[k].append(b)
        loads[k] += b.slots(lengths)
    return shards


def shard_imbalance(shards, lengths):
    """(most loaded - least loaded) / mean load, in token slots."""
    loads = np.array([sum(b.slots(np.asarray(lengths)) for b in s) for s in shards], dtype=float)
    return float((loads.max() - loads.min()) / max(loads.mean(), 1e-9))


def pass_tokens(batching):
    """Token slots of the largest forward pass a :class:`~arena_pref.settings.Batching` plans."""
    if batching.method in ("packed", "token_budget"):
        return batching.max_tokens_per_batch
    return batching.batch_size * batching.max_length
