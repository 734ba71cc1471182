"""The Kaggle bundle: built from a trained run, moved to another directory, run offline by its
run.py, it reproduces the home run's submission; its wheels install in a fresh environment."""

import json
import os
import shutil
import subprocess
import sys
import venv

import numpy as np
import pandas as pd
import pytest
import yaml
from workflow_helpers import copy_run

pytestmark = pytest.mark.slow

PROBS = ["winner_model_a", "winner_model_b", "winner_tie"]


def test_the_bundle_holds_what_a_run_needs_and_no_backbone_it_should_not(bundle):
    out = bundle / "results" / "kaggle_bundle"
    for part in (
        "run.py",
        "submit.ipynb",
        "config.yaml",
        "bundle.json",
        "blender.json",
        "Snakefile",
        "workflow/rules/predict.smk",
        "workflow/arena_pref/blend/blender.py",
        "wheels/requirements.txt",
    ):
        assert (out / part).exists(), part
    assert (out / "models/tiny_gemma2/fold1/adapter/adapter_config.json").exists()
    assert (out / "models/minilm/fold1/adapter").exists() and not (out / "models/minilm/fold0").exists()
    assert (out / "models/pair_features/fold0/learner.joblib").exists()
    # tiny and packaged backbones travel with the bundle (built or installed here)
    assert (out / "backbones/tiny_gemma2/config.json").exists() and (out / "backbones/minilm/config.json").exists()
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert "train_csv" not in config["data"] and config["blend"] == {"from": "/kaggle/input/my-bundle/blender.json"}
    assert config["models"]["tiny_gemma2"]["trained"] == "/kaggle/input/my-bundle/models/tiny_gemma2"
    meta = json.loads((out / "bundle.json").read_text())
    assert meta["parts"]["total"] == sum(v for k, v in meta["parts"].items() if k != "total")
    assert (
        meta["backbones"]["tiny_gemma2"]["model_type"] == "gemma2"
        and meta["backbones"]["minilm"]["model_type"] == "bert"
    )
    wheels = {line.split("==")[0] for line in (out / "wheels/requirements.txt").read_text().split()}
    assert {"snakemake", "peft", "bitsandbytes", "arena-pref"} <= wheels and "torch" not in wheels
    cell = json.loads((out / "submit.ipynb").read_text())["cells"][0]
    assert "/kaggle/input/my-bundle/run.py --test-csv" in "".join(cell["source"])
    assert not list(out.rglob("__pycache__"))


def test_the_bundle_reproduces_the_submission_offline_from_another_directory(bundle, offline_run):
    printed = (offline_run / "run.log").read_text()
    assert "s for the test passes;" in printed and "h left (limit 9.00 h, margin 0.50 h, spent" in printed
    home = pd.read_csv(bundle / "results" / "submission.csv")
    here = pd.read_csv(offline_run / "out" / "submission.csv")
    assert list(here["id"]) == list(home["id"])
    np.testing.assert_allclose(here[PROBS].to_numpy(), home[PROBS].to_numpy(), atol=1e-5, rtol=0)
    # nothing was trained, and the paths pointed into the moved bundle
    assert not list((offline_run / "work" / "results").rglob("train_metrics.json"))
    config = yaml.safe_load((offline_run / "work" / "config.yaml").read_text())
    assert config["models"]["minilm"]["trained"] == f"{offline_run / 'input' / 'my-bundle'}/models/minilm"


def test_a_missing_backbone_is_named_before_anything_runs(bundle, tmp_path):
    out = bundle / "results" / "kaggle_bundle"
    shutil.copy(bundle / "results" / "demo" / "test.csv", tmp_path / "test.csv")
    proc = subprocess.run(
        [
            sys.executable,
            str(out / "run.py"),
            "--test-csv",
            str(tmp_path / "test.csv"),
            "--workdir",
            str(tmp_path / "work"),
            "--no-install",
            "--backbone",
            f"tiny_gemma2={tmp_path / 'nowhere'}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    assert "model 'tiny_gemma2': no backbone at" in proc.stdout and "--backbone tiny_gemma2=DIR" in proc.stdout
    # a backbone of another architecture would load under the adapters and predict nonsense
    proc = subprocess.run(
        [
            sys.executable,
            str(out / "run.py"),
            "--test-csv",
            str(tmp_path / "test.csv"),
            "--workdir",
            str(tmp_path / "work"),
            "--no-install",
            "--backbone",
            f"tiny_gemma2={out / 'backbones' / 'tiny_llama'}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    assert "the backbone at" in proc.stdout and "model_type 'llama' (trained on 'gemma2')" in proc.stdout
    # only LoRA models have backbones
    proc = subprocess.run(
        [
            sys.executable,
            str(out / "run.py"),
            "--test-csv",
            str(tmp_path / "test.csv"),
            "--workdir",
            str(tmp_path / "work"),
            "--no-install",
            "--backbone",
            "pair_features=x",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2 and "with MODEL one of minilm, tiny_gemma2, tiny_llama" in proc.stdout


def test_a_run_that_cannot_fit_the_time_limit_stops_before_the_test_passes(offline_run, tmp_path):
    # the offline run's directory less its test passes and estimate: only the estimate runs again
    work = copy_run(
        offline_run / "work",
        tmp_path / "work",
        drop=["results/test", "results/time_estimate.json", "results/submission.csv"],
    )
    proc = subprocess.run(
        [
            sys.executable,
            str(offline_run / "input" / "my-bundle" / "run.py"),
            "--test-csv",
            str(offline_run / "test.csv"),
            "--workdir",
            str(work),
            "--no-install",
            "--time-limit-h",
            "0.001",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "the run would not fit the time limit; averaging every model's fold adapters would take" in proc.stdout
    assert "average each model's fold adapters (predict.average_adapters)" in proc.stdout
    assert not (work / "results" / "test").exists()


def test_the_wheels_install_offline_in_a_fresh_environment(bundle, tmp_path):
    """Every bundled wheel installs with --no-index, and what pip check then finds missing is only
    what the Kaggle image provides."""
    from arena_pref.kaggle.wheels import image_exclude

    wheels = bundle / "results" / "kaggle_bundle" / "wheels"
    venv.create(tmp_path / "venv", with_pip=True)
    python = tmp_path / "venv" / "bin" / "python"
    env = {**os.environ, "PIP_CONFIG_FILE": os.devnull}
    install = subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--no-index",
            "--no-deps",
            "--quiet",
            *map(str, sorted(wheels.glob("*.whl"))),
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    check = subprocess.run([str(python), "-m", "pip", "check"], capture_output=True, text=True, env=env)
    missing = {
        line.split(" requires ")[1].split(",")[0].strip().lower().replace("_", "-")
        for line in check.stdout.splitlines()
        if " requires " in line and "not installed" in line
    }
    excluded = image_exclude()
    from arena_pref.kaggle.wheels import _excluder

    assert all(_excluder(excluded)(name) for name in missing), sorted(missing)
