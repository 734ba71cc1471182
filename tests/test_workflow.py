"""The whole workflow on the small test config, run by Snakemake in temporary directories."""

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from workflow_helpers import (
    REPO,
    SNAKEFILE,
    SNAKEMAKE,
    assert_resumed_and_matches,
    copy_run,
    planned_jobs,
    side_by_side,
    snakemake,
    write_config,
)

pytestmark = pytest.mark.slow


def test_submission_and_outputs(run_a):
    res = run_a / "results"
    sub = pd.read_csv(res / "submission.csv")
    test = pd.read_csv(res / "demo" / "test.csv")
    assert list(sub.columns) == ["id", "winner_model_a", "winner_model_b", "winner_tie"]
    assert sorted(sub["id"]) == sorted(test["id"]) and sub["id"].is_unique
    probs = sub[["winner_model_a", "winner_model_b", "winner_tie"]].to_numpy()
    assert ((probs > 0) & (probs < 1)).all()
    assert abs(probs.sum(axis=1) - 1).max() < 1e-6

    metrics = json.loads((res / "metrics.json").read_text())
    assert set(metrics["models"]) == {"tiny_gemma2", "tiny_llama", "minilm", "pair_features"}
    for m in metrics["models"].values():
        assert {"log_loss", "log_loss_tta", "accuracy", "folds"} <= set(m) and len(m["folds"]) == 2
    assert metrics["blend"]["temperature"] is not None and metrics["blend"]["method"] == "stack"
    assert set(metrics["blend"]["stack_reliance"]) == set(metrics["models"])
    assert 0 < metrics["prior_log_loss"] < 1.2

    info = json.loads((res / "run_info.json").read_text())
    assert info["packages"]["torch"] and info["config"]["cv"]["n_folds"] == 2
    for fold in (0, 1):
        adapter = res / "models" / "tiny_gemma2" / f"fold{fold}" / "adapter"
        assert (adapter / "adapter_config.json").exists()
        tm = json.loads((res / "models" / "tiny_gemma2" / f"fold{fold}" / "train_metrics.json").read_text())
        assert tm["tokens_per_s_this_run"] > 0 and len(tm["step_losses"]) == tm["steps"]
    # minilm predicts the test set with fold 1 only, as configured
    assert not (res / "test" / "minilm" / "fold0.parquet").exists()
    # the pair-feature member: a learner per fold, OOF and test files like the other members'
    for fold in (0, 1):
        assert (res / "models" / "pair_features" / f"fold{fold}" / "learner.joblib").exists()
        assert (res / "oof" / "pair_features" / f"fold{fold}.parquet").exists()
    assert "held-out log loss" in (res / "logs" / "features_fold" / "pair_features" / "fold0.log").read_text()
    assert set(metrics["blend"]["post_rules"]) == {"identical", "empty"}
    assert set(metrics["blend"]["guard"]) == {"prior_oof_log_loss", "blend_log_loss", "beats_prior", "fell_back"}
    assert (res / "plots" / "fold_scores.png").stat().st_size > 1000
    assert (res / "logs" / "train" / "tiny_gemma2" / "fold0.log").exists()
    assert "step" in (res / "logs" / "train" / "tiny_gemma2" / "fold0.log").read_text()
    # nothing half-written is left behind
    assert not list(res.rglob("*.tmp"))


def test_second_run_is_identical(run_a, tmp_path):
    """The same command again gives the same bytes: here fold 1 of the 8-bit Llama and of the
    encoder member is trained and predicted again on a copy of run_a, and the blend redone. The
    4-bit Gemma-2's training is repeated by the resume tests (fold 0 locally, fold 1 under SLURM,
    tests/test_slurm.py), which compare its adapters with run_a's, and the feature member's fold 0
    under SLURM. Dropping the data would rerun everything; tests/test_folds.py checks that the
    folds are deterministic."""
    dropped = [f"results/{part}/{m}/fold1" for m in ("tiny_llama", "minilm") for part in ("models", "checkpoints")]
    dropped += [f"results/{part}/{m}/fold1.parquet" for m in ("tiny_llama", "minilm") for part in ("oof", "test")]
    copy_run(run_a, tmp_path / "w", drop=[*dropped, "results/submission.csv"])
    proc = snakemake(tmp_path / "w", "-j2", "results/submission.csv")
    assert (proc.stdout + proc.stderr).count("rule train:") == 2  # the folds were trained again
    assert (run_a / "results/submission.csv").read_bytes() == (tmp_path / "w/results/submission.csv").read_bytes()


