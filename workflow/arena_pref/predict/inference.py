"""Prediction with test-time augmentation (A/B swap), on one device or several.

Rows are cut into forward passes by :mod:`batching` (``predict.method``); packed passes attend
per sequence (:mod:`varlen`) and are pooled per sequence (:mod:`pooling`). With TTA a row's two
orders go through together, and the (B, A) prediction is mapped back and averaged. With several
devices the batches are shared out balanced by token slots, one worker process per device pinned
to it, and merged back in input order; a model split over several devices
(``compute.model_parallel``) runs every batch in the job's own process instead.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

import numpy as np
import torch

from arena_pref.errors import InputError
from arena_pref.logs import Rate
from arena_pref.models.batching import (
    padding_efficiency,
    pass_tokens,
    plan_batches,
    plan_rows,
    shard_batches,
    shard_imbalance,
)
from arena_pref.models.pooling import classify, concat_row, packed_inputs, packing_unsupported, pad_rows, padded_inputs
from arena_pref.predict.prediction_files import frame_from_probs
from arena_pref.settings import DEFAULT_JOB_OPTIONS, JobOptions, PredictSettings

log = logging.getLogger(__name__)


def forward_batch(model, sequences, batch, *, pad_token_id, pooling, segments=None, pack_to=None):
    """Logits for one planned batch (padded to ``batch.width`` or packed when it is 0);
    ``segments``: the sequences' answer segment ids (pooling ``pair``); ``pack_to``: the job's
    pass budget (:func:`pooling.classify`)."""
    dev = next(model.parameters()).device
    seqs = [sequences[i] for i in batch.rows]
    segs = [segments[i] for i in batch.rows] if segments is not None else None
    if batch.width == 0:
        ids, positions, lengths = packed_inputs(seqs, dev)
        return classify(
            model,
            input_ids=ids,
            position_ids=positions,
            lengths=lengths,
            pooling=pooling,
            segments=concat_row(segs, dev) if segs is not None else None,
            pack_to=pack_to,
        )
    ids, mask = padded_inputs(seqs, batch.width, pad_token_id)
    return classify(
        model,
        input_ids=ids.to(dev),
        attention_mask=mask.to(dev),
        pooling=pooling,
        segments=pad_rows(segs, batch.width).to(dev) if segs is not None else None,
    )


@torch.inference_mode()
def run_batches(
    model, sequences, batches, *, pad_token_id, pooling="auto", forward=forward_batch, segments=None, pack_to=None
):
    """Probabilities (n, 3) for ``sequences``, row i of the result for sequence i (rows not in any
    batch stay 0); logs progress with token rates. ``pack_to``: as :func:`forward_batch`'s."""
    lengths = np.array([len(s) for s in sequences])
    probs = np.zeros((len(sequences), 3), dtype=np.float64)
    rate = Rate(int(sum(lengths[b.rows].sum() for b in batches)), what="tokens")
    for batch in batches:
        logits = forward(
            model, sequences, batch, pad_token_id=pad_token_id, pooling=pooling, segments=segments, pack_to=pack_to
        )
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
    return plan_rows(lengths, np.concatenate([b.rows for b in batches]), method="token_budget", max_tokens=max_tokens)


def plan_for(batching, lengths, n_pairs):
    """Batches by a model's :class:`~arena_pref.settings.Batching` (``fixed`` pads to its
    ``max_length``)."""
    return plan_batches(
        lengths,
        method=batching.method,
        batch_size=batching.batch_size,
        max_tokens=batching.max_tokens_per_batch,
        max_length=batching.max_length,
        n_pairs=n_pairs,
    )


def sequences_of(tokens, tta, column="input_ids"):
    """The sequences to score: (A, B) orders, then with ``tta`` the (B, A) orders. With
    ``column="segments"`` their segment ids (None for a cache without them)."""
    if column not in tokens:
        return None
    seqs = list(tokens[column])
    if tta:
        seqs += list(tokens[f"{column}_swap"])
    return seqs


# --------------------------------------------------------------------------- several devices


@dataclass(frozen=True)
class Trained:
    """What a prediction job loads on each of its devices: a backbone with one fold's adapter, and
    how to run them (``options``: with ``model_parallel``, one copy split over the job's GPUs)."""

    backbone: str
    adapter_dir: str
    settings: PredictSettings
    options: JobOptions = DEFAULT_JOB_OPTIONS

    def load(self, dev):
        """The model on ``dev``, or (a model-parallel model; ``dev`` a list of the job's devices)
        split over them."""
        from arena_pref.models.loading import compile_backbone, load_for_inference, load_tokenizer
        from arena_pref.models.placement import job_device_map

        tokenizer = load_tokenizer(self.backbone)
        loading, batching = self.settings.loading, self.settings.batching
        devices = dev if isinstance(dev, (list, tuple)) else [dev]
        split = job_device_map(self.backbone, self.options.model_parallel, loading, devices=devices)
        model = load_for_inference(
            self.backbone,
            self.adapter_dir,
            loading,
            pad_token_id=tokenizer.pad_token_id,
            merge_lora=self.settings.merge_lora,
            device=devices[0],
            device_map=split,
            allow_bf16_emulation=self.options.allow_bf16_emulation,
            batch_tokens=pass_tokens(batching),
            longest=batching.max_length,
        )
        if self.settings.compile:
            compile_backbone(model, packed=batching.method == "packed")
        return model, tokenizer.pad_token_id


