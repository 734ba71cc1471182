"""One prepared check for a lent GPU (``make gpu-check``): what a few device minutes should measure.

A GPU is lent for minutes, without a network. This check spends them in order of value, each part
in a process of its own under a time limit, and rewrites its JSON after each part (and after each
entry within the measuring parts), so that a run cut off still reports what it measured:

``predict``  the workflow's prediction path on a random Gemma-2-9B-shaped model with a random LoRA
             adapter, bf16 and 4-bit: padded eager batches (the reference), packed passes with
             per-sequence attention, flex_attention, the adapter in fp32 / 16-bit / merged,
             ``predict.compile``, FlashAttention-4 where installed (liger-kernel off); tokens/s,
             the fraction of the dense bf16 peak, and each entry's largest probability difference
             from the reference;
``grads``    LoRA and head gradients of a tiny Gemma-2 (softcapping, a short sliding window) through
             packed flex passes, without and with gradient checkpointing, against each sequence
             run alone with eager attention (on the CPU: packed per-sequence attention instead);
``train``    our QLoRA step (packed, ``attn_implementation: fastest``, gradient checkpointing)
             against the public baseline's (HF Trainer, stock head, padded batches, eager, no
             liger-kernel), same 4-bit model and rows, a few steps each;
``presets``  every preset's smoke test through the workflow on CUDA (``tests/test_presets.py``);
``liger``    the merged flex entry again with liger-kernel's fused layers, where it is installed
             (liger patches the model classes of its process: a process of its own);
``tiny``     a judge, a distilling student and two prediction workers at tiny size (named tests).

``--cpu`` runs the same parts at tiny size on the CPU, as the test suite does so that this script
cannot rot: ``predict`` and ``train`` run a tiny Gemma-2 in fp32, ``presets`` and ``tiny`` only
collect their tests (the suite runs them itself).

    python -m arena_pref.tools.gpu_check run --budget-s 480 --out-dir docs/gpu-runs
    python -m arena_pref.tools.gpu_check wheels gpu-wheels    # here, first: the wheels the device lacks
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import time
import zipfile
from datetime import date
from pathlib import Path

import numpy as np

log = logging.getLogger("arena_pref.tools.gpu_check")

REPO = Path(__file__).resolve().parents[3]
PARTS = {  # name -> share of the budget (what a part may use of the time left when it starts)
    "predict": 0.5,
    "grads": 0.15,
    "train": 0.5,
    "presets": 0.6,
    "liger": 0.5,
    "tiny": 1.0,
}
PART_TESTS = {
    "presets": ["tests/test_presets.py::test_every_preset_runs_on_cpu"],
    "tiny": [
        "tests/test_judge.py::test_a_judge_runs_beside_a_feature_member_to_the_submission",
        "tests/test_teachers.py::test_a_student_learns_from_teacher_oof_and_pseudo_labels_without_leaks",
        "tests/test_predict.py::test_two_cpu_workers_match_one",
    ],
}
AGREEMENT = {"float32": 1e-4, "bfloat16": 0.05}
"""Largest probability difference from the padded eager reference counted as agreement: fp32
rounding, or bf16 rounding on a random model (0.02-0.035 between methods on the 2026-11-26 H100)."""
DEVICE_IMAGE = Path(__file__).with_name("device_image.yaml")
DEVICE_WHEEL_NAMES = ("transformers", "peft", "bitsandbytes", "snakemake")
DEVICE_OPTIONAL = ("liger-kernel==0.8.5",)
"""Optional backends carried to the device, not installed here (they need a GPU). Not carried:
flash-attn-4, whose nvidia-cutlass-dsl-libs-cu13 wheel alone is 92 MB; the check measures
FlashAttention-4 only where the image has it."""
DEVICE_CUDA = "130"  # the device image's torch is built for CUDA 13.0 (KINDS.md)
DEVICE_PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
WHEELS_LIMIT_MIB = 60


# --------------------------------------------------------------------------- the orchestration


def out_name(device_name, day=None):
    """``<date>_<gpu>.json``, e.g. ``2026-12-03_nvidia-h200.json``."""
    slug = re.sub(r"[^a-z0-9]+", "-", device_name.lower()).strip("-") or "cpu"
    return f"{day or date.today().isoformat()}_{slug}.json"


def device_name(cpu):
    import torch

    if not cpu and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return "cpu"


def run_check(*, budget_s, out_path, cpu, parts=tuple(PARTS)):
    """Run ``parts`` one after another, each in its own process with a share of the time left;
    rewrite ``out_path`` after each part. Returns the report."""
    from arena_pref.atomic import write_json
    from arena_pref.tools.bench import environment

    t0 = time.perf_counter()
    report = {"budget_s": budget_s, "mode": "cpu" if cpu else "gpu", "environment": environment(), "parts": {}}
    with tempfile.TemporaryDirectory() as workdir:
        for name in parts:
            left = budget_s - (time.perf_counter() - t0)
            if left < 5:
                report["parts"][name] = {"status": "skipped", "why": "the budget was spent"}
                write_json(report, out_path)
                continue
            report["parts"][name] = _run_part(name, timeout=left * PARTS[name], workdir=Path(workdir), cpu=cpu)
            report["elapsed_s"] = time.perf_counter() - t0
            write_json(report, out_path)
            log.info("part %s: %s in %.0f s", name, report["parts"][name]["status"], report["parts"][name]["seconds"])
    return report


def _run_part(name, *, timeout, workdir, cpu):
    """One part in a subprocess: its own JSON (rewritten as it measures) is read back whatever
    happens, so a part cut off by its time limit still reports its finished entries."""
    result_path = workdir / f"{name}.json"
    cmd = [
        sys.executable,
        "-m",
        "arena_pref.tools.gpu_check",
        "part",
        name,
        "--result",
        str(result_path),
        "--workdir",
        str(workdir),
    ] + (["--cpu"] if cpu else [])
    t0 = time.perf_counter()
    entry = {}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO)
        entry["status"] = "ok" if proc.returncode == 0 else "failed"
        if proc.returncode != 0:
            entry["error"] = (proc.stdout[-1500:] + proc.stderr[-3000:]).strip()
    except subprocess.TimeoutExpired:
        entry["status"] = f"timed out after {timeout:.0f} s"
    entry["seconds"] = time.perf_counter() - t0
    if result_path.exists():
        entry["result"] = json.loads(result_path.read_text())
    return entry


# --------------------------------------------------------------------------- the parts


class Results(dict):
    """A part's entries, written to its JSON after every entry."""

    def __init__(self, path, **fields):
        super().__init__(fields)
        self.path = path
        self.save()

    def save(self):
        from arena_pref.atomic import write_json

        write_json(dict(self), self.path)


