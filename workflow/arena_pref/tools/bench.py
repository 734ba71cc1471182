"""Benchmarks behind ``make bench``: prediction methods side by side, and our training step
against the public baseline's, on the same model and rows in one run. Results are JSON.

Row lengths are synthetic and arena-like: log-normal with a median of 700 tokens and sigma 0.9,
so about 3% of rows run past 4,000 tokens (the shape asked for: median about 700, a tail of long
multi-turn rows past 4k; the Kaggle data itself is not available offline to measure), capped at
the model's ``max_length``. Token ids are random: speed does not depend on them.

    python -m arena_pref.tools.bench inference --out results/bench/inference.json
    python -m arena_pref.tools.bench training --out results/bench/training.json
    python -m arena_pref.tools.bench compile --out results/bench/compile.json   # torch.compile vs eager
    python -m arena_pref.tools.bench gpu --out results/bench/gpu_<name>.json   # on a CUDA machine
    python -m arena_pref.tools.bench gpu-train --out results/bench/gpu_train_<name>.json  # ours vs HF, 9B 4-bit
    python -m arena_pref.tools.bench features --out results/bench/features.json   # pair-feature model, CPU
    python -m arena_pref.tools.bench averaging --home DIR --out results/bench/averaging.json   # fold adapters
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import platform
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

from arena_pref import LABELS, PROB_COLUMNS, metrics, settings
from arena_pref.atomic import write_json
from arena_pref.data import demo
from arena_pref.features import pair_features
from arena_pref.logs import setup_logging
from arena_pref.models import batching, loading, varlen
from arena_pref.predict import inference

log = logging.getLogger(__name__)


def arena_lengths(n, *, cap, median=700, sigma=0.9, seed=0, floor=16):
    rng = np.random.default_rng(seed)
    return np.clip(np.round(rng.lognormal(np.log(median), sigma, n)).astype(int), floor, cap)


def random_sequences(lengths, vocab, seed=0):
    rng = np.random.default_rng(seed)
    # start with <bos>=1 like the tiny tokenizer; the rest random ids above the specials
    return [[1] + rng.integers(4, vocab, size=int(n) - 1).tolist() for n in lengths]


def tiny_gemma(out_dir, max_position, hidden_size=64, num_layers=2):
    texts = [f"warm up text {i} " * 5 for i in range(200)]
    loading.build_tiny_backbone(
        out_dir,
        texts,
        arch="gemma2",
        vocab_size=1000,
        hidden_size=hidden_size,
        num_layers=num_layers,
        num_heads=4,
        intermediate_size=2 * hidden_size,
        max_position=max_position,
        seed=0,
    )
    return out_dir


def environment():
    env = {
        "date": date.today().isoformat(),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "cpu_threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
    return env


def time_method(model, seqs, batches, *, pad_token_id, repeats=1, pack_to=None):
    """Best-of-``repeats`` seconds to run ``batches``, and the probabilities they gave
    (``pack_to``: as :func:`arena_pref.predict.inference.run_batches`')."""
    best = float("inf")
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        probs = inference.run_batches(model, seqs, batches, pad_token_id=pad_token_id, pack_to=pack_to)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best, probs


def is_out_of_memory(err):
    return isinstance(err, torch.cuda.OutOfMemoryError) or (
        isinstance(err, RuntimeError) and ("out of memory" in str(err) or "can't allocate memory" in str(err))
    )


def compare_methods(
    models, lengths, seqs, plans, *, pad_token_id, repeats=1, flops_per_token=None, peak_flops=None, reference=None
):
    """The same rows through each ``plans`` entry (name -> (model name, plan_batches kwargs)):
    tokens/s, padding efficiency, passes; with ``flops_per_token`` and ``peak_flops`` the fraction
    of the device's peak reached. Every entry's probabilities are compared with ``reference`` (by
    default the first entry's). A method that runs out of memory is recorded as such
    (``"error"``) and the others go on. Returns the entries and the reference probabilities."""
    real = int(np.sum(lengths))
    # warm-up: first calls allocate, pick kernels (and repack 4-bit CPU weights)
    for model in models.values():
        inference.run_batches(
            model, seqs[:4], batching.plan_batches(lengths[:4], method="packed"), pad_token_id=pad_token_id
        )
    methods = {}
    for name, (model_name, plan) in plans.items():
        model = models[model_name]
        batches = batching.plan_batches(lengths, **plan)
        entry = {
            "padding_efficiency": batching.padding_efficiency(batches, lengths),
            "passes": len(batches),
            **{k: v for k, v in plan.items() if k != "method"},
        }
        if model_name != "model":
            entry["model"] = model_name
        methods[name] = entry
        try:
            seconds, probs = time_method(model, seqs, batches, pad_token_id=pad_token_id, repeats=repeats)
        except Exception as err:
            if not is_out_of_memory(err):
                raise
            entry["error"] = f"out of memory: {str(err).splitlines()[0][:200]}"
            log.warning("%-15s out of memory; going on with the other methods", name)
            loading.release_memory()
            continue
        entry.update(tokens_per_s=real / seconds, seconds=seconds)
        if flops_per_token and peak_flops:
            entry["fraction_of_bf16_peak"] = flops_per_token * entry["tokens_per_s"] / peak_flops
        if reference is None:
            reference = probs
        else:
            entry["max_abs_diff_vs_first"] = float(np.abs(probs - reference).max())
        log.info(
            "%-15s %9.0f tokens/s  padding efficiency %.3f  (%d passes, %.1f s)%s",
            name,
            entry["tokens_per_s"],
            entry["padding_efficiency"],
            len(batches),
            seconds,
            f"  {entry['fraction_of_bf16_peak']:.1%} of bf16 peak" if "fraction_of_bf16_peak" in entry else "",
        )
    return methods, reference


def best_of(methods, baseline="sorted_dynamic"):
    ran = {m: v for m, v in methods.items() if "tokens_per_s" in v}
    if not ran:
        return {"method": None}
    best = max(ran, key=lambda m: ran[m]["tokens_per_s"])
    speedup = ran[best]["tokens_per_s"] / ran[baseline]["tokens_per_s"] if baseline in ran else None
    return {"method": best, f"speedup_vs_{baseline}": speedup}


def method_plans(*, batch_size, max_length, budget, pack_budget, model="model"):
    return {
        "fixed": (model, dict(method="fixed", batch_size=batch_size, max_length=max_length)),
        "sorted_dynamic": (model, dict(method="sorted_dynamic", batch_size=batch_size)),
        "token_budget": (model, dict(method="token_budget", max_tokens=budget)),
        "packed": (model, dict(method="packed", max_tokens=pack_budget)),
    }


def random_adapter(
    backbone,
    out_dir,
    *,
    quantization,
    targets=("q_proj", "k_proj", "v_proj", "o_proj"),
    r=16,
    std=0.02,
    seed=0,
    dtype="float32",
):
    """A LoRA adapter with random, non-zero weights (a trained adapter is not the zero update peft
    starts from), saved as training saves one."""
    model = loading.load_model(backbone, loading.loading_with(quantization=quantization, dtype=dtype), pad_token_id=0)
    lora = {"r": r, "alpha": 2 * r, "dropout": 0.0, "target_modules": list(targets), "layers_to_transform": None}
    model = loading.attach_lora(model, settings.build(settings.Lora, lora))
    torch.manual_seed(seed)
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=std)
    model.save_pretrained(out_dir)
    del model
    loading.release_memory()
    return out_dir


