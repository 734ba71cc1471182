"""Model-parallel placement: one backbone split over several GPUs of one machine, by whole layers.

A model too large for one GPU (Gemma-2-9B in float16, 18.5 GB, on Kaggle's 16 GB T4s) is split
by ``compute.model_parallel``: the first GPU holds the embedding and the first decoder layers, the
last GPU the last layers, the final norm and the score head; each decoder layer stays whole on one
GPU (the model's ``_no_split_modules``). The device map is computed before any weight is read,
from the model's skeleton on the meta device (accelerate's ``init_empty_weights``; its shape from
the backbone's config, its quantized layers put in as transformers does before loading), with
the weight sizes transformers itself uses to place a model (``compute_module_sizes`` with the
quantizer: 4-bit and 8-bit weights at their quantized size, the embedding, norms and head in the
compute dtype), and each GPU's limit less the 10% transformers keeps free when it quantizes.

The cut is computed here, not by accelerate's ``get_balanced_memory`` + ``infer_auto_device_map``
(what ``device_map="balanced"`` runs), for two reasons read in their installed source:
``get_balanced_memory`` pads each GPU's even share by 1.25 times the largest leaf module, which
for a 256k-token vocabulary is the embedding (1.8 GB), so in 4-bit it would put 28 of Gemma-2-9B's
42 layers on the first GPU; and ``infer_auto_device_map`` keeps room for the largest layer free
on the first GPU (to stream layers offloaded to the CPU through it), which refuses maps that fit
when that GPU's limit binds. Here the pieces, in forward order, are cut into one contiguous run
per GPU with equal shares of the weights (:func:`partition`). Nothing is ever placed on the CPU
or the disk: a model whose weights do not fit the GPUs stops with one line naming its setting.

Transformers loads a model with such a map and dispatches it with accelerate's hooks, which move
each piece's inputs to that piece's GPU: the layers run on the GPUs in turn (no two at once), in
one process that sees all of them.
"""

from __future__ import annotations

import logging

import torch

from arena_pref.errors import InputError

log = logging.getLogger(__name__)

GIB = 2**30


def skeleton(config, *, quantization, dtype):
    """The ``*ForSequenceClassification`` model of ``config`` on the meta device (no memory), with
    its quantized layers in place as transformers prepares them before loading; and the quantizer
    (None when not quantized)."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForSequenceClassification
    from transformers.quantizers import AutoHfQuantizer

    from arena_pref.models.loading import quantization_config, torch_dtype

    compute_dtype = torch_dtype(dtype)
    with init_empty_weights():
        model = AutoModelForSequenceClassification.from_config(config, dtype=compute_dtype)
    qconf = quantization_config(quantization, compute_dtype)
    quantizer = None
    if qconf is not None:
        quantizer = AutoHfQuantizer.from_config(qconf, pre_quantized=False)
        quantizer.preprocess_model(
            model=model, dtype=compute_dtype, device_map=None, checkpoint_files=None, use_kernels=False
        )
    return model, quantizer


def module_bytes(model, quantizer):
    """Bytes of each module's weights as loaded (``""``: the whole model), by transformers' own
    accounting (quantized weights at their quantized size)."""
    from transformers.integrations.accelerate import compute_module_sizes

    sizes, _ = compute_module_sizes(model, quantizer, only_modules=False)
    return dict(sizes)


def blocks(model):
    """The model's modules in forward order, down to the pieces a device map places: a module the
    model says must stay whole (``_no_split_modules``: its decoder layers) or one without children
    (the embedding, the final norm, the score head); parameters and buffers held directly by a
    module with children are pieces of their own."""
    whole = set(model._no_split_modules or ())

    def walk(prefix, module):
        children = list(module.named_children())
        if type(module).__name__ in whole or not children:
            yield prefix
            return
        for name, _ in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]:
            yield f"{prefix}.{name}" if prefix else name
        for name, child in children:
            yield from walk(f"{prefix}.{name}" if prefix else name, child)

    return list(walk("", model))


def partition(sizes, limits):
    """``{piece: device}``: the pieces (in forward order, ``sizes``: bytes each) cut into one
    contiguous run per device of ``limits``, each device's share of the bytes in proportion to its
    limit (equal limits: equal shares). A piece goes to the device whose share holds its middle,
    so each device's bytes are within half a piece (one decoder layer at most) of its share."""
    devices = sorted(limits)
    total, room = sum(sizes.values()), sum(limits.values())
    ends = [total * sum(limits[e] for e in devices[: i + 1]) / room for i in range(len(devices))]
    placed, before = {}, 0
    for name, size in sizes.items():
        middle = before + size / 2
        placed[name] = devices[min(sum(middle > end for end in ends), len(devices) - 1)]
        before += size
    return placed