def _random_backbone(workdir, cpu, dtype):
    """The random Gemma-2 the measuring parts share (saved once per check)."""
    import torch

    from arena_pref.models import loading
    from arena_pref.tools import bench

    path = workdir / ("tiny_gemma2" if cpu else "gemma2_9b_shape")
    facts = workdir / f"{path.name}.json"
    if not facts.exists():
        n_params, n_embed = bench.random_gemma2(
            path, shape=bench.TINY_GEMMA2 if cpu else None, dtype=loading.torch_dtype(dtype)
        )
        facts.write_text(json.dumps({"parameters": n_params, "non_embedding": n_params - n_embed}))
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return path, json.loads(facts.read_text())


def predict_part(results_path, workdir, cpu):
    """Prediction entries per precision, each timed over the same rows, compared with padded eager."""
    import torch

    from arena_pref.models.loading import LIGER_SWITCH, loading_with
    from arena_pref.tools import bench

    os.environ[LIGER_SWITCH] = "0"  # the liger part measures it, in a process of its own
    dtype, device, (rows, max_length, batch_size, budget) = _sizes(cpu)
    path, facts = _random_backbone(workdir, cpu, dtype)
    lengths, seqs = _check_rows(cpu, (bench.TINY_GEMMA2 if cpu else bench.GEMMA2_9B)["vocab_size"])
    peak = None if cpu else bench.peak_bf16_flops(torch.cuda.get_device_name(0))
    out = Results(
        results_path,
        rows=rows,
        real_tokens=int(lengths.sum()),
        median_length=float(np.median(lengths)),
        max_length=max_length,
        pack_budget=budget,
        dtype=dtype,
        tolerance=AGREEMENT[dtype],
        peak_bf16_tflops=peak / 1e12 if peak else None,
        by_precision={},
    )
    timing = Timing(seqs, lengths, 2 * facts["non_embedding"], peak, AGREEMENT[dtype])
    for quantization in ("none",) if cpu else ("none", "4bit"):
        label = dtype if quantization == "none" else quantization
        entries = out["by_precision"][label] = {}
        adapter = bench.random_adapter(
            path, workdir / f"adapter_{quantization}", quantization=quantization, dtype=dtype
        )
        load_as = loading_with(quantization=quantization, dtype=dtype)
        for name, entry in _prediction_entries(
            path, adapter, load_as, timing, batch_size=batch_size, budget=budget, device=device
        ):
            entries[name] = entry
            out.save()
            log.info("%s %-28s %s", label, name, entry)
            if name == "padded_eager":
                np.save(workdir / f"reference_{quantization}.npy", timing.reference)
    timing.reference = np.load(workdir / "reference_none.npy")
    out["by_precision"][dtype]["packed_merged_compiled"] = _compiled_entry(
        path,
        workdir / "adapter_none",
        loading_with(dtype=dtype),
        timing,
        batch_size=batch_size,
        budget=budget,
        device=device,
    )
    out.save()
    return out