def bench_inference(
    *,
    rows=96,
    max_length=4096,
    batch_size=8,
    budget=16384,
    pack_budget=4096,
    quantization="4bit",
    threads=2,
    repeats=1,
    backbone=None,
):
    """The same rows through the four prediction methods, with a trained-like LoRA adapter on the
    base as the workflow predicts; then packed batches again with the adapter merged into the
    dequantized base (``predict.merge_lora``). Tokens/s and padding efficiency."""
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        path = backbone or tiny_gemma(Path(tmp) / "tiny_gemma2", max_position=max_length)
        tok = loading.load_tokenizer(path)
        adapter = random_adapter(path, Path(tmp) / "adapter", quantization=quantization)
        load_as, pad = loading.loading_with(quantization=quantization), tok.pad_token_id
        models = {
            "model": loading.load_for_inference(path, adapter, load_as, pad_token_id=pad),
            "merged": loading.load_for_inference(path, adapter, load_as, pad_token_id=pad, merge_lora=True),
        }
        lengths = arena_lengths(rows, cap=max_length)
        seqs = random_sequences(lengths, models["model"].config.vocab_size)
        plans = method_plans(batch_size=batch_size, max_length=max_length, budget=budget, pack_budget=pack_budget)
        plans["packed_merged"] = ("merged", dict(method="packed", max_tokens=pack_budget))
        methods, _ = compare_methods(models, lengths, seqs, plans, pad_token_id=tok.pad_token_id, repeats=repeats)
    return {
        "methods": methods,
        "best": best_of(methods),
        "setup": {
            "model": "tiny Gemma-2 (random, hidden 64, 2 layers)" if backbone is None else str(backbone),
            "adapter": "LoRA r 16 on q, k, v, o (random weights)",
            "quantization": quantization,
            "rows": rows,
            "real_tokens": int(lengths.sum()),
            "median_length": float(np.median(lengths)),
            "max_length": max_length,
            "rows_over_4000": int((lengths > 4000).sum()),
            **environment(),
        },
    }


