"""Benchmarks behind ``make bench``: prediction methods side by side, and our training step
against the public baseline's, on the same model and rows in one run. Results are JSON.

Row lengths are synthetic and arena-like: log-normal with a median of 700 tokens and sigma 0.9,
so about 3% of rows run past 4,000 tokens (the shape asked for: median about 700, a tail of long
multi-turn rows past 4k; the Kaggle data itself is not available offline to measure), capped at
the model's ``max_length``. Token ids are random: speed does not depend on them.

    python -m arena_pref.bench inference --out results/bench/inference.json
    python -m arena_pref.bench training --out results/bench/training.json
"""

from __future__ import annotations

import argparse
import logging
import platform
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch

from . import modeling, predict
from .io import write_json
from .logs import setup_logging

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
    modeling.build_tiny_backbone(out_dir, texts, arch="gemma2", vocab_size=1000, hidden_size=hidden_size,
                                 num_layers=num_layers, num_heads=4, intermediate_size=2 * hidden_size,
                                 max_position=max_position, seed=0)
    return out_dir


def environment():
    env = {"date": date.today().isoformat(), "torch": torch.__version__, "machine": platform.machine(),
           "cpu_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
    return env


def time_method(model, seqs, batches, *, pad_token_id, repeats=1):
    """Best-of-``repeats`` seconds to run ``batches``, and the probabilities they gave."""
    best = float("inf")
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        probs = predict.run_batches(model, seqs, batches, pad_token_id=pad_token_id)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best, probs


def bench_inference(*, rows=96, max_length=4096, batch_size=8, budget=16384, pack_budget=4096,
                    quantization="4bit", threads=2, repeats=1, backbone=None):
    """The same rows through the four prediction methods; tokens/s and padding efficiency."""
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        path = backbone or tiny_gemma(Path(tmp) / "tiny_gemma2", max_position=max_length)
        tok = modeling.load_tokenizer(path)
        model = modeling.load_model(path, quantization=quantization, dtype="float32",
                                    pad_token_id=tok.pad_token_id).eval()
        lengths = arena_lengths(rows, cap=max_length)
        seqs = random_sequences(lengths, model.config.vocab_size)
        real = int(lengths.sum())
        plans = {
            "fixed": dict(method="fixed", batch_size=batch_size, max_length=max_length),
            "sorted_dynamic": dict(method="sorted_dynamic", batch_size=batch_size),
            "token_budget": dict(method="token_budget", max_tokens=budget),
            "packed": dict(method="packed", max_tokens=pack_budget),
        }
        # warm-up: first calls allocate and pick kernels
        predict.run_batches(model, seqs[:4], predict.plan_batches(lengths[:4], method="packed"),
                            pad_token_id=tok.pad_token_id)
        methods, reference = {}, None
        for name, plan in plans.items():
            batches = predict.plan_batches(lengths, **plan)
            seconds, probs = time_method(model, seqs, batches, pad_token_id=tok.pad_token_id, repeats=repeats)
            if reference is None:
                reference = probs
            methods[name] = {"padding_efficiency": predict.padding_efficiency(batches, lengths),
                             "tokens_per_s": real / seconds, "seconds": seconds, "passes": len(batches),
                             **{k: v for k, v in plan.items() if k != "method"}}
            if name == "packed":
                methods[name]["max_abs_diff_vs_fixed"] = float(np.abs(probs - reference).max())
            log.info("%-15s %8.0f tokens/s  padding efficiency %.3f  (%d passes, %.1f s)", name,
                     methods[name]["tokens_per_s"], methods[name]["padding_efficiency"], len(batches), seconds)
    base = methods["sorted_dynamic"]["tokens_per_s"]
    best = max(methods, key=lambda m: methods[m]["tokens_per_s"])
    return {"methods": methods,
            "best": {"method": best, "speedup_vs_sorted_dynamic": methods[best]["tokens_per_s"] / base},
            "setup": {"model": "tiny Gemma-2 (random, hidden 64, 2 layers)" if backbone is None else str(backbone),
                      "quantization": quantization, "rows": rows, "real_tokens": real,
                      "median_length": float(np.median(lengths)), "max_length": max_length,
                      "rows_over_4000": int((lengths > 4000).sum()), **environment()}}


def bench_training(*, rows=256, max_length=1024, batch_size=8, quantization="4bit", threads=2, backbone=None):
    """Tokens/s of our train step against the public baseline's setup (HF Trainer, stock head,
    ``DataCollatorWithPadding``, random order), same model, rows and batch size, one epoch each."""
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    from . import train

    torch.set_num_threads(threads)
    lengths = arena_lengths(rows, cap=max_length, seed=1)
    labels = np.random.default_rng(2).integers(0, 3, rows)
    settings = {"quantization": quantization, "dtype": "float32", "pooling": "auto",
                "lora": {"r": 16, "alpha": 32, "dropout": 0.0,
                         "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"], "layers_to_transform": None},
                "train": {"epochs": 1, "batch_size": batch_size, "grad_accum": 1, "lr": 2e-4, "warmup_steps": 2,
                          "optimizer": "adamw_8bit", "save_steps": 10_000, "swap_augment": False, "seed": 0,
                          "logging_steps": 10}}
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        path = backbone or tiny_gemma(tmp / "tiny_gemma2", max_position=max_length)
        tok = modeling.load_tokenizer(path)
        from transformers import AutoConfig

        seqs = random_sequences(lengths, AutoConfig.from_pretrained(path).vocab_size)
        n_tokens = int(lengths.sum())

        # the public baseline: stock model forward and loss, padded batches in random order
        model = modeling.load_model(path, quantization=settings["quantization"], dtype="float32",
                                    pad_token_id=tok.pad_token_id)
        model = modeling.attach_lora(model, settings["lora"], quantized=quantization != "none")
        args = TrainingArguments(output_dir=str(tmp / "baseline"), per_device_train_batch_size=batch_size,
                                 learning_rate=2e-4, warmup_steps=2, num_train_epochs=1, report_to="none",
                                 save_strategy="no", disable_tqdm=True, use_cpu=not torch.cuda.is_available(),
                                 optim=train.optimizer_name("adamw_8bit"), seed=0, logging_steps=10)
        trainer = Trainer(model=model, args=args, train_dataset=train.RowDataset(seqs, labels),
                          data_collator=DataCollatorWithPadding(tok))
        t0 = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - t0
        out["hf_trainer_padded"] = {"tokens_per_s": n_tokens / seconds, "seconds": seconds}
        del trainer, model

        tokens = {"id": np.arange(rows), "input_ids": seqs, "input_ids_swap": seqs}
        for name, packing in [("ours_length_grouped", False), ("ours_packed", True)]:
            ours = {**settings, "train": {**settings["train"], "packing": packing}}
            metrics = train.train_fold(backbone=path, tokens=tokens, labels=labels, settings=ours,
                                       ckpt_dir=tmp / f"{name}_ckpt", adapter_dir=tmp / f"{name}_adapter",
                                       metrics_path=tmp / f"{name}.json", threads=threads)
            out[name] = {"tokens_per_s": metrics["tokens_per_s"], "seconds": metrics["runtime_s"],
                         "peak_memory_mb": metrics["peak_memory_mb"]}
    for k, v in out.items():
        log.info("%-20s %8.0f tokens/s (%.1f s)", k, v["tokens_per_s"], v["seconds"])
    best = max(out, key=lambda m: out[m]["tokens_per_s"])
    return {"methods": out,
            "best": {"method": best,
                     "speedup_vs_hf_trainer": out[best]["tokens_per_s"] / out["hf_trainer_padded"]["tokens_per_s"]},
            "setup": {"model": "tiny Gemma-2 (random, hidden 64, 2 layers)" if backbone is None else str(backbone),
                      "quantization": quantization, "rows": rows, "batch_size": batch_size,
                      "real_tokens": n_tokens, "max_length": max_length, **environment()}}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m arena_pref.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["inference", "training"])
    parser.add_argument("--out", required=True)
    parser.add_argument("--rows", type=int)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quantization", default="4bit", choices=["4bit", "8bit", "none"])
    args = parser.parse_args(argv)
    setup_logging(None)
    kw = {"threads": args.threads, "quantization": args.quantization}
    if args.rows:
        kw["rows"] = args.rows
    result = bench_inference(**kw) if args.what == "inference" else bench_training(**kw)
    write_json(result, args.out)
    log.info("wrote %s", args.out)


if __name__ == "__main__":
    main()