def _sizes(cpu):
    """(dtype, device, (rows, max_length, batch size, pass budget)) of the measuring parts."""
    if cpu:
        return "float32", "cpu", (24, 256, 4, 512)
    return "bfloat16", "cuda:0", (64, 4096, 8, 16384)


def _check_rows(cpu, vocab_size):
    from arena_pref.tools import bench

    _, _, (rows, max_length, _, _) = _sizes(cpu)
    lengths = bench.arena_lengths(rows, cap=max_length, median=120 if cpu else 700)
    return lengths, bench.random_sequences(lengths, vocab_size)


class Timing:
    """Times a model over the check's rows; the first timed entry is the reference."""

    def __init__(self, seqs, lengths, flops_per_token, peak, tolerance):
        self.seqs, self.lengths, self.flops, self.peak, self.tolerance = seqs, lengths, flops_per_token, peak, tolerance
        self.reference = None

    def __call__(self, model, method, budget, batch_size, *, warmup=True):
        from arena_pref.models import batching, varlen
        from arena_pref.predict import inference
        from arena_pref.tools import bench

        batches = batching.plan_batches(self.lengths, method=method, batch_size=batch_size, max_tokens=budget)
        if warmup:  # allocations, kernel choices and compilation: one pass, untimed
            inference.run_batches(model, self.seqs, batches[:1], pad_token_id=0, pack_to=budget)
        seconds, probs = bench.time_method(model, self.seqs, batches, pad_token_id=0, pack_to=budget)
        tokens_per_s = float(self.lengths.sum() / seconds)
        entry = {
            "tokens_per_s": tokens_per_s,
            "seconds": seconds,
            "passes": len(batches),
            "padding_efficiency": batching.padding_efficiency(batches, self.lengths),
            "attention": varlen.base_implementation(model.config),
        }
        if self.peak:
            entry["fraction_of_bf16_peak"] = self.flops * tokens_per_s / self.peak
        if self.reference is None:
            self.reference = probs
        else:
            entry["max_abs_diff_vs_padded_eager"] = float(np.abs(probs - self.reference).max())
            entry["agrees"] = entry["max_abs_diff_vs_padded_eager"] <= self.tolerance
        return entry


def _merged(path, adapter, load_as, budget, attention, device):
    """The model with ``adapter`` merged into its (dequantized) base, loaded as ``load_as`` says
    (a :class:`~arena_pref.settings.Loading`) on ``device``, for packed passes of ``budget`` tokens
    under ``attention`` (None: the model's default)."""
    from arena_pref.models import loading

    load_as = dataclasses.replace(load_as, attn_implementation=attention or "auto")
    return loading.load_for_inference(
        path, adapter, load_as, pad_token_id=0, merge_lora=True, device=device, batch_tokens=budget, longest=budget
    )