COMPILED_METHODS = ("token_budget", "packed")


def bench_compile(*, rows=64, max_length=1024, budget=8192, pack_budget=2048, threads=2, methods=COMPILED_METHODS):
    """``predict.compile`` against eager on the same rows, fp32 tiny Gemma-2: seconds of a warm
    eager pass, of the first compiled pass (compile time included) and of a second one, for
    padded (token-budget) and packed batches (``methods``)."""
    from transformers import AutoConfig

    torch.set_num_threads(threads)
    lengths = arena_lengths(rows, cap=max_length, seed=5)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = tiny_gemma(Path(tmp) / "tiny_gemma2", max_position=max_length)
        tok = loading.load_tokenizer(path)
        seqs = random_sequences(lengths, AutoConfig.from_pretrained(path).vocab_size)
        for method in methods:
            plan = {"max_tokens": budget if method == "token_budget" else pack_budget}
            batches = batching.plan_batches(lengths, method=method, **plan)
            model = loading.load_model(path, pad_token_id=tok.pad_token_id).eval()
            time_method(model, seqs, batches, pad_token_id=tok.pad_token_id)  # eager warm-up pass
            entry = {}
            for label in ("eager", "compiled_first_pass", "compiled_second_pass"):
                if label == "compiled_first_pass":
                    loading.compile_backbone(model)
                seconds, probs = time_method(model, seqs, batches, pad_token_id=tok.pad_token_id)
                entry[label] = {"seconds": seconds, "tokens_per_s": int(lengths.sum()) / seconds}
                if label == "eager":
                    reference = probs
                else:
                    entry[label]["max_abs_diff_vs_eager"] = float(np.abs(probs - reference).max())
                log.info("%-13s %-21s %6.1f s", method, label, seconds)
            out[method] = entry
    return {
        "methods": out,
        "setup": {
            "model": "tiny Gemma-2 (random, hidden 64, 2 layers), fp32",
            "rows": rows,
            "real_tokens": int(lengths.sum()),
            "max_length": max_length,
            **environment(),
        },
    }


# --------------------------------------------------------------------------- GPU, 9B shape

# Gemma-2-9B's shape (its config.json): speed depends on shapes, not on trained weights
GEMMA2_9B = dict(
    vocab_size=256000,
    hidden_size=3584,
    num_hidden_layers=42,
    num_attention_heads=16,
    num_key_value_heads=8,
    head_dim=256,
    intermediate_size=14336,
    sliding_window=4096,
    query_pre_attn_scalar=256,
    attn_logit_softcapping=50.0,
    final_logit_softcapping=30.0,
    max_position_embeddings=8192,
)

# a Gemma-2 of the same structure at tiny size (sliding window, softcapping), for CPU runs
TINY_GEMMA2 = dict(
    vocab_size=1000,
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    intermediate_size=128,
    sliding_window=64,
    query_pre_attn_scalar=16,
    attn_logit_softcapping=50.0,
    max_position_embeddings=1024,
)

# dense bf16 tensor-core peak, TFLOP/s, by (a substring of) torch.cuda.get_device_name(); the
# more specific names first. From the vendors' data sheets (without sparsity).
PEAK_BF16_TFLOPS = [
    ("H100 PCIe", 756),
    ("H100 NVL", 835),
    ("H100", 989),
    ("H200", 989),
    ("A100", 312),
    ("L40S", 362),
    ("L4", 121),
]


def peak_bf16_flops(device_name):
    for key, tflops in PEAK_BF16_TFLOPS:
        if key in device_name:
            return tflops * 1e12
    return None