def test_nothing_to_do_when_up_to_date(run_a):
    proc = snakemake(run_a, "-n", "results/submission.csv")
    assert planned_jobs(proc) == {}


def test_changing_blend_weights_reruns_only_the_blend(run_a, tmp_path):
    weights = {"tiny_gemma2": 1, "tiny_llama": 1, "minilm": 0, "pair_features": 1}
    for i, blend in enumerate(({"method": "weights", "weights": weights}, {"method": "stack", "stack_C": 0.3})):
        changed = write_config(tmp_path / f"cfg{i}", **{"blend": blend})
        assert planned_jobs(snakemake(run_a, "-n", "results/submission.csv", config=changed)) == {"blend": 1}


def test_changing_one_models_prediction_reruns_that_model_only(run_a, tmp_path):
    changed = write_config(tmp_path / "cfg", **{"models.tiny_llama.predict": {"tta": False, "batch_size": 4}})
    proc = snakemake(run_a, "-n", "results/submission.csv", config=changed)
    assert planned_jobs(proc) == {"oof": 2, "infer": 2, "average_test": 1, "blend": 1}


def reordered(value):
    """The same mapping with every key order reversed."""
    if isinstance(value, dict):
        return {k: reordered(value[k]) for k in reversed(list(value))}
    return value


def test_reordering_config_keys_reruns_nothing(run_a, tmp_path):
    cfg = yaml.safe_load((run_a / "config.yaml").read_text())
    path = tmp_path / "reordered.yaml"
    path.write_text(yaml.safe_dump(reordered(cfg), sort_keys=False))
    assert list(yaml.safe_load(path.read_text())["models"]) == list(reversed(list(cfg["models"])))
    assert planned_jobs(snakemake(run_a, "-n", "results/submission.csv", config=path)) == {}


def test_flipping_one_models_tta_touches_only_its_test_jobs(run_a, tmp_path):
    """minilm predicts the test set with fold 1 only: turning its TTA off reruns that one infer
    job, its average and the blend; its OOF jobs (both orders always) and other models stay."""
    changed = write_config(tmp_path / "cfg", **{"models.minilm.predict.tta": False})
    assert planned_jobs(snakemake(run_a, "-n", "results/submission.csv", config=changed)) == {
        "infer": 1,
        "average_test": 1,
        "blend": 1,
    }


def test_how_a_job_runs_reruns_nothing(run_a, tmp_path):
    """Save and log intervals and bf16 emulation change how jobs run, not what they make."""
    changed = write_config(
        tmp_path / "cfg",
        **{
            "models.tiny_gemma2.train.save_steps": 7,
            "models.tiny_gemma2.train.logging_steps": 1,
            "models.tiny_llama.allow_bf16_emulation": True,
        },
    )
    assert planned_jobs(snakemake(run_a, "-n", "results/submission.csv", config=changed)) == {}


def test_choosing_a_subset_of_folds_only_reaverages(run_a, tmp_path):
    changed = write_config(tmp_path / "cfg", **{"models.tiny_gemma2.predict.folds": [1]})
    assert planned_jobs(snakemake(run_a, "-n", "results/submission.csv", config=changed)) == {
        "average_test": 1,
        "blend": 1,
    }


def test_changing_the_feature_learner_reruns_its_folds_only(run_a, tmp_path):
    """The pair statistics are computed once per split; a learner setting reruns that member's
    fold jobs, its average and the blend, and its TTA flag only the average and the blend."""
    changed = write_config(tmp_path / "cfg", **{"models.pair_features.C": 2.0})
    assert planned_jobs(snakemake(run_a, "-n", "results/submission.csv", config=changed)) == {
        "features_fold": 2,
        "average_test": 1,
        "blend": 1,
    }
    # a setting the learner does not read would be ignored: it stops the workflow at start instead
    changed = write_config(tmp_path / "cfg1", **{"models.pair_features.learning_rate": 0.5})  # hgb only
    proc = snakemake(run_a, "-n", "results/submission.csv", config=changed, check=False)
    assert proc.returncode != 0
    assert "config.models.pair_features: learner 'logreg' does not read learning_rate" in proc.stdout + proc.stderr
    changed = write_config(tmp_path / "cfg2", **{"models.pair_features.predict.tta": True})
    assert planned_jobs(snakemake(run_a, "-n", "results/submission.csv", config=changed)) == {
        "average_test": 1,
        "blend": 1,
    }


