"""Multi-stage training (init.from): a LoRA model whose folds start from an earlier stage's adapter
of the same fold, as the 1st and 2nd places trained. Config checks, the start itself, the
checkpoint fingerprint, and a two-stage chain through the workflow on a copy of run_a."""

import re

import numpy as np
import pytest
import torch
import yaml
from arena_pref.errors import InputError
from arena_pref.settings import to_params
from arena_pref.train import checkpoints, targets, trainer
from safetensors.torch import load_file
from test_teachers import FEATURES, LLM, config_with
from test_train import SETTINGS, run, tokens  # noqa: F401 (a fixture)
from workflow_helpers import SMALL, copy_run, model_settings, planned_resources, snakemake

STAGE_2 = {**LLM, "init": {"from": "stage1"}}


@pytest.mark.parametrize(
    "models, error",
    [
        (
            {"stage2": {**LLM, "init": {"from": "stage_1"}}, "stage1": LLM},
            r"^config models.stage2.init.from: no model named 'stage_1' in this config \(did you mean 'stage1'\?\)",
        ),
        ({"stage2": {**LLM, "init": {"from": "stage2"}}}, "^config models.stage2.init.from: a model cannot learn from"),
        (
            {"stage2": STAGE_2, "stage1": FEATURES},
            "^config models.stage2.init.from: 'stage1' is a features model; a stage starts from a LoRA model's",
        ),
        (
            {"stage2": STAGE_2, "stage1": {**LLM, "lora": {**LLM["lora"], "r": 4}}},
            "^config models.stage2.init.from: 'stage1' has another lora",
        ),
        (
            {"stage2": STAGE_2, "stage1": {**LLM, "backbone": {"kind": "tiny", "arch": "llama"}}},
            "^config models.stage2.init.from: 'stage1' has another backbone",
        ),
        (
            {"stage2": {**STAGE_2, "full_fit": True}, "stage1": LLM},
            "^config models.stage2.init.from: this model trains a full-data adapter .* give models.stage1.full_fit",
        ),
        (
            {"stage2": STAGE_2, "stage1": {**LLM, "init": {"from": "stage2"}}},
            r"the teachers and stages form a cycle \(stage2 -> stage1 -> stage2\)",
        ),
    ],
)
def test_stage_mistakes_are_one_line_naming_the_key(models, error):
    with pytest.raises(InputError, match=error):
        config_with(models)


def test_a_first_stage_may_be_a_teacher_only():
    """A stage-1 model with member: false is trained for the stage after it, never submitted; a
    stage may change the LoRA dropout (not the adapter's shape)."""
    stage2 = {**STAGE_2, "lora": {**LLM["lora"], "dropout": 0.1}}
    config = config_with({"stage2": stage2, "stage1": {**LLM, "member": False}})
    assert config.members == ["stage2"] and config.models["stage2"].training.init_from == "stage1"
    # without init the params hold no init_from: folds trained before the key existed do not rerun
    assert "init_from" not in to_params(config.models["stage1"].training)
    assert to_params(config.models["stage2"].training)["init_from"] == "stage1"


def test_training_starts_from_the_earlier_adapter_and_the_fingerprint_covers_it(
    tiny_backbone_dir,
    tokens,  # noqa: F811
    tmp_path,
):
    run(tiny_backbone_dir, tokens, tmp_path / "one")
    run(tiny_backbone_dir, tokens, tmp_path / "two", settings={**SETTINGS, "train": {**SETTINGS["train"], "seed": 1}})
    stage1 = tmp_path / "one/a/adapter"
    model = model_settings(**SETTINGS)
    fresh, _, _ = trainer._trainable_model(tiny_backbone_dir, model.training, model.options)
    trainer.start_from_adapter(fresh, stage1)
    saved = load_file(str(stage1 / "adapter_model.safetensors"))
    state = dict(fresh.named_parameters())
    set_weights = [n for n, p in state.items() if p.requires_grad]
    assert len(set_weights) == len(saved)  # every LoRA weight and the score head
    for name in set_weights:
        key = name.replace(".default", "").replace("modules_to_save.", "")
        assert torch.equal(state[name].detach().float(), saved[key].float()), name
    # the checkpoints of a stage started from one adapter are not resumed from another's
    rows = targets.hard(np.array([0, 1]))
    base = dict(settings=[1], ids=[1, 2], targets=rows, sequences=[[1], [2]], backbone=tiny_backbone_dir)
    prints = [checkpoints.fingerprint(**base, init=init) for init in (None, stage1, tmp_path / "two/a/adapter")]
    assert len({p.get("init") for p in prints}) == 3 and prints[0].keys() < prints[1].keys()


@pytest.mark.slow
def test_a_two_stage_chain_runs_through_the_workflow(run_a, tmp_path):
    """run_a's 8-bit Llama is stage 1; stage 2, the same model and LoRA, starts each fold from
    stage 1's adapter of the same fold, never from one that saw that fold's labels, and is blended
    beside the others."""
    workdir = copy_run(run_a, tmp_path / "w")
    cfg = yaml.safe_load(SMALL.read_text())
    cfg["models"]["stage2"] = {**cfg["models"]["tiny_llama"], "init": {"from": "tiny_llama"}}
    (workdir / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    plan = planned_resources(snakemake(workdir, "-n", "-j2", "results/submission.csv"))
    assert {rule for rule, w, _ in plan if w.get("model") != "stage2"} <= {"blend"}  # stage 1 is run_a's
    snakemake(workdir, "-j2", "results/submission.csv")
    res = workdir / "results"
    for k in (0, 1):
        log = (res / f"logs/train/stage2/fold{k}.log").read_text()
        started = re.findall(r"training starts from the earlier stage's adapter (\S+)", log)
        assert started == [f"results/models/tiny_llama/fold{k}/adapter"], started
    metrics = yaml.safe_load((res / "metrics.json").read_text())
    assert "stage2" in metrics["models"] and metrics["models"]["stage2"]["log_loss"] > 0
    # the full-data stage starts from stage 1's full-data adapter
    cfg["models"]["tiny_llama"]["full_fit"] = cfg["models"]["stage2"]["full_fit"] = True
    (workdir / "full.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    plan = snakemake(workdir, "-n", "results/submission.csv", config=workdir / "full.yaml")
    full = [block for block in plan.stdout.split("\n\n") if "rule train:" in block and "part=full" in block]
    stage2_full = next(b for b in full if "model=stage2" in b)
    assert "results/models/tiny_llama/full/adapter" in stage2_full
    assert not re.search(r"results/models/tiny_llama/fold\d/adapter", stage2_full)