def _prediction_entries(path, adapter, load_as, timing, *, batch_size, budget, device):
    """(name, entry) for each way to predict, most valuable first; one model in memory at a time."""
    import torch

    from arena_pref.models import loading

    timing.reference = None
    model = loading.load_for_inference(path, adapter, load_as, pad_token_id=0, device=device)
    yield "padded_eager", timing(model, "sorted_dynamic", budget, batch_size)
    yield "packed_per_sequence", timing(model, "packed", budget, batch_size)
    flex_ok = loading.flex_attention_unavailable(device, training=False, split=False) is None
    if flex_ok:
        model.config._attn_implementation = "flex_attention"
        yield "packed_flex", timing(model, "packed", budget, batch_size)
        loading.adapters_to(model, torch.float32)
        yield "packed_flex_fp32_adapter", timing(model, "packed", budget, batch_size)
        loading.adapters_to(model, loading.torch_dtype(load_as.dtype))
    del model
    loading.release_memory()
    attention = "flex_attention" if flex_ok else None
    merged = _merged(path, adapter, load_as, budget, attention, device)
    yield (
        "packed_merged",
        {**timing(merged, "packed", budget, batch_size), "merged": not hasattr(merged, "peft_config")},
    )
    del merged
    loading.release_memory()
    if loading.flash_attention_4_unavailable(device) is None:
        fa4 = _merged(path, adapter, load_as, budget, "flash_attention_4", device)
        yield "packed_merged_fa4", timing(fa4, "packed", budget, batch_size)
        del fa4
        loading.release_memory()


def _compiled_entry(path, adapter, load_as, timing, *, batch_size, budget, device):
    """The merged model with ``predict.compile``: last, as compiling a 9B model takes minutes."""
    from arena_pref.models import loading

    attention = (
        "flex_attention" if loading.flex_attention_unavailable(device, training=False, split=False) is None else None
    )
    merged = _merged(path, adapter, load_as, budget, attention, device)
    loading.compile_backbone(merged, packed=True)
    t0 = time.perf_counter()
    entry = timing(merged, "packed", budget, batch_size)
    return {**entry, "with_compile_s": time.perf_counter() - t0}


def liger_part(results_path, workdir, cpu):
    """The predict part's merged flex entry with liger-kernel's fused layers, in 16-bit, compared
    with that part's padded eager reference."""
    import torch

    from arena_pref.models import loading
    from arena_pref.tools import bench

    dtype, device, (_, _, batch_size, budget) = _sizes(cpu)
    out = Results(results_path)
    if why := loading.liger_unavailable_here(device):
        out.update(skipped=why)
        out.save()
        return out
    path, facts = _random_backbone(workdir, cpu, dtype)
    lengths, seqs = _check_rows(cpu, bench.GEMMA2_9B["vocab_size"])
    timing = Timing(
        seqs,
        lengths,
        2 * facts["non_embedding"],
        bench.peak_bf16_flops(torch.cuda.get_device_name(0)),
        AGREEMENT[dtype],
    )
    timing.reference = np.load(workdir / "reference_none.npy")
    model = _merged(path, workdir / "adapter_none", loading.loading_with(dtype=dtype), budget, "flex_attention", device)
    out.update(packed_merged_liger=timing(model, "packed", budget, batch_size))
    out.save()
    return out