def test_changing_max_length_retokenizes_that_model_only(run_a, tmp_path):
    changed = write_config(tmp_path / "cfg", **{"models.minilm.max_length": 40})
    jobs = planned_jobs(snakemake(run_a, "-n", "results/submission.csv", config=changed))
    assert jobs["tokenize"] == 2 and jobs["train"] == 2 and jobs["infer"] == 1


def test_killed_training_job_resumes(run_a, tmp_path):
    """A training job SIGKILLed after a checkpoint: rerunning the same command resumes it and
    ends with the adapter an uninterrupted run produces. The job's inputs come from a copy of run_a."""
    target = "results/models/tiny_gemma2/fold0/adapter"
    tmp_path = copy_run(run_a, tmp_path / "w", drop=["results/models/tiny_gemma2/fold0", "results/checkpoints"])
    killed = snakemake(tmp_path, "-j1", target, env={"ARENA_PREF_KILL_AFTER_CHECKPOINT": "3"}, check=False)
    assert killed.returncode != 0
    assert not (tmp_path / target).exists()  # no complete-looking output after the kill
    assert list((tmp_path / "results/checkpoints/tiny_gemma2/fold0").glob("checkpoint-3"))
    snakemake(tmp_path, "-j1", target)
    assert_resumed_and_matches(run_a, tmp_path, target)


def test_a_changed_model_is_retrained_not_resumed(run_a, tmp_path):
    """After a change of max_length the train job reruns and starts afresh (its checkpoints were
    made from other token ids, and the log says so): its adapter differs from the old one and
    equals a fresh run's."""
    from safetensors.torch import load_file

    target = "results/models/tiny_gemma2/fold0/adapter"
    rerun = copy_run(run_a, tmp_path / "rerun")
    # a fresh run of the changed model: no checkpoints (its data and backbone copied from run_a)
    fresh = copy_run(run_a, tmp_path / "fresh", drop=["results/models/tiny_gemma2", "results/checkpoints"])
    for workdir in (rerun, fresh):
        write_config(workdir, **{"models.tiny_gemma2.max_length": 80})
    side_by_side((rerun, "-j1", target), (fresh, "-j1", target))
    log = (rerun / "results/logs/train/tiny_gemma2/fold0.log").read_text()
    assert "were made from other tokens: starting afresh" in log and "resuming" not in log
    old, new, fresh = (load_file(str(d / target / "adapter_model.safetensors")) for d in (run_a, rerun, fresh))
    assert all((new[k] - fresh[k]).abs().max() < 1e-6 for k in fresh)
    assert any((new[k] - old[k]).abs().max() > 1e-4 for k in old)


def test_bad_input_fails_with_a_clear_message(tmp_path):
    write_config(tmp_path, **{"data.train_csv": "bad.csv"})
    (tmp_path / "bad.csv").write_text(
        "id,prompt,response_a,response_b,winner_model_a,winner_model_b,winner_tie\n"
        '11,"[""hi""]","[""a""]","[""b""]",1,0,0\n'
        '12,"[\'hi\']","[""a""]","[""b""]",0,1,0\n'
    )
    proc = snakemake(tmp_path, "-j1", "results/data/train.parquet", check=False)
    assert proc.returncode != 0
    line = "arena-pref: error: file 'bad.csv', row id 12, column 'prompt'"
    assert proc.stderr.count("file 'bad.csv', row id 12") == 1 and line in proc.stderr  # once, not twice
    log = (tmp_path / "results/logs/parse/train.log").read_text()
    assert "file 'bad.csv', row id 12, column 'prompt'" in log and "Traceback" not in log