def _predict_share(trained, dev, sequences, segments, batches, threads):
    """One device's share of the batches (``dev``: a list of devices for a model split over
    them): load the model there, run them. Returns the rows scored, their probabilities and the
    seconds taken."""
    if threads:
        torch.set_num_threads(threads)
    first = dev[0] if isinstance(dev, (list, tuple)) else dev  # a split model's inputs go to its first
    if torch.device(first).type == "cuda":
        torch.cuda.set_device(first)  # kernels and allocations without an explicit device land here too
    model, pad = trained.load(dev)
    batches = batches_for_model(
        model, batches, [len(s) for s in sequences], trained.settings.batching.max_tokens_per_batch
    )
    t0 = time.perf_counter()
    probs = run_batches(
        model,
        sequences,
        batches,
        pad_token_id=pad,
        pooling=trained.settings.loading.pooling,
        segments=segments,
        pack_to=trained.settings.batching.max_tokens_per_batch,
    )
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


def _init_worker(cuda_visible, log_path):
    """Runs first in a spawned worker, before anything can start CUDA; logs into the job's log
    file too (appending), so the worker's fallbacks and progress are where the user looks."""
    if cuda_visible is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = cuda_visible
    from arena_pref.logs import setup_logging

    setup_logging(log_path, append=True)


def _predict_in_workers(trained, devices, shards, *, seqs, segs, threads):
    """:func:`_predict_share` of each shard in a spawned worker process of its own (CUDA cannot be
    used in forked children), each pinned to its device before it starts."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    from arena_pref.logs import current_log_path

    pools, futures = [], []
    try:
        for dev, shard in zip(devices, shards):
            visible, local = worker_device(dev, os.environ.get("CUDA_VISIBLE_DEVICES"))
            pool = ProcessPoolExecutor(
                1, mp_context=mp.get_context("spawn"), initializer=_init_worker, initargs=(visible, current_log_path())
            )
            pools.append(pool)
            futures.append(pool.submit(_predict_share, trained, local, seqs, segs, shard, threads))
        return [f.result() for f in futures]
    finally:
        for pool in pools:
            pool.shutdown(cancel_futures=True)


def predict_on_devices(
    *,
    backbone,
    adapter_dir,
    tokens,
    settings,
    tta,
    devices=None,
    threads=None,
    label="the model",
    options=DEFAULT_JOB_OPTIONS,
):
    """Probabilities for a token cache with :class:`~arena_pref.settings.PredictSettings`, the
    batches shared over ``devices`` (default: all this job may use; one worker process per device
    when there are several), merged back in row order; with ``options.model_parallel``
    (:class:`~arena_pref.settings.JobOptions`) one copy of the model split over the devices
    runs every batch, in this process. ``label`` names the model and fold in errors."""
    if devices is None:
        from arena_pref.models.loading import job_devices

        devices = job_devices()
    trained = Trained(str(backbone), str(adapter_dir), settings, options)
    seqs = sequences_of(tokens, tta)
    segs = sequences_of(tokens, tta, "segments")
    lengths = np.array([len(s) for s in seqs])
    batches = plan_for(settings.batching, lengths, len(tokens) if tta else 0)
    log.info(
        "predicting %d rows%s on %s: %d batches by %s, padding efficiency %.3f",
        len(tokens),
        " x 2 orders (TTA)" if tta else "",
        ", ".join(map(str, devices)),
        len(batches),
        settings.batching.method,
        padding_efficiency(batches, lengths),
    )
    probs = np.zeros((len(seqs), 3))
    if options.model_parallel is not None:
        results = [_predict_share(trained, list(devices), seqs, segs, batches, threads)]
        devices = ["+".join(map(str, devices))]
    elif len(devices) == 1:
        results = [_predict_share(trained, devices[0], seqs, segs, batches, threads)]
    else:
        shards = shard_batches(batches, lengths, len(devices))
        log.info("%d shards, token-slot imbalance %.2f%%", len(shards), 100 * shard_imbalance(shards, lengths))
        results = _predict_in_workers(trained, devices, shards, seqs=seqs, segs=segs, threads=threads)
    for dev, (rows, p, seconds) in zip(devices, results):
        probs[rows] = p
        log.info("%s: %d sequences in %.1f s", dev, len(rows), seconds)
    check_finite(probs, label=label, dtype=settings.loading.dtype)
    return frame_from_probs(tokens, probs, tta)


def check_finite(probs, *, label, dtype):
    """Stop on non-finite probabilities (overflowing logits, typically float16) before they reach a
    file: one line naming the model and fold, never a NaN in the submission."""
    bad = ~np.isfinite(probs).all(axis=1)
    if bad.any():
        hint = (
            " float16 overflows past 65504: predict in bfloat16 on a GPU with bf16 tensor cores, or in float32"
            if dtype == "float16"
            else ""
        )
        raise InputError(
            f"{label}: {int(bad.sum())} of {len(probs)} sequences got non-finite probabilities "
            f"(the logits overflowed or became NaN, dtype {dtype}).{hint}"
        )
