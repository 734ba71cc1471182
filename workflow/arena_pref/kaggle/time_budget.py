"""Will the test passes fit the time limit? An estimate made before the long run starts.

On Kaggle the notebook is killed at 9 hours, and a run killed at 8h50 leaves nothing. So before
the test passes start, each LoRA model is loaded once on one device and times a sample of its own
test rows (after a warm-up batch): the seconds to start a job (Python and imports), to load the
backbone with an adapter, and the tokens per second of its prediction. With the test rows' token
counts (from the token caches, both orders with TTA) and the number of test passes (folds, or one
averaged adapter), that gives each model's prediction time:

    passes x (start + load + tokens x orders / (tokens per second x copies))

The jobs run one after another, each sharing its rows over ``compute.predict_gpus`` devices, one
copy of the model on each (a linear speed-up assumed; the shards are balanced by tokens). A model
split over several GPUs (``compute.model_parallel``) is one copy whose layers run on its GPUs in
turn: it is timed split, as its jobs run, and its rate is not multiplied by its GPUs. Parsing, tokenizing and the pair
features take seconds to minutes of CPU and are not counted, nor are the blend, the workers a job
starts on several GPUs, or two loads sharing one disk: ``kaggle.margin_h`` keeps room for them.
Where the sum exceeds the limit less that margin (and, in ``run.py``, less the time already
spent), ``run.py`` stops before the passes start, naming what would make it fit.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from arena_pref.settings import DEFAULT_JOB_OPTIONS

log = logging.getLogger(__name__)

WARMUP_BATCHES = 1  # kernels compile and caches warm on the first batch: not timed


def sample_rows(tokens, n, seed=0):
    """``n`` test rows drawn at random (all when fewer): the lengths of the whole set, in small."""
    if len(tokens) <= n:
        return tokens
    return tokens.iloc[np.sort(np.random.default_rng(seed).choice(len(tokens), n, replace=False))]


def calibrate(
    *,
    backbone,
    adapter_dir,
    tokens,
    settings,
    tta,
    options=DEFAULT_JOB_OPTIONS,
    device=None,
    threads=None,
):
    """Seconds to load, and the tokens per second of prediction on ``tokens`` (a sample of the test
    token cache), on one device (with ``threads`` CPU threads, as the prediction jobs), or split
    over the job's devices as its jobs run it (``options.model_parallel``:
    :class:`~arena_pref.settings.JobOptions`)."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    from arena_pref.models.loading import job_devices
    from arena_pref.predict.inference import Trained, batches_for_model, plan_for, run_batches, sequences_of

    split = options.model_parallel is not None
    devices = [device] if device else job_devices()
    if not split:
        devices = devices[:1]
    t0 = time.perf_counter()
    trained = Trained(str(backbone), str(adapter_dir), settings, options)
    model, pad = trained.load(devices if split else devices[0])
    load = time.perf_counter() - t0
    seqs, segs = sequences_of(tokens, tta), sequences_of(tokens, tta, "segments")
    lengths = [len(s) for s in seqs]
    batches = batches_for_model(
        model,
        plan_for(settings.batching, np.array(lengths), len(tokens) if tta else 0),
        lengths,
        settings.batching.max_tokens_per_batch,
    )
    pooling, pack_to = settings.loading.pooling, settings.batching.max_tokens_per_batch
    run_batches(
        model, seqs, batches[:WARMUP_BATCHES], pad_token_id=pad, pooling=pooling, segments=segs, pack_to=pack_to
    )
    timed = batches[WARMUP_BATCHES:] or batches
    t0 = time.perf_counter()
    run_batches(model, seqs, timed, pad_token_id=pad, pooling=pooling, segments=segs, pack_to=pack_to)
    for dev in devices:
        if torch.device(dev).type == "cuda":
            torch.cuda.synchronize(dev)
    seconds = time.perf_counter() - t0
    n_tokens = int(sum(sum(lengths[i] for i in b.rows) for b in timed))
    return {
        "device": "+".join(map(str, devices)),
        "load_s": load,
        "tokens_per_s": n_tokens / max(seconds, 1e-9),
        "timed_tokens": n_tokens,
    }


def model_copies(gpus, model_parallel):
    """Copies of a model that share a prediction job's rows: one per GPU of the job
    (``compute.predict_gpus``), or one for a model split over its GPUs (``model_parallel``)."""
    return 1 if model_parallel is not None else gpus


def model_seconds(measured, *, tokens, passes, tta, copies):
    """A model's prediction time: its passes, each a job that starts, loads and predicts every test
    token (twice with TTA) at the measured rate of one copy times the job's copies
    (:func:`model_copies`)."""
    orders = 2 if tta else 1
    per_pass = measured["startup_s"] + measured["load_s"] + tokens * orders / (measured["tokens_per_s"] * copies)
    return passes * per_pass


def verdict(models, *, limit_h, margin_h):
    """The estimate against the limit less a margin: total seconds, whether it fits, and what to
    change if not."""
    total = sum(m["seconds"] for m in models.values())
    fits = total <= (limit_h - margin_h) * 3600
    advice = None
    if not fits:
        advice = (
            "average each model's fold adapters (predict.average_adapters), predict with fewer folds "
            "(predict.folds) or with the full-data adapter alone (cv.full_fit, blend.test_from: full), "
            "turn TTA off, or lower max_length"
        )
    return {
        "estimate_s": total,
        "estimate_h": total / 3600,
        "limit_h": limit_h,
        "margin_h": margin_h,
        "fits": fits,
        "advice": advice,
    }
