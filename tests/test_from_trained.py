"""Runs from trained models: a config without train.csv predicts with an earlier run's folds and
blender (the Kaggle route), training nothing, and reproduces that run's submission."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import yaml
from workflow_helpers import copy_run, planned_jobs, snakemake

pytestmark = pytest.mark.slow

PROBS = ["winner_model_a", "winner_model_b", "winner_tie"]


def trained_run_config(run_a, workdir, **predict_changes):
    """The predict-only config of the small run ``run_a``, in ``workdir`` with only a test.csv."""
    from arena_pref.kaggle.bundle import predict_config

    raw = json.loads((run_a / "results" / "run_info.json").read_text())["config"]
    for model, change in predict_changes.items():
        raw["models"][model]["predict"].update(change)
    workdir.mkdir(parents=True, exist_ok=True)
    shutil.copy(run_a / "results" / "demo" / "test.csv", workdir / "test.csv")
    config = predict_config(
        raw,
        models_dir=run_a / "results" / "models",
        blender=run_a / "results" / "blender.json",
        test_csv="test.csv",
        backbones={m: run_a / "results" / "backbones" / m for m in ("tiny_gemma2", "tiny_llama")},
    )
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def test_a_run_from_trained_models_trains_nothing(run_a, tmp_path):
    trained_run_config(run_a, tmp_path)
    jobs = planned_jobs(snakemake(tmp_path, "-n", "results/submission.csv"))
    # tiny_gemma2 and tiny_llama predict with both folds, minilm with fold 1, pair_features fold 0
    assert jobs == {
        "parse": 1,
        "tokenize": 3,
        "infer": 5,
        "features": 1,
        "features_predict": 1,
        "average_test": 4,
        "submit": 1,
    }


@pytest.fixture(scope="module")
def predicted(offline_run):
    """The workflow directory of the Kaggle bundle's offline run (conftest.py): a run from run_a's
    trained models, the time estimate first and then the submission."""
    return offline_run / "work"


def test_a_run_from_trained_models_reproduces_the_submission(run_a, predicted):
    home = pd.read_csv(run_a / "results" / "submission.csv")
    here = pd.read_csv(predicted / "results" / "submission.csv")
    assert list(here["id"]) == list(home["id"])
    np.testing.assert_allclose(here[PROBS].to_numpy(), home[PROBS].to_numpy(), atol=1e-5, rtol=0)
    assert not (predicted / "results" / "data" / "train.parquet").exists()
    assert "from the blender" in (predicted / "results" / "logs" / "submit.log").read_text()


def test_averaging_one_models_adapters_reruns_only_that_model(predicted, tmp_path):
    """Averaging one model's fold adapters: that model predicts once, and nothing else reruns."""
    workdir = copy_run(predicted, tmp_path / "w")
    config = yaml.safe_load((workdir / "config.yaml").read_text())
    config["models"]["tiny_gemma2"]["predict"]["average_adapters"] = True
    (workdir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    bundled = predicted.parent / "input" / "my-bundle" / "Snakefile"  # the workflow that made the run
    jobs = planned_jobs(snakemake(workdir, "-n", "results/submission.csv", snakefile=bundled))
    assert jobs == {"average_adapters": 1, "infer": 1, "average_test": 1, "submit": 1}
    snakemake(workdir, "-j2", "results/submission.csv", snakefile=bundled)
    averaged = json.loads((workdir / "results/models/tiny_gemma2/average/adapter/adapter_config.json").read_text())
    assert averaged["r"] == 2 * 4
    assert "2 fold adapters averaged" in (workdir / "results/logs/average_adapters/tiny_gemma2.log").read_text()


def test_the_time_estimate_is_close_to_the_test_passes_wall_time(predicted):
    """The estimate (each model timed on a sample of its test rows) against the wall time the
    prediction jobs then take: within a factor of 1.6 on CPU (docs/kaggle.md)."""
    import csv

    estimate = json.loads((predicted / "results" / "time_estimate.json").read_text())
    assert estimate["fits"] and set(estimate["models"]) == {"tiny_gemma2", "tiny_llama", "minilm"}
    assert estimate["models"]["tiny_gemma2"]["passes"] == 2 and estimate["models"]["minilm"]["passes"] == 1
    measured = sum(
        float(next(csv.DictReader(open(f), delimiter="\t"))["s"])
        for f in (predicted / "results" / "benchmarks" / "infer").rglob("*.tsv")
    )
    assert 1 / 1.6 < estimate["estimate_s"] / measured < 1.6, (estimate["estimate_s"], measured)
