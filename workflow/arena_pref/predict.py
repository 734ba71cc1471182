"""Prediction with test-time augmentation (A/B swap): batch planning, packing, several devices.

Four ways to cut rows into forward passes (``predict.method``):

``fixed``           rows in file order, every batch padded to ``max_length`` (the first public
                    notebooks);
``sorted_dynamic``  rows sorted by length, ``batch_size`` rows padded to the longest (the seed's);
``token_budget``    rows sorted by length, batches filled up to ``max_tokens_per_batch`` padded
                    token slots, so short rows go through in large batches and long ones in small;
``packed``          rows sorted by length and concatenated without padding up to
                    ``max_tokens_per_batch`` tokens, each sequence attending only to itself
                    (flash-attention's varlen kernel where it runs, per-sequence eager or SDPA
                    attention elsewhere: :mod:`varlen`), pooled per sequence by :mod:`pooling`.

With TTA a row's two orders go through together (adjacent in the same or the next batch).
With several devices the batches are shared out balanced by token slots, one worker process
per device, and merged back in input order.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from .logs import Rate
from .metrics import tta_average
from .errors import InputError
from .pooling import classify, concat_row, packed_inputs, packing_unsupported, pad_rows, padded_inputs

log = logging.getLogger(__name__)

PROB_COLUMNS = ["a", "b", "tie"]
TTA_COLUMNS = ["a_tta", "b_tta", "tie_tta"]
METHODS = ("fixed", "sorted_dynamic", "token_budget", "packed")


@dataclass
class Batch:
    rows: np.ndarray   # indices into the sequence list
    width: int         # padded width (0 for a packed batch)

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
        return [Batch(order[i:i + batch_size], width) for i in range(0, len(order), batch_size)]
    order = np.concatenate(_sorted_units(lengths, n_pairs))
    if method == "sorted_dynamic":
        return [Batch(b, int(lengths[b].max())) for b in
                (order[i:i + batch_size] for i in range(0, len(order), batch_size))]
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


def forward_batch(model, sequences, batch, *, pad_token_id, pooling, segments=None):
    """Logits for one planned batch (padded to ``batch.width`` or packed when it is 0);
    ``segments``: the sequences' answer segment ids (pooling ``pair``)."""
    dev = next(model.parameters()).device
    seqs = [sequences[i] for i in batch.rows]
    segs = [segments[i] for i in batch.rows] if segments is not None else None
    if batch.width == 0:
        ids, positions, lengths = packed_inputs(seqs, dev)
        return classify(model, input_ids=ids, position_ids=positions, lengths=lengths, pooling=pooling,
                        segments=concat_row(segs, dev) if segs is not None else None)
    ids, mask = padded_inputs(seqs, batch.width, pad_token_id)
    return classify(model, input_ids=ids.to(dev), attention_mask=mask.to(dev), pooling=pooling,
                    segments=pad_rows(segs, batch.width).to(dev) if segs is not None else None)


@torch.inference_mode()
def run_batches(model, sequences, batches, *, pad_token_id, pooling="auto", forward=forward_batch,
                segments=None):
    """Probabilities (n, 3) for ``sequences``, row i of the result for sequence i (rows not in any
    batch stay 0); logs progress with token rates."""
    lengths = np.array([len(s) for s in sequences])
    probs = np.zeros((len(sequences), 3), dtype=np.float64)
    rate = Rate(int(sum(lengths[b.rows].sum() for b in batches)), what="tokens")
    for batch in batches:
        logits = forward(model, sequences, batch, pad_token_id=pad_token_id, pooling=pooling,
                         segments=segments)
        probs[batch.rows] = torch.softmax(logits.float(), dim=-1).cpu().numpy()
        rate.update(int(lengths[batch.rows].sum()))
    return probs


def batches_for_model(model, batches, lengths, max_tokens):
    """``batches`` as planned or, where ``model`` cannot run packed rows, the same rows in
    token-budget batches of ``max_tokens`` padded slots (logged)."""
    if not any(b.width == 0 for b in batches):
        return batches
    why = packing_unsupported(model)
    if why is None:
        return batches
    log.warning("packed prediction is not supported for this model (%s): token-budget batches instead", why)
    return plan_rows(lengths, np.concatenate([b.rows for b in batches]), method="token_budget",
                     max_tokens=max_tokens)