def device_map(config, *, quantization, dtype, limits, key):
    """``{module: GPU index}`` placing ``config``'s model over the GPUs of ``limits`` (GPU index ->
    bytes of weights it may hold), each decoder layer whole, the weights balanced (:func:`partition`).
    ``key`` (the config key, e.g. ``models.gemma2_9b.compute.model_parallel``) names the setting
    when the weights do not fit."""
    model, quantizer = skeleton(config, quantization=quantization, dtype=dtype)
    sizes = module_bytes(model, quantizer)
    if quantizer is not None:  # room for the buffers quantizing creates, as transformers keeps
        limits = {d: int(v) for d, v in quantizer.adjust_max_memory(dict(limits)).items()}
    check_fits(sizes[""], limits, quantization=quantization, dtype=dtype, key=key)
    placed = partition({name: sizes[name] for name in blocks(model)}, limits)
    used = device_bytes(placed, sizes)
    over = [d for d in used if used[d] > limits[d]]
    if over:  # the weights fit in sum, but not in whole layers: never offload to the CPU or disk
        raise InputError(
            f"config {key}: the weights of this model ({_gib(sizes[''])} GiB, "
            f"{_what(quantization, dtype)}) do not fit {len(limits)} GPUs in whole layers (GPU {over[0]} "
            f"would hold {_gib(used[over[0]])} GiB of {_gib(limits[over[0]])}): raise gpus or "
            "max_memory_gib"
        )
    return placed


def device_bytes(placed, sizes):
    """Bytes of weights each device of a device map holds."""
    out = {}
    for name, device in placed.items():
        out[device] = out.get(device, 0) + sizes[name]
    return out


def check_fits(total, limits, *, quantization, dtype, key):
    if total > sum(limits.values()):
        raise InputError(
            f"config {key}: the weights of this model need {_gib(total)} GiB ({_what(quantization, dtype)}) and "
            f"{len(limits)} GPUs hold {' + '.join(_gib(v) for v in limits.values())} GiB: raise gpus or "
            "max_memory_gib, or quantize the model (quantization: 4bit)"
        )


def _gib(n):
    return f"{n / GIB:.1f}" if n >= GIB / 10 else f"{n / GIB:.2g}"


def _what(quantization, dtype):
    return dtype if quantization == "none" else f"{quantization} weights, the rest in {dtype}"


def device_limits(parallel, totals):
    """GPU index -> bytes of weights it may hold: ``max_memory_gib``, or its total memory
    (``totals``: bytes per GPU) less ``reserve_gib``
    (:class:`~arena_pref.settings.ModelParallel`)."""
    if parallel.max_memory_gib is not None:
        return {i: int(parallel.max_memory_gib * GIB) for i in range(len(totals))}
    limits = {i: int(t - parallel.reserve_gib * GIB) for i, t in enumerate(totals)}
    if min(limits.values()) <= 0:
        raise InputError(
            f"config {parallel.key}.reserve_gib: {parallel.reserve_gib} GiB is more than a GPU's "
            f"{_gib(min(totals))} GiB"
        )
    return limits


def on_devices(placed, devices):
    """A device map over GPU indices with the job's own devices put in (``devices[i]`` for GPU
    ``i``: ``cuda:i``, or ``cpu`` in a CPU test of the same map)."""
    return {name: devices[d] for name, d in placed.items()}


def job_device_map(backbone, parallel, loading, *, devices):
    """The device map a job of a model-parallel model loads its backbone with (``loading``: its
    :class:`~arena_pref.settings.Loading`), over the job's ``devices``
    (:func:`arena_pref.models.loading.job_devices`); None where the model is not split
    (``parallel`` None) or the job has no GPU (a CPU run loads it whole, logged)."""
    if parallel is None:
        return None
    gpus = [d for d in devices if torch.device(d).type == "cuda"]
    if not gpus:
        log.warning("%s: no GPU in this job: the model is loaded whole on %s", parallel.key, devices[0])
        return None
    if len(gpus) < parallel.gpus:
        raise InputError(
            f"config {parallel.key}.gpus: {parallel.gpus} GPUs, and this job sees {len(gpus)} ({', '.join(gpus)})"
        )
    gpus = gpus[: parallel.gpus]
    totals = [torch.cuda.get_device_properties(torch.device(g)).total_memory for g in gpus]
    return split_map(backbone, parallel, loading, devices=gpus, totals=totals)


def split_map(backbone, parallel, loading, *, devices, totals):
    """The device map of ``backbone`` loaded by ``loading`` (its quantization and dtype) split over
    ``devices`` of ``totals`` bytes of memory each (:func:`device_map`, :func:`device_limits`),
    with those devices put in."""
    from transformers import AutoConfig

    from arena_pref.models.loading import NUM_LABELS

    config = AutoConfig.from_pretrained(backbone, num_labels=NUM_LABELS)
    placed = device_map(
        config,
        quantization=loading.quantization,
        dtype=loading.dtype,
        limits=device_limits(parallel, totals),
        key=parallel.key,
    )
    log.info("%s: layers placed on %s", parallel.key, describe(placed, devices))
    return on_devices(placed, devices)


def describe(placed, devices):
    """Which layers went where, for the log: ``cuda:0 layers 0-18 (+ model.embed_tokens), ...``."""
    parts = []
    for i, dev in enumerate(devices):
        names = [n for n, d in placed.items() if d == i]
        layers = [int(n.rsplit(".", 1)[1]) for n in names if n.rsplit(".", 1)[-1].isdigit()]
        others = [n for n in names if not n.rsplit(".", 1)[-1].isdigit()]
        span = f"layers {min(layers)}-{max(layers)}" if layers else "no layers"
        parts.append(f"{dev} {span}" + (f" (+ {', '.join(others)})" if others else ""))
    return "; ".join(parts)
