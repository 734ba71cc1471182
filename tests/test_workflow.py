"""The whole workflow on the small test config, run by Snakemake in temporary directories."""

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from workflow_helpers import (REPO, SNAKEFILE, SNAKEMAKE, assert_resumed_and_matches, planned_jobs,
                              snakemake, write_config)

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
    assert set(metrics["models"]) == {"tiny_gemma2", "tiny_llama", "minilm"}
    for m in metrics["models"].values():
        assert {"log_loss", "log_loss_tta", "accuracy", "folds"} <= set(m) and len(m["folds"]) == 2
    assert metrics["blend"]["temperature"] is not None
    assert metrics["blend"]["weights"] == pytest.approx({"tiny_gemma2": 0.5, "tiny_llama": 0.3, "minilm": 0.2})
    assert 0 < metrics["prior_log_loss"] < 1.2

    info = json.loads((res / "run_info.json").read_text())
    assert info["packages"]["torch"] and info["config"]["cv"]["n_folds"] == 2
    for fold in (0, 1):
        adapter = res / "models" / "tiny_gemma2" / f"fold{fold}" / "adapter"
        assert (adapter / "adapter_config.json").exists()
        tm = json.loads((res / "models" / "tiny_gemma2" / f"fold{fold}" / "train_metrics.json").read_text())
        assert tm["tokens_per_s"] > 0
    # minilm predicts the test set with fold 1 only, as configured
    assert not (res / "test" / "minilm" / "fold0.parquet").exists()
    assert (res / "plots" / "fold_scores.png").stat().st_size > 1000
    assert (res / "logs" / "train" / "tiny_gemma2" / "fold0.log").exists()
    assert "step" in (res / "logs" / "train" / "tiny_gemma2" / "fold0.log").read_text()
    # nothing half-written is left behind
    assert not list(res.rglob("*.tmp"))


def test_second_run_is_identical(run_a, tmp_path):
    write_config(tmp_path)
    snakemake(tmp_path, "-j2", "results/submission.csv")
    for rel in ("results/data/folds.parquet",):
        pd.testing.assert_frame_equal(pd.read_parquet(run_a / rel), pd.read_parquet(tmp_path / rel))
    assert (run_a / "results/submission.csv").read_bytes() == (tmp_path / "results/submission.csv").read_bytes()


def test_nothing_to_do_when_up_to_date(run_a):
    proc = snakemake(run_a, "-n", "results/submission.csv")
    assert planned_jobs(proc) == {}


def test_changing_blend_weights_reruns_only_the_blend(run_a, tmp_path):
    changed = write_config(tmp_path / "cfg", **{"blend.weights": {"tiny_gemma2": 1, "tiny_llama": 1, "minilm": 0}})
    proc = snakemake(run_a, "-n", "results/submission.csv", config=changed)
    assert planned_jobs(proc) == {"blend": 1}


def test_changing_one_models_prediction_reruns_that_model_only(run_a, tmp_path):
    changed = write_config(tmp_path / "cfg", **{"models.tiny_llama.predict": {"tta": False, "batch_size": 4}})
    proc = snakemake(run_a, "-n", "results/submission.csv", config=changed)
    assert planned_jobs(proc) == {"oof": 2, "infer": 2, "average_test": 1, "blend": 1}


def test_changing_max_length_retokenizes_that_model_only(run_a, tmp_path):
    changed = write_config(tmp_path / "cfg", **{"models.minilm.max_length": 40})
    jobs = planned_jobs(snakemake(run_a, "-n", "results/submission.csv", config=changed))
    assert jobs["tokenize"] == 2 and jobs["train"] == 2 and jobs["infer"] == 1


