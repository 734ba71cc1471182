"""The time estimate's arithmetic (kaggle/time_budget.py): a model split over its GPUs gets no data-parallel
speed-up."""

import json
from dataclasses import replace

import pandas as pd
import pytest
from arena_pref import steps
from arena_pref.kaggle import time_budget
from arena_pref.settings import DEFAULT_JOB_OPTIONS, ModelParallel

MEASURED = {"startup_s": 10.0, "load_s": 50.0, "tokens_per_s": 1000.0}
SPLIT = ModelParallel(key="models.big.compute.model_parallel", gpus=2, max_memory_gib=None, reserve_gib=3.0)


def test_rows_are_shared_over_copies_not_over_the_gpus_of_a_split_model():
    assert time_budget.model_copies(2, None) == 2  # predict_gpus 2: a copy on each GPU
    assert time_budget.model_copies(2, SPLIT) == 1  # one copy over both GPUs, its layers in turn
    assert time_budget.model_copies(1, SPLIT) == 1
    # 5 passes, each: start + load + 100k tokens x 2 orders at 1000 tokens/s per copy
    assert time_budget.model_seconds(MEASURED, tokens=100_000, passes=5, tta=True, copies=2) == pytest.approx(
        5 * (60 + 100.0)
    )
    assert time_budget.model_seconds(MEASURED, tokens=100_000, passes=5, tta=True, copies=1) == pytest.approx(
        5 * (60 + 200.0)
    )


def test_the_estimate_times_a_split_model_split_and_does_not_multiply_its_rate(tmp_path, monkeypatch):
    """steps.time_estimate with compute.predict_gpus 2: the split model is calibrated over the job's
    GPUs (its setting passed on) and counted at its measured rate; the other at twice its rate."""
    pd.DataFrame({"id": [1, 2], "input_ids": [[1] * 600, [2] * 400]}).to_parquet(tmp_path / "tokens.parquet")
    calibrated = {}

    def calibrate(*, options, **kw):
        calibrated[kw["backbone"]] = options.model_parallel
        return {"device": "cuda:0", "load_s": 50.0, "tokens_per_s": 1000.0, "timed_tokens": 1000}

    monkeypatch.setattr(time_budget, "calibrate", calibrate)
    models = {
        name: {
            "backbone": name,
            "adapter": "a",
            "tokens_parquet": tmp_path / "tokens.parquet",
            "settings": None,
            "tta": False,
            "passes": 1,
            "full_pass": False,
            "options": replace(DEFAULT_JOB_OPTIONS, model_parallel=parallel),
        }
        for name, parallel in (("big", SPLIT), ("small", None))
    }
    steps.time_estimate(models=models, limit_h=9, margin_h=0.5, gpus=2, rows=2, out=tmp_path / "estimate.json")
    assert calibrated == {"big": SPLIT, "small": None}
    report = json.loads((tmp_path / "estimate.json").read_text())["models"]
    startup = report["big"]["startup_s"]
    assert report["big"]["seconds"] == pytest.approx(startup + 50 + 1000 / 1000)
    assert report["small"]["seconds"] == pytest.approx(startup + 50 + 1000 / 2000)
    assert (report["big"]["copies"], report["big"]["gpus"]) == (1, 2)
    assert (report["small"]["copies"], report["small"]["gpus"]) == (2, 2)
