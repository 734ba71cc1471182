"""Teachers through the workflow: distillation from a teacher's OOF predictions and pseudo-labels
for data.extra_csv, as a user configures them (config checks, the DAG, a run, a rerun)."""

import json
import re

import numpy as np
import pandas as pd
import pytest
import yaml
from arena_pref import atomic, settings
from arena_pref.data.demo import make_demo_data
from arena_pref.errors import InputError
from workflow_helpers import SMALL, copy_run, planned_jobs, snakemake


def config_with(models, **data):
    base = {
        "data": {"train_csv": "train.csv", "test_csv": "test.csv", **data},
        "models": models,
        "blend": {"method": "stack"},
    }
    return settings.load_config(base)


LLM = {"backbone": {"kind": "tiny"}, "lora": {"r": 2, "alpha": 4, "target_modules": ["q_proj"]}}
FEATURES = {"kind": "features", "learner": "logreg"}


@pytest.mark.parametrize(
    "models, data, error",
    [
        (
            {"student": {**LLM, "distill": {"teacher": "techer"}}, "teacher": FEATURES},
            {},
            r"models.student.distill.teacher: no model named 'techer' in this config \(did you mean 'teacher'\?\)",
        ),
        ({"student": {**LLM, "distill": {"teacher": "student"}}}, {}, "a model cannot learn from itself"),
        (
            {"a": {**LLM, "distill": {"teacher": "b"}}, "b": {**LLM, "pseudo_labels": {"teacher": "a"}}},
            {"extra_csv": "x.csv"},
            r"the teachers and stages form a cycle \(a -> b -> a\)",
        ),
        (
            {"student": {**LLM, "pseudo_labels": {"teacher": "f"}}, "f": FEATURES},
            {"extra_csv": "x.csv"},
            "'f' is a features model; pseudo-labels come from a LoRA model's fold adapters",
        ),
        ({"student": {**LLM, "pseudo_labels": {"teacher": "t"}}, "t": LLM}, {}, "pseudo_labels: needs data.extra_csv"),
        ({"student": LLM}, {"extra_csv": "x.csv"}, "data.extra_csv: no model has pseudo_labels"),
    ],
)
def test_teacher_mistakes_are_one_line_naming_the_key(models, data, error):
    with pytest.raises(InputError, match=error):
        config_with(models, **data)


@pytest.mark.parametrize(
    "models, data, error",
    [
        (
            {"student": LLM, "idle": {**FEATURES, "member": False}},
            {},
            "models.idle.member: false, and no model learns from it",
        ),
        (
            {"s": {**LLM, "member": False, "distill": {"teacher": "f"}}, "f": {**FEATURES, "member": False}},
            {},
            "every model has member: false",
        ),
    ],
)
def test_teacher_only_models_must_teach_and_leave_a_member(models, data, error):
    with pytest.raises(InputError, match=error):
        config_with(models, **data)


def test_blend_weights_name_the_members_only():
    models = {"s": {**LLM, "distill": {"teacher": "f"}}, "f": {**FEATURES, "member": False}}
    base = {"data": {"train_csv": "t.csv", "test_csv": "u.csv"}, "models": models}
    cfg = settings.load_config({**base, "blend": {"method": "weights", "weights": {"s": 1}}})
    assert cfg.members == ["s"] and sorted(cfg.models) == ["f", "s"]
    with pytest.raises(InputError, match=r"blend.weights.f: that model has member: false \(a teacher only\)"):
        settings.load_config({**base, "blend": {"method": "weights", "weights": {"s": 1, "f": 1}}})


def test_teachers_reach_the_train_params_whatever_the_key_order():
    a = config_with({"s": {**LLM, "distill": {"teacher": "f", "alpha": 0.25}}, "f": FEATURES})
    b = config_with({"f": FEATURES, "s": {"distill": {"alpha": 0.25, "teacher": "f"}, **LLM}})
    assert settings.to_params(a.models["s"].training) == settings.to_params(b.models["s"].training)
    assert a.models["s"].training.teachers == settings.Teachers(distill="f", alpha=0.25, pseudo=None)
    assert a.teachers("s", "distill") == "f" and a.teachers("f", "distill") is None


