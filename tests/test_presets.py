"""Every preset in workflow/presets/ runs on a CPU, through the workflow, before anyone spends a GPU
hour on it: the preset as shipped with only its backbone replaced by a tiny random model of the
same family (same depth, so ``layers_to_transform`` matches) whose tokenizer is set up like the
real one (its special tokens, left padding). Its own dtype, quantization, packing, gradient
checkpointing, LoRA targets and prediction settings run as written.

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
# what a CPU cannot run, and the log line that says what ran instead
CPU_FALLBACKS = {
    "attn_implementation: fastest": "attn_implementation fastest: no fused packed attention on cpu",
    "optimizer: adamw_8bit": "optimizer adamw_8bit needs a GPU; using adamw_torch on CPU",
}


def test_every_preset_has_a_smoke_test():
    assert sorted(p.name for p in PRESETS.glob("*.yaml")) == sorted(TINY)


def preset_with_tiny_backbone(name):
    cfg = yaml.safe_load((PRESETS / name).read_text())
    for model in (m for m in cfg["models"].values() if m.get("kind", "llm") == "llm"):
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


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TINY))
def test_preset_runs_on_cpu(tmp_path, name):
    cfg = preset_with_tiny_backbone(name)
    write_demo_csvs(
        tmp_path / cfg["data"]["train_csv"], tmp_path / cfg["data"]["test_csv"], n_train=24, n_test=4, seed=5
    )
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    snakemake(tmp_path, "-j2", "results/submission.csv", timeout=1500)

    sub = pd.read_csv(tmp_path / "results/submission.csv")
    assert len(sub) == 4 and np.isfinite(sub.drop(columns="id").to_numpy()).all()
    text = (PRESETS / name).read_text()
    assert any(m.get("kind") == "features" for m in cfg["models"].values())  # stacked beside the LLM
    for model, settings in cfg["models"].items():
        if settings.get("kind", "llm") != "llm":
            continue
        train = settings["train"]
        for fold in range(cfg["cv"]["n_folds"]):
            log = (tmp_path / f"results/logs/train/{model}/fold{fold}.log").read_text()
            for setting, line in CPU_FALLBACKS.items():
                if not torch.cuda.is_available():  # the GPU check runs this test on CUDA too (tools/gpu_check.py)
                    assert (line in log) == (setting in text), (setting, log)
            assert "instead" not in log  # packing ran as configured, no fallback to padded batches
            expected = (
                f"{'packed' if train.get('packing') else 'padded'} batches",
                f"mixed precision {settings['dtype']}",
                f"gradient checkpointing {'on' if train.get('gradient_checkpointing') else 'off'}",
            )
            assert all(e in log for e in expected), (expected, log)
            oof = pd.read_parquet(tmp_path / f"results/oof/{model}/fold{fold}.parquet")
            probs = oof[["a", "b", "tie", "a_tta", "b_tta", "tie_tta"]].to_numpy()
            assert np.isfinite(probs).all() and np.allclose(probs[:, :3].sum(1), 1, atol=1e-4)
            predict_log = (tmp_path / f"results/logs/infer/test/{model}/fold{fold}.log").read_text()
            assert "instead" not in predict_log
        backbone = Path(tmp_path / f"results/backbones/{model}")
        assert yaml.safe_load((backbone / "tokenizer_config.json").read_text())["padding_side"] == "left"