def sharp_tiny_model(arch, *, window=8, softcap=2.0, seed=0):
    """A tiny random classifier whose attention is sharp enough for Gemma-2's softcapping to bite,
    with a sliding window shorter than a few dozen tokens (the flex tests' and the grads part's)."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from arena_pref.models import loading

    config = loading.tiny_config(arch=arch, vocab_size=300, max_position=512, pad_token_id=0)
    if arch == "gemma2":
        config.sliding_window, config.attn_logit_softcapping = window, softcap
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_config(config, attn_implementation="eager")
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "q_proj" in name or "k_proj" in name:
                param.mul_(12)
    return model


def grads_part(results_path, workdir, cpu):
    """LoRA and head gradients through packed passes (flex_attention on a GPU), without and with
    gradient checkpointing, against each sequence alone with eager attention, in fp32."""
    import torch

    from arena_pref.models import loading, pooling
    from arena_pref.settings import Lora

    device, impl = ("cpu", "eager") if cpu else ("cuda:0", "flex_attention")
    out = Results(results_path, attention=impl, tolerance=AGREEMENT["float32"], entries={})
    lora = Lora(
        r=4, alpha=8, dropout=0.0, target_modules=("q_proj", "k_proj", "v_proj", "o_proj"), layers_to_transform=None
    )
    rng = np.random.default_rng(1)
    seqs = [rng.integers(3, 300, int(n)).tolist() for n in rng.integers(2, 60, 9)]
    targets = torch.arange(len(seqs), device=device) % 3

    def gradients(checkpointing, packed):
        model = loading.attach_lora(
            sharp_tiny_model("gemma2").to(device), lora, gradient_checkpointing=checkpointing
        ).train()
        with torch.no_grad():  # a non-zero B, so that every LoRA factor gets a gradient
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.normal_(0, 0.5, generator=torch.Generator(device).manual_seed(3))
        if packed:
            model.config._attn_implementation = impl
            ids, positions, lengths = pooling.packed_inputs(seqs, device)
            logits = pooling.classify(model, input_ids=ids, position_ids=positions, lengths=lengths, pack_to=512)
        else:
            logits = torch.cat(
                [
                    pooling.classify(
                        model,
                        input_ids=torch.tensor([s], device=device),
                        attention_mask=torch.ones(1, len(s), device=device),
                    )
                    for s in seqs
                ]
            )
        torch.nn.functional.cross_entropy(logits.float(), targets).backward()
        return {n: p.grad.detach().float().cpu() for n, p in model.named_parameters() if p.requires_grad}

    reference = gradients(False, packed=False)
    for name, checkpointing in (("packed", False), ("packed_checkpointed", True)):
        got = gradients(checkpointing, packed=True)
        diff = max(float((got[n] - reference[n]).abs().max()) for n in reference)
        out["entries"][name] = {
            "max_abs_grad_diff": diff,
            "agrees": diff <= AGREEMENT["float32"],
            "largest_grad": max(float(g.abs().max()) for g in reference.values()),
        }
        out.save()
    return out


def train_part(results_path, workdir, cpu):
    """Our training step against the public baseline's, same 4-bit model and rows."""
    from arena_pref.tools import bench

    dtype = "float32" if cpu else "bfloat16"
    path, _ = _random_backbone(workdir, cpu, dtype)
    rows, max_length, batch_size = (16, 128, 4) if cpu else (32, 1024, 4)
    out = Results(
        results_path, rows=rows, max_length=max_length, batch_size=batch_size, dtype=dtype, quantization="4bit"
    )
    result = bench.bench_training(
        rows=rows,
        max_length=max_length,
        batch_size=batch_size,
        threads=2 if cpu else 8,
        backbone=path,
        dtype=dtype,
        **bench.GPU_TRAINING,
    )
    out.update(result)
    out.save()
    return out


def tests_part(name, results_path, cpu):
    """A part that runs named tests (``--cpu``: collects them, which the suite runs itself)."""
    out = Results(results_path, tests=PART_TESTS[name])
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *PART_TESTS[name]]
    if cpu:
        cmd.append("--collect-only")
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    out.update(
        returncode=proc.returncode,
        collected_only=cpu,
        summary=proc.stdout.strip().splitlines()[-1:],
        tail=(proc.stdout[-2000:] + proc.stderr[-2000:]) if proc.returncode else "",
    )
    out.save()
    if proc.returncode:
        raise SystemExit(f"{name}: pytest exited {proc.returncode}")
    return out


MEASURING = {"predict": predict_part, "grads": grads_part, "train": train_part, "liger": liger_part}


# --------------------------------------------------------------------------- wheels for the device