def random_gemma2(out_dir, *, shape=None, dtype=torch.bfloat16, seed=0, max_shard_size="2GB"):
    """A randomly initialised ``Gemma2ForSequenceClassification`` of ``shape`` (default: 9B),
    saved with ``save_pretrained`` so it loads (and quantizes) as a downloaded checkpoint would.
    Saved in shards of ``max_shard_size``: each shard passes through host memory on its own, so
    saving a 9B model from the GPU needs a few GB of RAM, not the model's 18."""
    from transformers import Gemma2Config, Gemma2ForSequenceClassification

    config = Gemma2Config(
        **(shape or GEMMA2_9B), num_labels=loading.NUM_LABELS, pad_token_id=0, bos_token_id=2, eos_token_id=1
    )
    torch.manual_seed(seed)
    init_device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(init_device):  # on the GPU: initialising 9B parameters on a CPU takes minutes
        model = Gemma2ForSequenceClassification._from_config(config, dtype=dtype)
    model.save_pretrained(out_dir, max_shard_size=max_shard_size)
    n_params = sum(p.numel() for p in model.parameters())
    n_embed = model.model.embed_tokens.weight.numel()
    del model
    loading.release_memory()
    return n_params, n_embed


def bench_gpu(
    *,
    rows=256,
    max_length=4096,
    batch_size=8,
    budget=32768,
    pack_budget=16384,
    quantizations=("none", "4bit"),
    dtype="bfloat16",
    shape=None,
    peak_tflops=None,
    threads=None,
    attn_implementation="flash_attention_2",
    max_shard_size="2GB",
):
    """The workflow's prediction path on a randomly initialised model of Gemma-2-9B's shape: the
    base in 16-bit and 4-bit with a random LoRA adapter attached (as a trained fold's adapter is),
    flash-attention where it runs (else the model's default, logged), through the four batching
    methods; then packed batches again with the adapter merged (``predict.merge_lora``). Reports
    tokens/s and the fraction of the GPU's bf16 peak reached, taken as 2 x non-embedding parameters
    x tokens/s / peak FLOP/s (the embedding is a lookup, not a product; attention's own FLOPs and
    the adapter's are left out, so this is a lower bound of utilisation). A method that runs out
    of memory is recorded and the others go on."""
    if threads:
        torch.set_num_threads(threads)
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    peak = peak_tflops * 1e12 if peak_tflops else peak_bf16_flops(device)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "gemma2_9b_shape"
        t0 = time.perf_counter()
        n_params, n_embed = random_gemma2(
            path, shape=shape, dtype=loading.torch_dtype(dtype), max_shard_size=max_shard_size
        )
        log.info("random model of %.2fB parameters saved in %.0f s", n_params / 1e9, time.perf_counter() - t0)
        lengths = arena_lengths(rows, cap=max_length)
        seqs = random_sequences(lengths, (shape or GEMMA2_9B)["vocab_size"])
        results = {}
        for quantization in quantizations:
            adapter = random_adapter(
                path, Path(tmp) / f"adapter_{quantization}", quantization=quantization, dtype=dtype
            )
            load_as = loading.loading_with(
                quantization=quantization, dtype=dtype, attn_implementation=attn_implementation
            )
            label = dtype if quantization == "none" else quantization
            results[label] = _bench_precision(
                path,
                adapter,
                load_as,
                lengths,
                seqs,
                n_params - n_embed,
                peak,
                batch_size=batch_size,
                max_length=max_length,
                budget=budget,
                pack_budget=pack_budget,
            )
    return {
        "by_precision": results,
        "setup": {
            "model": "random Gemma-2-9B shape" if shape is None else f"random Gemma-2, {shape}",
            "adapter": "LoRA r 16 on q, k, v, o (random weights)",
            "parameters": n_params,
            "non_embedding_parameters": n_params - n_embed,
            "peak_bf16_tflops": peak / 1e12 if peak else None,
            "rows": rows,
            "real_tokens": int(lengths.sum()),
            "median_length": float(np.median(lengths)),
            "max_length": max_length,
            **environment(),
        },
    }


