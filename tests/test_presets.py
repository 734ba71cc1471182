"""Every preset in workflow/presets/ runs on a CPU, through the workflow, before anyone spends a GPU
hour on it: the preset as shipped with only its backbone replaced by a tiny random model of the
same family (same depth, so ``layers_to_transform`` matches) whose tokenizer is set up like the
real one (its special tokens, left padding). Its own dtype, quantization, packing, gradient
checkpointing, LoRA targets and prediction settings run as written.

The presets differ only in their LoRA model and ``compute`` (checked below), so one workflow run
holds every preset's LoRA model side by side, each named after its preset, with the shared feature
members, folds and stacked blend: one parse, one set of feature members and one blend instead of
one per preset, and the two CPU cores busy with two presets' jobs at a time. ``compute`` is the
T4 preset's (``predict_gpus: 2`` is the one code path there) with one thread per job
(``threads`` is speed only).

Settings a CPU cannot honour, and what runs instead (CPU_FALLBACKS: each logged by the job, and
listed in docs/gpu.md): attn_implementation fastest picks the model's default attention (eager for
Gemma-2, SDPA for Llama, attending per packed sequence); adamw_8bit falls back to 32-bit AdamW;
predict_gpus 2 runs on the one CPU device; bfloat16 and float16 mixed precision run through
torch's CPU autocast, and 4-bit and 8-bit layers through bitsandbytes' CPU kernels.
"""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from arena_pref.data.demo import write_demo_csvs
from workflow_helpers import REPO, snakemake

PRESETS = REPO / "workflow" / "presets"
# preset -> the tiny backbone standing in for its model: same family and number of layers
TINY = {
    "gemma2-9b-qlora.yaml": {"arch": "gemma2", "num_layers": 42},
    "gemma2-9b-t4.yaml": {"arch": "gemma2", "num_layers": 42},
    "llama3-8b-8bit.yaml": {"arch": "llama", "num_layers": 32},
}
COMPUTE_FROM = "gemma2-9b-t4.yaml"
# what a CPU cannot run, and the log line that says what ran instead
CPU_FALLBACKS = {
    "attn_implementation: fastest": "attn_implementation fastest: no fused packed attention on cpu",
    "optimizer: adamw_8bit": "optimizer adamw_8bit needs a GPU; using adamw_torch on CPU",
}


def test_every_preset_has_a_smoke_test():
    assert sorted(p.name for p in PRESETS.glob("*.yaml")) == sorted(TINY)


def is_llm(model):
    return model.get("kind", "llm") == "llm"


def preset_with_tiny_backbone(name):
    cfg = yaml.safe_load((PRESETS / name).read_text())
    for model in filter(is_llm, cfg["models"].values()):
        model["backbone"] = {
            "kind": "tiny",
            "vocab_size": 600,
            "hidden_size": 64,
            "num_heads": 4,
            "intermediate_size": 128,
            "max_position": model["max_length"],
            **TINY[name],
        }
    # two folds of 12 rows (3 optimizer steps each at the presets' batch 2 x grad_accum 2), not the
    # preset's five: neither the fold count nor the row count is a code path, and five folds of 60
    # rows cost the suite 19 minutes on 2 cores (2026-12-03)
    cfg["cv"] = {**cfg["cv"], "n_folds": 2}
    return cfg


def model_name(preset):
    return Path(preset).stem.replace("-", "_")


def every_preset_in_one_config():
    """{preset: its LoRA model's name} and one config running all of them (module docstring)."""
    presets = {name: preset_with_tiny_backbone(name) for name in sorted(TINY)}
    shared = {name: {k: v for k, v in cfg.items() if k not in ("models", "compute")} for name, cfg in presets.items()}
    features = {name: {m: s for m, s in cfg["models"].items() if not is_llm(s)} for name, cfg in presets.items()}
    for name in presets:  # what the merge keeps once must be the same in every preset
        assert shared[name] == shared[COMPUTE_FROM] and features[name] == features[COMPUTE_FROM], name
    llms = {}
    for name, cfg in presets.items():
        (llm,) = filter(is_llm, cfg["models"].values())
        llms[model_name(name)] = llm
    config = {**shared[COMPUTE_FROM], "models": {**llms, **features[COMPUTE_FROM]}}
    # one torch thread per job: a job of the presets' 2 or 4 threads takes both cores, and
    # Snakemake then runs the jobs one at a time (threads are speed only)
    config["compute"] = {**presets[COMPUTE_FROM]["compute"], "threads": 1}
    return config


@pytest.mark.slow
def test_every_preset_runs_on_cpu(tmp_path):
    cfg = every_preset_in_one_config()
    write_demo_csvs(
        tmp_path / cfg["data"]["train_csv"], tmp_path / cfg["data"]["test_csv"], n_train=24, n_test=4, seed=5
    )
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    snakemake(tmp_path, "-j2", "results/submission.csv", timeout=1500)

    sub = pd.read_csv(tmp_path / "results/submission.csv")
    assert len(sub) == 4 and np.isfinite(sub.drop(columns="id").to_numpy()).all()
    assert sum(not is_llm(m) for m in cfg["models"].values()) == 2  # stacked beside the LLMs
    for preset in sorted(TINY):
        model = model_name(preset)
        settings, text = cfg["models"][model], (PRESETS / preset).read_text()
        for fold in range(cfg["cv"]["n_folds"]):
            log = (tmp_path / f"results/logs/train/{model}/fold{fold}.log").read_text()
            for setting, line in CPU_FALLBACKS.items():
                if not torch.cuda.is_available():  # the GPU check runs this test on CUDA too (tools/gpu_check.py)
                    assert (line in log) == (setting in text), (preset, setting, log)
            assert "instead" not in log  # packing ran as configured, no fallback to padded batches
            expected = (
                f"{'packed' if settings['train'].get('packing') else 'padded'} batches",
                f"mixed precision {settings['dtype']}",
                f"gradient checkpointing {'on' if settings['train'].get('gradient_checkpointing') else 'off'}",
            )
            assert all(e in log for e in expected), (preset, expected, log)
            oof = pd.read_parquet(tmp_path / f"results/oof/{model}/fold{fold}.parquet")
            probs = oof[["a", "b", "tie", "a_tta", "b_tta", "tie_tta"]].to_numpy()
            assert np.isfinite(probs).all() and np.allclose(probs[:, :3].sum(1), 1, atol=1e-4)
            predict_log = (tmp_path / f"results/logs/infer/test/{model}/fold{fold}.log").read_text()
            assert "instead" not in predict_log
        backbone = Path(tmp_path / f"results/backbones/{model}")
        assert yaml.safe_load((backbone / "tokenizer_config.json").read_text())["padding_side"] == "left"