def plan_for(settings, lengths, n_pairs):
    """Batches by a model's ``predict`` settings (``fixed`` pads to the model's ``max_length``)."""
    p = settings["predict"]
    return plan_batches(lengths, method=p["method"], batch_size=p["batch_size"],
                        max_tokens=p["max_tokens_per_batch"], max_length=settings.get("max_length"),
                        n_pairs=n_pairs)


def sequences_of(tokens, tta, column="input_ids"):
    """The sequences to score: (A, B) orders, then with ``tta`` the (B, A) orders. With
    ``column="segments"`` their segment ids (None for a cache without them)."""
    if column not in tokens:
        return None
    seqs = list(tokens[column])
    if tta:
        seqs += list(tokens[f"{column}_swap"])
    return seqs


def frame_from_probs(tokens, probs, tta):
    """``a, b, tie`` in (A, B) order and with ``tta`` also ``a_tta, b_tta, tie_tta``: the (B, A)
    prediction mapped back and averaged."""
    n = len(tokens)
    out = pd.DataFrame(probs[:n], columns=PROB_COLUMNS)
    out.insert(0, "id", tokens["id"].to_numpy(dtype=np.int64))
    if tta:
        out[TTA_COLUMNS] = tta_average(probs[:n], probs[n:])
    return out


def predict_frame(model, tokens, *, pad_token_id, settings, tta, forward=forward_batch):
    """Probabilities for the rows of a token cache with one model in this process."""
    seqs = sequences_of(tokens, tta)
    lengths = [len(s) for s in seqs]
    batches = plan_for(settings, lengths, len(tokens) if tta else 0)
    if model is not None:  # a ``forward`` of the caller's own may run without one
        batches = batches_for_model(model, batches, lengths, settings["predict"]["max_tokens_per_batch"])
    probs = run_batches(model, seqs, batches, pad_token_id=pad_token_id,
                        pooling=settings.get("pooling", "auto"), forward=forward,
                        segments=sequences_of(tokens, tta, "segments"))
    return frame_from_probs(tokens, probs, tta)


# --------------------------------------------------------------------------- several devices

def pass_tokens(settings):
    """Token slots of the largest forward pass the ``predict`` settings plan."""
    p = settings["predict"]
    if p["method"] in ("packed", "token_budget"):
        return p["max_tokens_per_batch"]
    return p["batch_size"] * settings["max_length"]


def _load(backbone, adapter_dir, settings, dev):
    from .modeling import compile_backbone, load_for_inference, load_tokenizer

    tokenizer = load_tokenizer(backbone)
    p = settings["predict"]
    model = load_for_inference(backbone, adapter_dir, quantization=settings["quantization"],
                               dtype=settings["dtype"], pad_token_id=tokenizer.pad_token_id,
                               device=dev, attn_implementation=settings.get("attn_implementation"),
                               allow_bf16_emulation=settings.get("allow_bf16_emulation", False),
                               merge_lora=p.get("merge_lora", False), batch_tokens=pass_tokens(settings),
                               longest=settings["max_length"])
    if p.get("compile"):
        compile_backbone(model)
    return model, tokenizer.pad_token_id


def _predict_share(backbone, adapter_dir, settings, dev, sequences, segments, batches, threads):
    """One device's share of the batches: load the model there, run them. Returns the rows
    scored, their probabilities and the seconds taken."""
    if threads:
        torch.set_num_threads(threads)
    if torch.device(dev).type == "cuda":
        torch.cuda.set_device(dev)  # kernels and allocations without an explicit device land here too
    model, pad = _load(backbone, adapter_dir, settings, dev)
    batches = batches_for_model(model, batches, [len(s) for s in sequences],
                                settings["predict"]["max_tokens_per_batch"])
    t0 = time.perf_counter()
    probs = run_batches(model, sequences, batches, pad_token_id=pad, pooling=settings.get("pooling", "auto"),
                        segments=segments)
    rows = np.concatenate([b.rows for b in batches]) if batches else np.array([], dtype=np.int64)
    return rows, probs[rows], time.perf_counter() - t0


def worker_device(dev, visible):
    """(``CUDA_VISIBLE_DEVICES`` for the worker process of device ``dev``, the device it then uses).

    ``dev`` is ``cuda:k`` of the devices this job sees (``visible``, the job's own
    ``CUDA_VISIBLE_DEVICES``, None when unset). The worker sees that one GPU alone, as ``cuda:0``:
    nothing in it can open a CUDA context on another job's or another worker's GPU."""
    dev = torch.device(dev)
    if dev.type != "cuda":
        return None, str(dev)
    index = dev.index or 0
    ids = [d.strip() for d in visible.split(",") if d.strip()] if visible else None
    return (ids[index] if ids else str(index)), "cuda:0"