def _bench_precision(
    path, adapter, load_as, lengths, seqs, non_embedding, peak, *, batch_size, max_length, budget, pack_budget
):
    """One precision of :func:`bench_gpu`: the unmerged adapter through the four methods, then
    packed batches with the adapter merged, one model in memory at a time."""
    timing = dict(pad_token_id=0, flops_per_token=2 * non_embedding, peak_flops=peak)
    model = loading.load_for_inference(path, adapter, load_as, pad_token_id=0)
    attention = varlen.base_implementation(model.config)
    plans = method_plans(batch_size=batch_size, max_length=max_length, budget=budget, pack_budget=pack_budget)
    methods, reference = compare_methods({"model": model}, lengths, seqs, plans, **timing)
    del model
    loading.release_memory()
    merged = loading.load_for_inference(
        path, adapter, load_as, pad_token_id=0, merge_lora=True, batch_tokens=pack_budget, longest=max_length
    )
    is_merged = not hasattr(merged, "peft_config")
    merged_plan = {"packed_merged": ("merged", dict(method="packed", max_tokens=pack_budget))}
    methods.update(compare_methods({"merged": merged}, lengths, seqs, merged_plan, reference=reference, **timing)[0])
    methods["packed_merged"]["merged"] = is_merged  # False: memory was short, the unmerged adapter ran
    out = {"methods": methods, "best": best_of(methods), "attention": attention}
    if torch.cuda.is_available():
        out["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
        torch.cuda.reset_peak_memory_stats()
    del merged
    loading.release_memory()
    return out


BENCH_LORA = {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}


def bench_model(*, quantization, batch_size, dtype="float32", attn_implementation="auto", **train):
    """The :class:`~arena_pref.settings.ModelConfig` a config with these values gives."""
    model = {
        "backbone": {"kind": "tiny"},
        "quantization": quantization,
        "dtype": dtype,
        "attn_implementation": attn_implementation,
        "lora": BENCH_LORA,
        "train": {"epochs": 1, "batch_size": batch_size, "lr": 2e-4, "warmup_steps": 2, "save_steps": 10_000, **train},
    }
    return settings.model_config(model)


OUR_TRAINING = {  # name -> (packing, a token budget holding a fixed-row batch's rows on average)
    "ours_length_grouped": (False, False),
    "ours_packed": (True, False),
    "ours_packed_token_budget": (True, True),
}


def bench_training(
    *,
    rows=256,
    max_length=1024,
    batch_size=8,
    quantization="4bit",
    threads=2,
    backbone=None,
    dtype="float32",
    gradient_checkpointing=False,
    attn_implementation="auto",
    variants=tuple(OUR_TRAINING),
):
    """Tokens/s of our train step against the public baseline's setup (HF Trainer, stock head,
    ``DataCollatorWithPadding``, random order, the model's default attention), same model, rows,
    batch size, dtype and gradient checkpointing, one epoch each. ``attn_implementation`` is
    ours alone (the baseline's notebooks ran the default)."""
    from transformers import AutoConfig

    torch.set_num_threads(threads)
    lengths = arena_lengths(rows, cap=max_length, seed=1)
    labels = np.random.default_rng(2).integers(0, 3, rows)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        path = backbone or tiny_gemma(tmp / "tiny_gemma2", max_position=max_length)
        seqs = random_sequences(lengths, AutoConfig.from_pretrained(path).vocab_size)
        out = {
            "hf_trainer_padded": _baseline_training(
                path,
                seqs,
                labels,
                tmp / "baseline",
                quantization=quantization,
                batch_size=batch_size,
                dtype=dtype,
                gradient_checkpointing=gradient_checkpointing,
            )
        }
        budget = int(np.ceil(lengths.mean() * batch_size))
        for name in variants:
            packing, use_budget = OUR_TRAINING[name]
            ours = bench_model(
                quantization=quantization,
                batch_size=batch_size,
                packing=packing,
                max_tokens_per_batch=budget if use_budget else None,
                dtype=dtype,
                attn_implementation=attn_implementation,
                gradient_checkpointing=gradient_checkpointing,
            )
            out[name] = _our_training(path, seqs, labels, tmp / name, ours, threads=threads)
    for k, v in out.items():
        log.info("%-25s %8.0f tokens/s (%.1f s)", k, v["tokens_per_s"], v["seconds"])
    best = max(out, key=lambda m: out[m]["tokens_per_s"])
    return {
        "methods": out,
        "best": {
            "method": best,
            "speedup_vs_hf_trainer": out[best]["tokens_per_s"] / out["hf_trainer_padded"]["tokens_per_s"],
        },
        "setup": {
            "model": "tiny Gemma-2 (random, hidden 64, 2 layers)" if backbone is None else str(backbone),
            "quantization": quantization,
            "dtype": dtype,
            "gradient_checkpointing": gradient_checkpointing,
            "attn_implementation": attn_implementation,
            "rows": rows,
            "batch_size": batch_size,
            "real_tokens": int(lengths.sum()),
            "max_length": max_length,
            **environment(),
        },
    }


GPU_TRAINING = dict(
    quantization="4bit", gradient_checkpointing=True, attn_implementation="fastest", variants=("ours_packed",)
)
"""The QLoRA comparison on a GPU: the public baseline's step against ours (packed, the fastest
attention), both in 4-bit with gradient checkpointing."""


def bench_gpu_training(*, rows=64, max_length=1024, batch_size=4, threads=8):
    """:func:`bench_training` with :data:`GPU_TRAINING` on a random Gemma-2-9B shape in bf16, a
    few steps each."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "gemma2_9b_shape"
        random_gemma2(path)
        return bench_training(
            rows=rows,
            max_length=max_length,
            batch_size=batch_size,
            threads=threads,
            backbone=path,
            dtype="bfloat16",
            **GPU_TRAINING,
        )


def _baseline_training(
    path, seqs, labels, workdir, *, quantization, batch_size, dtype="float32", gradient_checkpointing=False
):
    """The public baseline: stock model forward and loss, padded batches in random order."""
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    from arena_pref.train import targets, trainer

    tok = loading.load_tokenizer(path)
    os.environ[loading.LIGER_SWITCH] = "0"  # the baseline's own layers (it runs before ours patch them)
    try:
        model = loading.load_model(
            path,
            loading.loading_with(quantization=quantization, dtype=dtype),
            pad_token_id=tok.pad_token_id,
            training=True,
        )
    finally:
        del os.environ[loading.LIGER_SWITCH]
    model = loading.attach_lora(
        model,
        settings.build(settings.Lora, {**BENCH_LORA, "layers_to_transform": None}),
        gradient_checkpointing=gradient_checkpointing,
    )
    args = TrainingArguments(
        output_dir=str(workdir),
        per_device_train_batch_size=batch_size,
        learning_rate=2e-4,
        warmup_steps=2,
        num_train_epochs=1,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(),
        optim=trainer.optimizer_name("adamw_8bit"),
        seed=0,
        logging_steps=10,
        bf16=dtype == "bfloat16",
        fp16=dtype == "float16",
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=trainer.RowDataset(seqs, targets.hard(labels)),
        data_collator=DataCollatorWithPadding(tok),
    )
    t0 = time.perf_counter()
    result = trainer.train()
    seconds = time.perf_counter() - t0
    return {
        "tokens_per_s": int(sum(map(len, seqs))) / seconds,
        "seconds": seconds,
        "train_loss": result.training_loss,
        "attention": model.config._attn_implementation,
    }


def _our_training(path, seqs, labels, workdir, model, *, threads):
    from arena_pref.train import targets, trainer

    tokens = {"id": np.arange(len(seqs)), "input_ids": seqs, "input_ids_swap": seqs}
    metrics = trainer.train_fold(
        backbone=path,
        tokens=tokens,
        targets=targets.hard(labels),
        settings=model.training,
        options=model.options,
        ckpt_dir=workdir / "checkpoints",
        adapter_dir=workdir / "adapter",
        metrics_path=workdir / "metrics.json",
        threads=threads,
    )
    max_tokens = model.training.train.max_tokens_per_batch
    return {
        "tokens_per_s": metrics["tokens_per_s_this_run"],
        "seconds": metrics["runtime_s_this_run"],
        "steps": metrics["steps"],
        "peak_memory_mb": metrics["peak_memory_mb"],
        "train_loss": metrics["train_loss"],
        "attention": metrics["attention"],
        **({"max_tokens_per_batch": max_tokens} if max_tokens else {}),
    }


# --------------------------------------------------------------------------- pair features


def synthetic_answer(rng, words, chars):
    """An answer of about ``chars`` characters: sentences of random ``words``, with markdown
    (header, list, bold, code block, table, link) and a refusal drawn at rates like chat answers'."""
    parts = [demo.REFUSALS[rng.integers(len(demo.REFUSALS))]] if rng.random() < 0.08 else []
    if rng.random() < 0.4:
        parts.append(f"## {' '.join(rng.choice(words, 3)).capitalize()}")
    n_words = max(1, chars // 6)  # about six characters a word, its space included
    sentences = np.array_split(rng.choice(words, n_words), max(1, n_words // 12))
    parts += [" ".join(s).capitalize() + "." for s in sentences]
    if rng.random() < 0.5:
        parts.append("\n".join(f"- **{w}**: {' '.join(rng.choice(words, 6))}" for w in rng.choice(words, 4)))
    if rng.random() < 0.2:
        parts.append("```python\nresult = model.fit(data)\nprint(result)\n```")
    if rng.random() < 0.1:
        parts.append(
            "| name | value |\n|---|---|\n" + "\n".join(f"| {w} | {i} |" for i, w in enumerate(rng.choice(words, 3)))
        )
    if rng.random() < 0.1:
        parts.append("See https://example.org/docs or [the guide](https://example.org/guide).")
    return "\n\n".join(parts)


def synthetic_pairs(rows, *, median_chars=1000, sigma=0.6, seed=0):
    """A parsed table (:func:`arena_pref.data.kaggle_csv.read_parsed`'s columns) of ``rows`` arena-like
    rows: answers of log-normal length (sentences of median ``median_chars``; with the markdown
    about 1,500 characters on average), 15% of rows with two turns
    and 5% with three, 3% null answer turns; the longer answer usually wins, similar lengths
    tie. Words are the demo data's (:mod:`arena_pref.data.demo`)."""
    rng = np.random.default_rng(seed)
    words = np.array(sorted({w.strip(".,").lower() for _, _, facts in demo.TOPICS for f in facts for w in f.split()}))
    turns = rng.choice([1, 2, 3], size=rows, p=[0.8, 0.15, 0.05])
    table = {"id": np.arange(rows, dtype=np.int64), "prompt": [], "response_a": [], "response_b": []}
    for n in turns:
        table["prompt"].append([" ".join(rng.choice(words, 12)) + "?" for _ in range(n)])
        for side in ("response_a", "response_b"):
            lengths = np.round(rng.lognormal(np.log(median_chars / n), sigma, n)).astype(int)
            table[side].append([None if rng.random() < 0.03 else synthetic_answer(rng, words, k) for k in lengths])
    total = [[sum(len(t or "") for t in r) for r in table[side]] for side in ("response_a", "response_b")]
    margin = np.log1p(total[0]) - np.log1p(total[1]) + rng.logistic(0, 0.5, rows)
    table["label"] = np.where(np.abs(margin) < 0.3, 2, np.where(margin > 0, 0, 1))
    return pd.DataFrame(table)


def bench_features(*, rows=57_000, threads=2):
    """The pair-feature model at Kaggle scale on synthetic rows (:func:`synthetic_pairs`): seconds
    of :func:`arena_pref.features.pair_features.pair_stats` (once), and for each learner (the schema's defaults)
    of ``fit`` (both orders of the rows) and of ``predict`` in both orders (as a member with
    test-time averaging predicts), with rows/s. The in-sample log loss beside the prior's says
    that something was learnt."""
    from threadpoolctl import threadpool_limits

    parsed = synthetic_pairs(rows)
    with threadpool_limits(threads):
        t0 = time.perf_counter()
        stats = pair_features.pair_stats(parsed)
        stats_s = time.perf_counter() - t0
        learners = {name: _bench_learner(name, stats, parsed["label"], stats_s) for name in pair_features.LEARNERS}
    answers = [sum(len(t or "") for t in r) for side in ("response_a", "response_b") for r in parsed[side]]
    return {
        "pair_stats_s": stats_s,
        "pair_stats_rows_per_s": rows / stats_s,
        "learners": learners,
        "prior_log_loss": metrics.prior_log_loss(parsed["label"]),
        "setup": {
            "rows": rows,
            "threads": threads,
            "stat_columns": len(pair_features.stat_columns(stats)),
            "design_columns": pair_features.design_matrix(stats.head(1)).shape[1],
            "mean_answer_chars": float(np.mean(answers)),
            "multi_turn_rows": int((stats["n_turns"] > 1).sum()),
            **environment(),
        },
    }


def _bench_learner(name, stats, labels, stats_s):
    learner = settings.model_config({"kind": "features", "learner": name}).learner
    seconds = {}
    t0 = time.perf_counter()
    fitted = pair_features.fit(stats, labels, learner)
    seconds["fit"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    probs = metrics.tta_average(pair_features.predict(fitted, stats), pair_features.predict(fitted, stats, swap=True))
    seconds["predict"] = time.perf_counter() - t0
    seconds["total_with_stats"] = stats_s + seconds["fit"] + seconds["predict"]
    log.info(
        "%s: fit %.1f s, predict %.1f s, with the statistics %.1f s",
        name,
        seconds["fit"],
        seconds["predict"],
        seconds["total_with_stats"],
    )
    return {
        "seconds": seconds,
        "rows_per_s": {k: len(stats) / v for k, v in seconds.items()},
        "log_loss_in_sample": metrics.log_loss(labels, probs),
        "settings": dataclasses.asdict(learner),
    }


def bench_averaging(*, home, workdir, jobs=2):
    """One averaged adapter per LoRA model against its per-fold test passes, from a trained run
    ``home`` (the demo's: it writes the test labels): each LoRA member's and the submission's test
    log loss, and the prediction jobs' seconds. OOF cannot score an averaged adapter, which has seen
    every fold's rows; the test labels can."""
    import subprocess
    import sys

    from arena_pref.kaggle.bundle import predict_config
    from arena_pref.tools.realdata import read_test_labels

    home, workdir = Path(home).resolve(), Path(workdir)
    raw = settings.validate(json.loads((home / "results/run_info.json").read_text())["config"])
    y, ids = read_test_labels(home / "results/demo/test_labels.csv")
    llm = [m for m, v in raw["models"].items() if v["kind"] == "llm"]
    tiny = {m: home / "results/backbones" / m for m in llm if raw["models"][m]["backbone"]["kind"] == "tiny"}
    result = {"home": str(home), "n_test": int(len(ids)), "environment": environment()}
    for variant in ("per_fold", "averaged"):
        for m in llm:
            raw["models"][m]["predict"]["average_adapters"] = variant == "averaged"
        run = workdir / variant
        run.mkdir(parents=True, exist_ok=True)
        config = predict_config(
            raw,
            models_dir=home / "results/models",
            blender=home / "results/blender.json",
            test_csv=home / raw["data"]["test_csv"],
            backbones=tiny,
        )
        (run / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        subprocess.run(
            [
                sys.executable,
                "-m",
                "snakemake",
                "-s",
                str(Path(__file__).resolve().parents[3] / "Snakefile"),
                "-d",
                str(run),
                "--configfile",
                str(run / "config.yaml"),
                "-j",
                str(jobs),
                "results/submission.csv",
            ],
            check=True,
            capture_output=True,
        )
        result[variant] = _scored_run(run, llm, y, ids)
        log.info("%s: %s", variant, result[variant])
    return result


def _scored_run(run, models, y, ids):
    """Test log loss of each model's test file and of the submission, and the infer jobs' seconds."""
    scores = {}
    for m in models:
        frame = pd.read_parquet(run / "results/test" / f"{m}.parquet").set_index("id").loc[ids]
        scores[m] = metrics.log_loss(y, frame[PROB_COLUMNS].to_numpy())
    sub = pd.read_csv(run / "results/submission.csv").set_index("id").loc[ids]
    benchmarks = list((run / "results/benchmarks/infer").rglob("*.tsv"))
    return {
        "test_log_loss": scores,
        "submission_test_log_loss": metrics.log_loss(y, sub[list(LABELS)].to_numpy()),
        "infer_jobs": len(benchmarks),
        "infer_seconds": float(sum(pd.read_csv(f, sep="\t")["s"].iloc[0] for f in benchmarks)),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m arena_pref.tools.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "what", choices=["inference", "training", "compile", "gpu", "gpu-train", "features", "averaging"]
    )
    parser.add_argument("--home", help="averaging: the working directory of a trained run (the demo's)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--rows", type=int)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--quantization",
        choices=["4bit", "8bit", "none"],
        help="base weights (inference, training: default 4bit; gpu: default none and 4bit)",
    )
    parser.add_argument(
        "--peak-tflops", type=float, help="gpu: the device's dense bf16 peak, where the built-in table does not know it"
    )
    args = parser.parse_args(argv)
    setup_logging(None)
    rows = {"rows": args.rows} if args.rows else {}
    if args.what == "gpu":
        if not torch.cuda.is_available():
            parser.error("the gpu benchmark needs a CUDA device")
        quantizations = {"quantizations": (args.quantization,)} if args.quantization else {}
        result = bench_gpu(peak_tflops=args.peak_tflops, threads=args.threads, **quantizations, **rows)
    elif args.what == "gpu-train":
        if not torch.cuda.is_available():
            parser.error("the gpu-train benchmark needs a CUDA device")
        result = bench_gpu_training(threads=args.threads, **rows)
    elif args.what == "compile":
        result = bench_compile(threads=args.threads, **rows)
    elif args.what == "features":
        result = bench_features(threads=args.threads, **rows)
    elif args.what == "averaging":
        if not args.home:
            parser.error("averaging needs --home, the working directory of a trained run")
        with tempfile.TemporaryDirectory() as workdir:
            result = bench_averaging(home=args.home, workdir=workdir)
    else:
        bench = bench_inference if args.what == "inference" else bench_training
        result = bench(threads=args.threads, quantization=args.quantization or "4bit", **rows)
    write_json(result, args.out)
    log.info("wrote %s", args.out)


if __name__ == "__main__":
    main()