def test_an_unexpected_failure_is_in_the_log_with_its_traceback(run_a, tmp_path):
    """A job failing on something other than the user's input: the log file Snakemake points to
    holds the traceback, the console one line naming the error and the log."""
    import shutil

    shutil.copytree(run_a, tmp_path / "w", symlinks=True)
    checkpoints = sorted(
        (tmp_path / "w" / "results/checkpoints/tiny_gemma2/fold0").glob("checkpoint-*"),
        key=lambda p: int(p.name.split("-")[1]),
    )
    shutil.rmtree(checkpoints[-1])  # resume from the one before, mid-training:
    (checkpoints[-2] / "optimizer.pt").write_bytes(b"damaged on disk")  # marked complete, but unreadable
    target = "results/models/tiny_gemma2/fold0/adapter"
    proc = snakemake(tmp_path / "w", "-j1", "--force", target, check=False)
    assert proc.returncode != 0
    log = (tmp_path / "w" / "results/logs/train/tiny_gemma2/fold0.log").read_text()
    assert "unexpected error" in log and "Traceback (most recent call last)" in log
    errors = [line for line in proc.stderr.splitlines() if line.startswith("arena-pref: unexpected error:")]
    assert len(errors) == 1 and "results/logs/train/tiny_gemma2/fold0.log" in errors[0]
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    "change, message",
    [
        (
            {"models.tiny_gemma2.backbone.num_layer": 2},
            "config.models.tiny_gemma2.backbone: unknown key 'num_layer' (did you mean 'num_layers'?)",
        ),
        (
            {"models.minilm.max_length": 1024},
            "config models.minilm.max_length: 1024 is above the backbone's position limit (512 tokens)",
        ),
        (
            {"models.minilm.template": {"prompt": "question " * 60}},
            "config models.minilm.template: the template and special tokens take",
        ),
        (
            {"models.tiny_llama.lora.target_modules": ["q_proj", "qkv_proj"]},
            "config models.tiny_llama.lora.target_modules: ['qkv_proj'] match no module of the backbone",
        ),
        (
            {"models.tiny_gemma2.lora.layers_to_transform": [3]},
            "config models.tiny_gemma2.lora.layers_to_transform: [3] beyond the backbone's 1 layers",
        ),
    ],
)
def test_config_errors_stop_the_workflow_at_start_in_one_line(tmp_path, change, message):
    write_config(tmp_path, **change)
    proc = snakemake(tmp_path, "-n", "results/submission.csv", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and message in out
    assert len(out.splitlines()) < 10  # one line (and where Snakemake was), not a dump of the schema


def test_every_missing_input_is_named_at_start_by_its_key(tmp_path):
    """Missing CSVs, backbone directories and packages, all in one error before any job runs, each
    by its config key (Snakemake alone names one missing file per run, by rule)."""
    write_config(
        tmp_path,
        **{
            "data.train_csv": "data/train.csv",
            "data.test_csv": "data/test.csv",
            "models.minilm.backbone": {"kind": "path", "path": "models/minilm"},
        },
    )
    (tmp_path / "models" / "minilm").mkdir(parents=True)
    proc = snakemake(tmp_path, "-n", "results/submission.csv", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "3 missing input(s):" in out
    for line in (
        f"config data.train_csv: no file 'data/train.csv' (relative paths start at the working directory, {tmp_path})",
        "config data.test_csv: no file 'data/test.csv'",
        "config models.minilm.backbone: 'models/minilm' has no config.json",
    ):
        assert line in out, out
    assert "MissingInputException" not in out and "Traceback" not in out


def test_an_error_in_merged_config_files_names_them(tmp_path):
    """--configfile A B merges B into A key by key (A's models stay): an error says so."""
    write_config(tmp_path)
    (tmp_path / "more.yaml").write_text("blend: {method: weights, weights: {minilm: 1.0}}\n")
    proc = subprocess.run(
        [
            *SNAKEMAKE,
            "-s",
            str(SNAKEFILE),
            "-d",
            str(tmp_path),
            "-n",
            "results/submission.csv",
            "--configfile",
            str(tmp_path / "config.yaml"),
            str(tmp_path / "more.yaml"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "config blend.weights" in out
    assert f"merged from 2 files, later ones overriding earlier ones key by key: {tmp_path / 'config.yaml'}" in out


def test_outputs_are_readable_by_others(run_a):
    """Outputs written under temporary names get the modes of the umask (not mkstemp's 0600)."""
    import os
    import stat

    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE((run_a / "results/submission.csv").stat().st_mode) == 0o666 & ~mask
    assert stat.S_IMODE((run_a / "results/models/tiny_gemma2/fold0/adapter").stat().st_mode) == 0o777 & ~mask


def test_lint_and_format():
    proc = subprocess.run([*SNAKEMAKE, "-s", str(SNAKEFILE), "--lint"], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0 and "Congratulations" in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    fmt = subprocess.run(
        [str(Path(sys.executable).parent / "snakefmt"), "--check", "Snakefile", "workflow/rules"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert fmt.returncode == 0, fmt.stderr


LLAMA3_8B = dict(
    vocab_size=128256,
    hidden_size=4096,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    intermediate_size=14336,
    max_position_embeddings=8192,
    rope_theta=500000.0,
)


def real_shaped_backbone(directory, arch):
    """config.json of the real model's shape (Gemma-2-9B, Llama-3-8B) and a tokenizer of its family:
    what the start-time checks read, without the weights."""
    from arena_pref.models import loading
    from arena_pref.tools import bench
    from transformers import Gemma2Config, LlamaConfig

    config = Gemma2Config(**bench.GEMMA2_9B) if arch == "gemma2" else LlamaConfig(**LLAMA3_8B)
    config.save_pretrained(directory)
    loading._tiny_tokenizer(["some text to learn from"] * 50, arch, 300, 8192).save_pretrained(directory)


@pytest.mark.parametrize("preset", sorted(p.name for p in (REPO / "workflow" / "presets").glob("*.yaml")))
def test_preset_dry_run(preset, tmp_path):
    """Real-model presets plan the full DAG (weights from a local path, Kaggle CSVs), and their
    LoRA targets, layers, max_length and template pass the start-time checks against the real
    model's shape."""
    cfg = yaml.safe_load((REPO / "workflow" / "presets" / preset).read_text())
    for key in ("train_csv", "test_csv"):
        path = tmp_path / cfg["data"][key]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("id,prompt,response_a,response_b\n")
    llms = [m for m in cfg["models"].values() if m.get("kind", "llm") == "llm"]
    for m in llms:
        real_shaped_backbone(tmp_path / m["backbone"]["path"], "gemma2" if "gemma" in preset else "llama")
    proc = snakemake(tmp_path, "-n", "-j2", config=REPO / "workflow" / "presets" / preset)
    jobs = planned_jobs(proc)
    n_folds = cfg.get("cv", {}).get("n_folds", 5)
    assert jobs["train"] == n_folds * len(llms) and jobs["blend"] == 1
    assert jobs["features_fold"] == n_folds * (len(cfg["models"]) - len(llms)) > 0  # the stacked feature members


def test_profiles_name_existing_rules_and_local_2gpu_plans(tmp_path):
    """Profiles set resources of rules that exist (a typo would silently set nothing), and the
    two-GPU profile caps GPU jobs at two."""
    rules = set(
        subprocess.run(
            [*SNAKEMAKE, "-s", str(SNAKEFILE), "--list-rules"], capture_output=True, text=True, cwd=REPO, check=True
        ).stdout.split()
    )
    assert {"train", "oof", "infer", "blend"} <= rules
    for profile in sorted((REPO / "workflow" / "profiles").glob("*/config.yaml")):
        cfg = yaml.safe_load(profile.read_text())
        for key in ("set-resources", "set-threads"):
            assert set(cfg.get(key) or {}) <= rules, (profile, key)
    local = yaml.safe_load((REPO / "workflow/profiles/local-2gpu/config.yaml").read_text())
    assert local["resources"] == {"gpu": 2}
    write_config(tmp_path)
    proc = snakemake(
        tmp_path, "-n", "--workflow-profile", str(REPO / "workflow/profiles/local-2gpu"), "results/submission.csv"
    )
    assert "train" in planned_jobs(proc)