def collect_device_wheels(out_dir):
    """The wheels the device image lacks (``device_image.yaml``) for :data:`DEVICE_WHEEL_NAMES`,
    for its Python 3.12, with bitsandbytes cut down to the CUDA build the device's torch uses:
    its wheel carries one 4-22 MB library per CUDA release (43 MB), one of which is loaded."""
    from arena_pref.kaggle import wheels

    wheels.collect(
        DEVICE_WHEEL_NAMES,
        wheels.image_exclude(DEVICE_IMAGE),
        out_dir,
        python_version="3.12",
        platform=list(DEVICE_PLATFORMS),
    )
    for wheel in Path(out_dir).glob("bitsandbytes-*.whl"):
        keep_one_cuda_library(wheel, DEVICE_CUDA)
    platforms = [arg for p in DEVICE_PLATFORMS for arg in ("--platform", p)]
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "-q",
            "--no-deps",
            "--only-binary=:all:",
            "--python-version",
            "3.12",
            *platforms,
            "-d",
            str(out_dir),
            *DEVICE_OPTIONAL,
        ],
        check=True,
    )
    carried = list(Path(out_dir).glob("*.whl"))
    size = sum(p.stat().st_size for p in carried)
    if size > WHEELS_LIMIT_MIB * 2**20:
        raise SystemExit(
            f"{out_dir}: {size / 2**20:.1f} MiB of wheels, more than the {WHEELS_LIMIT_MIB} MiB "
            "a device run can carry beside the working tree"
        )
    log.info("%s: %d wheels, %.1f MiB", out_dir, len(carried), size / 2**20)
    return size


def keep_one_cuda_library(wheel, cuda):
    """Rewrite a bitsandbytes wheel without its CUDA libraries other than ``cuda`` (e.g. "130"),
    and drop them from its RECORD. pip installs the result as the same version."""
    pattern = re.compile(r"libbitsandbytes_(cuda|rocm)\d+")
    keep = f"libbitsandbytes_cuda{cuda}"
    tmp = wheel.with_suffix(".tmp")
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as dst:
        for item in src.infolist():
            if pattern.search(item.filename) and keep not in item.filename:
                continue
            data = src.read(item)
            if item.filename.endswith(".dist-info/RECORD"):
                data = "".join(
                    line
                    for line in data.decode().splitlines(keepends=True)
                    if not (pattern.search(line) and keep not in line)
                ).encode()
            dst.writestr(item, data)
    os.replace(tmp, wheel)


# --------------------------------------------------------------------------- command line


def main(argv=None):
    from arena_pref.logs import run_main, setup_logging

    parser = argparse.ArgumentParser(prog="python -m arena_pref.tools.gpu_check", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command")
    check = sub.add_parser("run", help="the whole check")
    check.add_argument("--budget-s", type=float, default=480)
    check.add_argument("--out-dir", default=str(REPO / "docs" / "gpu-runs"))
    check.add_argument("--cpu", action="store_true", help="tiny sizes on the CPU (the test suite's mode)")
    check.add_argument("--parts", nargs="+", choices=list(PARTS), default=list(PARTS))
    part = sub.add_parser("part", help="one part (run by the check in a process of its own)")
    part.add_argument("name", choices=list(PARTS))
    part.add_argument("--result", required=True)
    part.add_argument("--workdir", required=True)
    part.add_argument("--cpu", action="store_true")
    wheels = sub.add_parser("wheels", help="collect here the wheels the device image lacks")
    wheels.add_argument("out_dir")
    args = parser.parse_args(argv)
    if args.command is None:
        parser.error("name a command: run, part or wheels")
    setup_logging(None)
    if args.command == "wheels":
        return run_main(collect_device_wheels)(args.out_dir)
    if args.command == "part":
        result, workdir = Path(args.result), Path(args.workdir)
        if args.name in MEASURING:
            return MEASURING[args.name](result, workdir, args.cpu)
        return tests_part(args.name, result, args.cpu)
    out = Path(args.out_dir) / out_name(device_name(args.cpu))
    report = run_check(budget_s=args.budget_s, out_path=out, cpu=args.cpu, parts=tuple(args.parts))
    log.info("wrote %s", out)
    failed = [n for n, p in report["parts"].items() if p["status"] not in ("ok", "skipped")]
    if failed:
        log.warning("parts not ok: %s", ", ".join(failed))
    return report


if __name__ == "__main__":
    main()
