"""The bundle's config: a run from trained models with the T4 preset's prediction settings."""

import dataclasses

import pytest
import yaml
from arena_pref import settings
from arena_pref.errors import InputError
from arena_pref.kaggle import bundle
from workflow_helpers import REPO, SMALL


def load(path, **kaggle):
    raw = yaml.safe_load(path.read_text())
    raw["kaggle"] = {**raw.get("kaggle", {}), **kaggle}
    config = settings.load_config(raw)
    return config, dataclasses.asdict(config.kaggle)


def test_a_bf16_fused_attention_preset_predicts_in_float16_on_both_t4s():
    config, kaggle = load(
        REPO / "workflow/presets/gemma2-9b-qlora.yaml",
        backbones={"gemma2_9b": "/kaggle/input/gemma-2/transformers/gemma-2-9b-it/2"},
    )
    out = bundle.bundle_config(config, kaggle)
    model = out["models"]["gemma2_9b"]
    assert model["dtype"] == "float16" and model["attn_implementation"] == "auto"
    assert model["quantization"] == "4bit" and model["predict"]["merge_lora"] is False
    assert model["backbone"] == {"kind": "path", "path": "/kaggle/input/gemma-2/transformers/gemma-2-9b-it/2"}
    assert model["trained"] == "/kaggle/input/arena-pref-bundle/models/gemma2_9b"
    assert out["compute"]["predict_gpus"] == 2 and "train_csv" not in out["data"]
    # what a Kaggle run reads is a valid config of a run from trained models
    again = settings.load_config(out)
    assert again.predict_only and again.blender_source == "/kaggle/input/arena-pref-bundle/blender.json"


def test_as_trained_keeps_the_models_dtype():
    config, kaggle = load(SMALL, dtype="as_trained", input_dir="/kaggle/input/b/")
    out = bundle.bundle_config(config, kaggle)
    assert out["models"]["tiny_gemma2"]["dtype"] == "float32"
    # tiny and packaged backbones travel in the bundle
    assert out["models"]["tiny_gemma2"]["backbone"] == {"kind": "path", "path": "/kaggle/input/b/backbones/tiny_gemma2"}
    assert out["models"]["minilm"]["backbone"]["path"] == "/kaggle/input/b/backbones/minilm"
    # a feature member keeps only what its learner reads (the rest would be a config error)
    assert "learning_rate" not in out["models"]["pair_features"] and out["models"]["pair_features"]["C"] == 0.5


def test_the_bundle_carries_each_models_test_passes():
    raw = yaml.safe_load(SMALL.read_text())
    raw["models"]["tiny_gemma2"]["predict"]["average_adapters"] = True
    files = bundle.bundle_files(settings.load_config(raw))
    assert files["models/tiny_gemma2/average/adapter"] == "results/models/tiny_gemma2/average/adapter"
    assert "models/tiny_gemma2/fold0/adapter" not in files
    assert files["models/minilm/fold1/adapter"] and "models/minilm/fold0/adapter" not in files
    assert files["models/pair_features/fold0/learner.joblib"] == "results/models/pair_features/fold0/learner.joblib"
    assert files["blender.json"] == "results/blender.json"


@pytest.mark.parametrize("test_from", ["full", "both"])
def test_the_bundle_carries_the_full_data_adapters_it_submits(test_from):
    raw = yaml.safe_load(SMALL.read_text())
    raw["cv"]["full_fit"], raw["blend"]["test_from"] = True, test_from
    raw["models"]["minilm"]["full_fit"] = False
    config = settings.load_config(raw)
    files = bundle.bundle_files(config)
    for model in ("tiny_gemma2", "tiny_llama"):
        assert files[f"models/{model}/full/adapter"] == f"results/models/{model}/full/adapter"
        assert (f"models/{model}/fold0/adapter" in files) == (test_from == "both")
    assert "models/minilm/full/adapter" not in files  # its own full_fit: false
    assert files["models/pair_features/fold0/learner.joblib"]  # feature members submit their folds
    carried = bundle.bundle_config(config, dataclasses.asdict(config.kaggle))
    assert carried["blend"]["test_from"] == test_from and carried["models"]["tiny_llama"]["full_fit"] is True
    again = settings.load_config(carried)
    assert again.submitted_passes("tiny_llama") == config.submitted_passes("tiny_llama")


def test_a_tiny_backbone_without_its_directory_is_an_error():
    raw = settings.validate(yaml.safe_load(SMALL.read_text()))
    with pytest.raises(InputError, match="tiny backbone needs its built directory"):
        bundle.predict_config(raw, models_dir="m", blender="b.json", test_csv="t.csv")


