"""Full-data models (cv.full_fit, blend.test_from) through the workflow, on a copy of run_a: the
8-bit Llama also trains on every labelled row, and its full-data adapter predicts the test rows."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import yaml
from arena_pref.blend.blender import apply_blender, read_blender
from arena_pref.blend.post_rules import row_kinds
from arena_pref.data.kaggle_csv import read_parsed
from arena_pref.predict.prediction_files import average_folds
from workflow_helpers import SMALL, copy_run, planned_jobs, snakemake

pytestmark = pytest.mark.slow

MODEL = "tiny_llama"  # TTA off: its full-data pass is its prediction as it is


def config(**blend):
    cfg = yaml.safe_load(SMALL.read_text())
    cfg["models"][MODEL]["full_fit"] = True  # a model's own key; cv.full_fit is the same switch for all
    cfg["blend"].update(blend)
    return cfg


@pytest.fixture(scope="module")
def full_run(run_a, tmp_path_factory):
    """run_a's copy with the Llama's full-data model added (blend.test_from: full, the default);
    what Snakemake printed."""
    workdir = copy_run(run_a, tmp_path_factory.mktemp("full_fit") / "w")
    (workdir / "config.yaml").write_text(yaml.safe_dump(config()))
    proc = snakemake(workdir, "-j2", "results/submission.csv")
    return workdir, proc.stdout + proc.stderr


def expected_submission(workdir, test_from):
    """The blender of the run applied to each member's test prediction as blend.test_from says."""
    res = workdir / "results"
    members = json.loads((res / "metrics.json").read_text())["models"]
    test = {m: pd.read_parquet(res / "test" / f"{m}.parquet") for m in members}
    full = average_folds([pd.read_parquet(res / "test" / MODEL / "full.parquet")], tta=False)
    folds = test[MODEL]
    test[MODEL] = (
        full if test_from == "full" else full.assign(**{c: (full[c] + folds[c]) / 2 for c in ("a", "b", "tie")})
    )
    return apply_blender(
        read_blender(res / "blender.json"), test, row_kinds(read_parsed(res / "data" / "test.parquet"))
    )


def test_the_full_model_trains_on_every_row_and_leaves_the_oof_figures(full_run, run_a):
    workdir, printed = full_run
    res = workdir / "results"
    # only what the full-data model adds: its training, its test pass and the blend
    assert printed.count("rule train:") == 1 and printed.count("rule infer:") == 1 and "rule oof:" not in printed
    n_train = len(read_parsed(res / "data" / "train.parquet"))
    full = json.loads((res / "models" / MODEL / "full" / "train_metrics.json").read_text())
    fold0 = json.loads((res / "models" / MODEL / "fold0" / "train_metrics.json").read_text())
    assert full["n_sequences"] == n_train and fold0["n_sequences"] < n_train
    assert f"training on all {n_train} labelled rows" in (res / "logs" / "train" / MODEL / "full.log").read_text()
    ours, theirs = (json.loads((w / "results" / "metrics.json").read_text()) for w in (workdir, run_a))
    assert ours["models"] == theirs["models"] and ours["blend"] == theirs["blend"]  # fitted on OOF as before
    assert ours["test_from"] == {
        "tiny_gemma2": ["folds"],
        MODEL: ["full"],
        "minilm": ["folds"],
        "pair_features": ["folds"],
    }


def test_the_submission_uses_the_full_models_prediction(full_run, run_a):
    workdir, _ = full_run
    sub = pd.read_csv(workdir / "results" / "submission.csv")
    expected = expected_submission(workdir, "full")
    assert np.allclose(sub.drop(columns="id").to_numpy(), expected.drop(columns="id").to_numpy(), atol=1e-6)
    assert not sub.equals(pd.read_csv(run_a / "results" / "submission.csv"))


def test_changing_test_from_reruns_only_the_blend(full_run, tmp_path):
    workdir, _ = full_run
    both = tmp_path / "both.yaml"
    both.write_text(yaml.safe_dump(config(test_from="both")))
    assert planned_jobs(snakemake(workdir, "-n", "results/submission.csv", config=both)) == {"blend": 1}
    copy = copy_run(workdir, tmp_path / "w")
    snakemake(copy, "-j1", "results/submission.csv", config=both)
    sub = pd.read_csv(copy / "results" / "submission.csv")
    expected = expected_submission(copy, "both")
    assert np.allclose(sub.drop(columns="id").to_numpy(), expected.drop(columns="id").to_numpy(), atol=1e-6)
    assert json.loads((copy / "results" / "metrics.json").read_text())["test_from"][MODEL] == ["folds", "full"]


def test_a_run_from_the_trained_models_predicts_only_the_full_pass(full_run, tmp_path):
    """The config a Kaggle bundle carries (bundle.predict_config): the Llama's full-data adapter
    is the one test pass it reads, and its fold adapters are not needed."""
    from arena_pref.kaggle.bundle import predict_config
    from arena_pref.settings import validate

    workdir, _ = full_run
    res = workdir / "results"
    models = tmp_path / "models"  # the Llama's full-data adapter only: its fold adapters are not read
    for m in ("tiny_gemma2", "minilm", "pair_features"):
        shutil.copytree(res / "models" / m, models / m)
    shutil.copytree(res / "models" / MODEL / "full", models / MODEL / "full")
    run = predict_config(
        validate(config()),
        models_dir=str(models),
        blender=str(res / "blender.json"),
        test_csv=str(res / "demo" / "test.csv"),
        backbones={m: str(res / "backbones" / m) for m in ("tiny_gemma2", MODEL)},
    )
    assert run["blend"] == {"from": str(res / "blender.json"), "test_from": "full"}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(run))
    plan = snakemake(tmp_path, "-n", "results/submission.csv")
    infer = [line for line in plan.stdout.splitlines() if "wildcards: scored=test" in line]
    assert [line.strip() for line in infer if f"model={MODEL}" in line] == [
        f"wildcards: scored=test, model={MODEL}, part=full"
    ], infer