def test_killed_training_job_resumes(run_a, tmp_path):
    """A training job SIGKILLed after a checkpoint: rerunning the same command resumes it and
    ends with the adapter an uninterrupted run produces."""
    write_config(tmp_path)
    target = "results/models/tiny_gemma2/fold0/adapter"
    killed = snakemake(tmp_path, "-j1", target, env={"ARENA_PREF_KILL_AFTER_CHECKPOINT": "3"}, check=False)
    assert killed.returncode != 0
    assert not (tmp_path / target).exists()  # no complete-looking output after the kill
    assert list((tmp_path / "results/checkpoints/tiny_gemma2/fold0").glob("checkpoint-3"))
    snakemake(tmp_path, "-j1", target)
    assert_resumed_and_matches(run_a, tmp_path, target)


def test_bad_input_fails_with_a_clear_message(tmp_path):
    write_config(tmp_path, **{"data.train_csv": "bad.csv"})
    (tmp_path / "bad.csv").write_text(
        "id,prompt,response_a,response_b,winner_model_a,winner_model_b,winner_tie\n"
        '11,"[""hi""]","[""a""]","[""b""]",1,0,0\n'
        "12,\"['hi']\",\"[\"\"a\"\"]\",\"[\"\"b\"\"]\",0,1,0\n")
    proc = snakemake(tmp_path, "-j1", "results/data/train.parquet", check=False)
    assert proc.returncode != 0
    assert "arena-pref: error: file 'bad.csv', row id 12, column 'prompt'" in proc.stderr
    assert "Traceback" not in (tmp_path / "results/logs/parse/train.log").read_text()


def test_lint_and_format():
    proc = subprocess.run([str(SNAKEMAKE), "-s", str(SNAKEFILE), "--lint"], capture_output=True,
                          text=True, cwd=REPO)
    assert proc.returncode == 0 and "Congratulations" in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    fmt = subprocess.run([str(Path(sys.executable).parent / "snakefmt"), "--check", "Snakefile", "workflow/rules"],
                         capture_output=True, text=True, cwd=REPO)
    assert fmt.returncode == 0, fmt.stderr


@pytest.mark.parametrize("preset", sorted(p.name for p in (REPO / "workflow" / "presets").glob("*.yaml")))
def test_preset_dry_run(preset, tmp_path):
    """Real-model presets plan the full DAG (weights from a local path, Kaggle CSVs)."""
    cfg = yaml.safe_load((REPO / "workflow" / "presets" / preset).read_text())
    for key in ("train_csv", "test_csv"):
        path = tmp_path / cfg["data"][key]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("id,prompt,response_a,response_b\n")
    for m in cfg["models"].values():
        if m["backbone"]["kind"] == "path":
            (tmp_path / m["backbone"]["path"]).mkdir(parents=True, exist_ok=True)
    proc = snakemake(tmp_path, "-n", "-j2", config=REPO / "workflow" / "presets" / preset)
    jobs = planned_jobs(proc)
    n_folds = cfg.get("cv", {}).get("n_folds", 5)
    assert jobs["train"] == n_folds * len(cfg["models"]) and jobs["blend"] == 1


def test_profiles_name_existing_rules_and_local_2gpu_plans(tmp_path):
    """Profiles set resources of rules that exist (a typo would silently set nothing), and the
    two-GPU profile caps GPU jobs at two."""
    rules = set(subprocess.run([str(SNAKEMAKE), "-s", str(SNAKEFILE), "--list-rules"], capture_output=True,
                               text=True, cwd=REPO, check=True).stdout.split())
    assert {"train", "oof", "infer", "blend"} <= rules
    for profile in sorted((REPO / "workflow" / "profiles").glob("*/config.yaml")):
        cfg = yaml.safe_load(profile.read_text())
        for key in ("set-resources", "set-threads"):
            assert set(cfg.get(key) or {}) <= rules, (profile, key)
    local = yaml.safe_load((REPO / "workflow/profiles/local-2gpu/config.yaml").read_text())
    assert local["resources"] == {"gpu": 2}
    write_config(tmp_path)
    proc = snakemake(tmp_path, "-n", "--workflow-profile", str(REPO / "workflow/profiles/local-2gpu"),
                     "results/submission.csv")
    assert "train" in planned_jobs(proc)