def kaggle_run():
    """workflow/kaggle/run.py as a module (it is a script copied into the bundle)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("kaggle_run", REPO / "workflow/kaggle/run.py")
    run = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run)
    return run


def test_run_py_moves_only_paths_under_the_bundle():
    """run.py moves the bundle's own paths to where Kaggle mounted it, and nothing that merely
    starts with the same characters (another dataset's path, say)."""
    run = kaggle_run()
    config = {
        "models": {
            "m": {
                "trained": "/kaggle/input/b/models/m",
                "backbone": {"kind": "path", "path": "/kaggle/input/b-weights/gemma"},
            }
        },
        "blend": {"from": "/kaggle/input/b/blender.json"},
        "list": ["/kaggle/input/b", 3],
    }
    moved = run.moved_paths(config, "/kaggle/input/b", "/tmp/here")
    assert moved["models"]["m"]["trained"] == "/tmp/here/models/m"
    assert moved["models"]["m"]["backbone"]["path"] == "/kaggle/input/b-weights/gemma"
    assert moved["blend"]["from"] == "/tmp/here/blender.json" and moved["list"] == ["/tmp/here", 3]


def test_a_code_change_changes_the_bundles_fingerprint(tmp_path):
    """The bundle job's params hold a digest of what it copies: editing run.py (or any workflow
    file) rebuilds the bundle rather than shipping the old code."""
    import shutil

    for part in (*bundle.WORKFLOW_PARTS, "workflow/kaggle/run.py"):
        source, dest = REPO / part, tmp_path / part
        dest.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if source.is_dir() else shutil.copy)(source, dest)
    before = bundle.code_fingerprint(tmp_path)
    assert bundle.code_fingerprint(tmp_path) == before
    (tmp_path / "workflow/kaggle/run.py").write_text("# changed\n")
    assert bundle.code_fingerprint(tmp_path) != before


def test_the_bundle_leaves_the_developer_tools_out(tmp_path):
    """bench, realdata and gpu_check are never run by the notebook: they are not copied, and
    editing them does not rebuild a bundle."""
    bundle._copy_workflow(REPO, tmp_path / "b")
    package = tmp_path / "b/workflow/arena_pref"
    assert (package / "steps.py").is_file() and (package / "kaggle/bundle.py").is_file()
    assert not (package / "tools").exists()
    copy = tmp_path / "repo"
    bundle._copy_workflow(REPO, copy)
    (copy / "workflow/kaggle").mkdir(parents=True)
    (copy / "workflow/kaggle/run.py").write_text("# run\n")
    before = bundle.code_fingerprint(copy)
    (copy / "workflow/arena_pref/tools").mkdir()
    (copy / "workflow/arena_pref/tools/bench.py").write_text("# a benchmark\n")
    assert bundle.code_fingerprint(copy) == before


def test_a_model_whose_tta_differs_from_the_blenders_is_an_error(tmp_path):
    """A stacker fitted on TTA-averaged OOF predictions must not weigh plain test predictions."""
    import pandas as pd
    from arena_pref import steps
    from arena_pref.blend.blender import Blender, write_blender

    write_blender(Blender.from_weights({"m": 1.0}, {"m": True}), tmp_path / "blender.json")
    pd.DataFrame({"id": [1, 2], "a": 0.4, "b": 0.4, "tie": 0.2}).to_parquet(tmp_path / "m.parquet")
    with pytest.raises(
        InputError,
        match=r"config models.m.predict.tta is False, but the blender .*blender.json was "
        r"fitted on its predictions with tta True",
    ):
        steps.submit(
            blender_path=tmp_path / "blender.json",
            test_paths={"m": {"folds": tmp_path / "m.parquet"}},
            test_parquet=None,
            tta={"m": False},
            submission=tmp_path / "sub.csv",
            run_info_path=tmp_path / "run_info.json",
            config={},
        )
    assert not (tmp_path / "sub.csv").exists()


def test_averaging_if_needed_estimates_one_pass_per_model():
    """--average-if-needed: each model's measured per-pass time, once (None when nothing would change)."""
    run = kaggle_run()
    a, b = (
        {"passes": 5, "seconds": 5 * 3600.0, "full_pass": False},
        {"passes": 1, "seconds": 1800.0, "full_pass": False},
    )
    assert run.averaged_hours({"models": {"a": a, "b": b}}) == pytest.approx(1.5)
    assert run.averaged_hours({"models": {"b": b}}) is None
    # blend.test_from both: five fold passes and the full-data adapter's; averaging keeps the latter
    both = {"passes": 6, "seconds": 6 * 3600.0, "full_pass": True}
    assert run.averaged_hours({"models": {"a": both}}) == pytest.approx(2.0)
    assert run.averaged_hours({"models": {"a": {"passes": 1, "seconds": 3600.0, "full_pass": True}}}) is None


def test_run_py_lets_a_split_model_be_scheduled():
    """A model split over 2 GPUs (compute.model_parallel) is scheduled on a notebook with fewer: its
    job then names what is short (or, without GPUs, loads the model whole)."""
    run = kaggle_run()
    split = {"models": {"big": {"compute": {"model_parallel": {"gpus": 2}}}, "pf": {"kind": "features"}}}
    assert run.resource_gpus(split, 0) == run.resource_gpus(split, 1) == 2
    assert run.resource_gpus({"models": {"pf": {"kind": "features"}}}, 0) == 1
    assert run.resource_gpus(split, 4) == 4