# --------------------------------------------------------------------------- through the workflow


def write_run(workdir, alpha=0.5, full_fit=False):
    """The small config's tiny Gemma-2 as the pseudo-label teacher, its tiny Llama as the student of
    the pair-feature member (distillation) and of the Gemma-2 (pseudo-labels); extra rows that
    repeat two training prompts and one test prompt besides new ones. ``workdir`` is a copy of
    run_a: what the teachers do not change (the data, the Gemma-2's folds, the feature member's
    OOF) is not computed again."""
    cfg = yaml.safe_load(SMALL.read_text())
    models = cfg["models"]
    del models["minilm"]
    models["tiny_llama"]["distill"] = {"alpha": alpha, "teacher": "pair_features"}
    models["tiny_llama"]["pseudo_labels"] = {"teacher": "tiny_gemma2"}
    models["tiny_llama"]["full_fit"] = full_fit
    models["pair_features"]["member"] = False  # a teacher only: never blended or submitted
    cfg["data"]["extra_csv"] = "data/extra.csv"
    train, test = (pd.read_csv(workdir / cfg["data"][f"{s}_csv"], keep_default_na=False) for s in ("train", "test"))
    extra = make_demo_data(30, 1, seed=11)[0].drop(columns=["winner_model_a", "winner_model_b", "winner_tie"])
    extra["id"] = np.arange(len(extra)) + 10**12
    extra.loc[[0, 1], "prompt"] = train["prompt"].iloc[[4, 9]].to_numpy()
    extra.loc[2, "prompt"] = test["prompt"].iloc[0]
    atomic.write_csv(extra, workdir / "data" / "extra.csv")
    (workdir / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return train, test, extra


def job_block(dry_run, rule, **wildcards):
    """What a dry run prints of the job of ``rule`` with these wildcards; None if it plans none."""
    for block in re.split(r"^\[.*\]$", dry_run.stdout, flags=re.M):  # each job follows its time stamp
        if re.search(rf"^\s*(local)?rule {rule}:", block, re.M) and all(
            re.search(rf"wildcards:.*\b{k}={v}\b", block) for k, v in wildcards.items()
        ):
            return block
    return None


def job_inputs(dry_run, rule, **wildcards):
    """The input files a dry run lists for the job of ``rule`` with these wildcards."""
    block = job_block(dry_run, rule, **wildcards)
    assert block, f"no {rule} job with {wildcards} in the dry run"
    return re.search(r"input: (.*)", block).group(1).split(", ")


@pytest.mark.slow
def test_a_student_learns_from_teacher_oof_and_pseudo_labels_without_leaks(run_a, tmp_path):
    # less the feature member's test passes: as a teacher only, it must not make them
    unscored = ["results/test/pair_features", "results/test/pair_features.parquet"]
    tmp_path = copy_run(run_a, tmp_path / "w", drop=unscored)
    train, test, extra = write_run(tmp_path)
    plan = snakemake(tmp_path, "-n", "-j2", "results/submission.csv")
    # the DAG: fold 0 of the student reads the teacher's OOF of fold 1 only (fold 0's rows are the
    # ones it is scored on), and the Gemma-2's pseudo-labels of the extra rows
    fold0 = job_inputs(plan, "train", model="tiny_llama", part="fold0")
    assert "results/oof/pair_features/fold1.parquet" in fold0
    assert "results/oof/pair_features/fold0.parquet" not in fold0
    assert {"results/pseudo/tiny_gemma2.parquet", "results/tokens/tiny_llama/extra.parquet"} <= set(fold0)
    # the teacher is not retrained: its fold models are run_a's, made before any student
    assert job_block(plan, "train", model="tiny_llama", part="fold1")  # (the pattern finds a planned fold)
    assert job_block(plan, "train", model="tiny_gemma2", part="fold0") is None
    # the teacher's test passes over the extra rows, averaged as its test passes are
    assert sorted(job_inputs(plan, "average_test", scored="pseudo", model="tiny_gemma2")) == [
        "results/pseudo/tiny_gemma2/fold0.parquet",
        "results/pseudo/tiny_gemma2/fold1.parquet",
    ]
    assert "results/tokens/tiny_gemma2/extra.parquet" in job_inputs(
        plan, "infer", scored="pseudo", model="tiny_gemma2", part="fold0"
    )

    snakemake(tmp_path, "-j2", "results/submission.csv", timeout=1500)
    parse_log = (tmp_path / "results/logs/parse/extra.log").read_text()
    assert "3 of 30 rows dropped" in parse_log
    pseudo = pd.read_parquet(tmp_path / "results/pseudo/tiny_gemma2.parquet")
    assert sorted(pseudo["id"]) == sorted(extra["id"].iloc[3:])
    np.testing.assert_allclose(pseudo[["a", "b", "tie"]].sum(axis=1), 1, atol=1e-6)
    for fold in (0, 1):
        log = (tmp_path / f"results/logs/train/tiny_llama/fold{fold}.log").read_text()
        assert "distilling 'pair_features' (alpha 0.50) from its OOF predictions in 1 file(s)" in log
        assert "and 27 rows pseudo-labelled by 'tiny_gemma2'" in log
    # OOF on real labels only: every training row once, no extra row
    oof = pd.concat([pd.read_parquet(tmp_path / f"results/oof/tiny_llama/fold{k}.parquet") for k in (0, 1)])
    assert sorted(oof["id"]) == sorted(train["id"])
    assert len(pd.read_csv(tmp_path / "results/submission.csv")) == len(test)
    metrics = json.loads((tmp_path / "results/metrics.json").read_text())
    assert sorted(metrics["models"]) == ["tiny_gemma2", "tiny_llama"]  # the teacher-only member is left out
    assert not (tmp_path / "results/test/pair_features.parquet").exists()

    # another alpha retrains the student and what depends on it, never a teacher
    write_run(tmp_path, alpha=0.8)
    jobs = planned_jobs(snakemake(tmp_path, "-n", "-j2", "results/submission.csv"))
    assert jobs.get("train") == 2 and "features_fold" not in jobs, jobs
    assert jobs.get("infer") == 2 and jobs.get("average_test") == 1, jobs  # the student's test passes only

    # the student's full-data model (cv.full_fit) learns from the teacher's OOF of every fold
    write_run(tmp_path, alpha=0.8, full_fit=True)
    full = job_inputs(
        snakemake(tmp_path, "-n", "-j2", "results/submission.csv"), "train", model="tiny_llama", part="full"
    )
    assert {f"results/oof/pair_features/fold{k}.parquet" for k in (0, 1)} <= set(full)
    assert {"results/pseudo/tiny_gemma2.parquet", "results/tokens/tiny_llama/extra.parquet"} <= set(full)


def test_a_bundle_cannot_hold_a_model_split_over_more_gpus_than_kaggle_has():
    from arena_pref.kaggle import bundle

    split = {**LLM, "compute": {"model_parallel": {"gpus": 4}}}
    cfg = config_with({"big": split, "features": FEATURES})
    with pytest.raises(
        InputError,
        match=r"models.big.compute.model_parallel.gpus: 4 GPUs, and the Kaggle run has "
        r"kaggle.gpus 2",
    ):
        bundle.check_bundle(cfg)
    bundle.check_bundle(config_with({"big": {**LLM, "compute": {"model_parallel": {"gpus": 2}}}, "features": FEATURES}))