def _init_worker(cuda_visible):
    """Runs first in a spawned worker, before anything can start CUDA."""
    if cuda_visible is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = cuda_visible
    from .logs import setup_logging

    setup_logging(None)


def _predict_in_workers(devices, shards, *, backbone, adapter_dir, settings, seqs, segs, threads):
    """:func:`_predict_share` of each shard in a spawned worker process of its own (CUDA cannot be
    used in forked children), each pinned to its device before it starts."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    pools, futures = [], []
    try:
        for dev, shard in zip(devices, shards):
            visible, local = worker_device(dev, os.environ.get("CUDA_VISIBLE_DEVICES"))
            pool = ProcessPoolExecutor(1, mp_context=mp.get_context("spawn"), initializer=_init_worker,
                                       initargs=(visible,))
            pools.append(pool)
            futures.append(pool.submit(_predict_share, backbone, adapter_dir, settings, local, seqs, segs, shard,
                                       threads))
        return [f.result() for f in futures]
    finally:
        for pool in pools:
            pool.shutdown(cancel_futures=True)


def predict_on_devices(*, backbone, adapter_dir, tokens, settings, tta, devices=None, threads=None,
                       label="the model"):
    """Probabilities for a token cache, the batches shared over ``devices`` (default: all this job
    may use; one worker process per device when there are several), merged back in row order.
    ``label`` names the model and fold in errors."""
    if devices is None:
        from .modeling import job_devices

        devices = job_devices()
    seqs = sequences_of(tokens, tta)
    segs = sequences_of(tokens, tta, "segments")
    lengths = np.array([len(s) for s in seqs])
    batches = plan_for(settings, lengths, len(tokens) if tta else 0)
    log.info("predicting %d rows%s on %s: %d batches by %s, padding efficiency %.3f", len(tokens),
             " x 2 orders (TTA)" if tta else "", ", ".join(map(str, devices)), len(batches),
             settings["predict"]["method"], padding_efficiency(batches, lengths))
    probs = np.zeros((len(seqs), 3))
    if len(devices) == 1:
        results = [_predict_share(backbone, adapter_dir, settings, devices[0], seqs, segs, batches, threads)]
    else:
        shards = shard_batches(batches, lengths, len(devices))
        log.info("%d shards, token-slot imbalance %.2f%%", len(shards), 100 * shard_imbalance(shards, lengths))
        results = _predict_in_workers(devices, shards, backbone=backbone, adapter_dir=str(adapter_dir),
                                      settings=settings, seqs=seqs, segs=segs, threads=threads)
    for dev, (rows, p, seconds) in zip(devices, results):
        probs[rows] = p
        log.info("%s: %d sequences in %.1f s", dev, len(rows), seconds)
    check_finite(probs, label=label, dtype=settings["dtype"])
    return frame_from_probs(tokens, probs, tta)


def check_finite(probs, *, label, dtype):
    """Stop on non-finite probabilities (overflowing logits, typically float16) before they reach a
    file: one line naming the model and fold, never a NaN in the submission."""
    bad = ~np.isfinite(probs).all(axis=1)
    if bad.any():
        hint = (" float16 overflows past 65504: predict in bfloat16 on a GPU with bf16 tensor cores, or in"
                " float32" if dtype == "float16" else "")
        raise InputError(f"{label}: {int(bad.sum())} of {len(probs)} sequences got non-finite probabilities "
                         f"(the logits overflowed or became NaN, dtype {dtype}).{hint}")


def final_probs(pred, tta):
    """The (n, 3) probabilities a model contributes: TTA-averaged when TTA is on."""
    return pred[TTA_COLUMNS if tta else PROB_COLUMNS].to_numpy()


def average_folds(preds, tta):
    """Average per-fold test predictions (frames with identical ids) into one frame."""
    ids = preds[0]["id"].to_numpy()
    for p in preds[1:]:
        if not np.array_equal(p["id"].to_numpy(), ids):
            raise ValueError("fold predictions cover different test ids")
    mean = np.mean([final_probs(p, tta) for p in preds], axis=0)
    out = pd.DataFrame(mean, columns=PROB_COLUMNS)
    out.insert(0, "id", ids)
    return out
