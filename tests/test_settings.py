"""Settings: one validated, typed home for the config; config errors in one line naming the key,
caught before any job runs."""

import os
import re
import shutil
import stat

import pandas as pd
import pytest
import yaml
from arena_pref import atomic, settings
from arena_pref.errors import InputError
from arena_pref.models import backbones
from workflow_helpers import REPO, SMALL

BASE = yaml.safe_load(SMALL.read_text())


def config_with(**models):
    return {**BASE, "models": {**BASE["models"], **models}}


JUDGE = {
    "kind": "judge",
    "backbone": {"kind": "tiny", "arch": "llama"},
    "answers": {"a": "1", "b": "2", "tie": "="},
    "predict": {"tta": False, "folds": [1]},
    "max_length": 512,
}
PARTS = {"features": ("learner",), "judge": ("scoring",), "llm": ("tokens", "training", "prediction")}


def test_params_do_not_depend_on_key_order():
    written = config_with(judge=JUDGE)
    shuffled = yaml.safe_load(yaml.safe_dump(written, sort_keys=False))
    shuffled["models"] = dict(reversed(list(shuffled["models"].items())))
    for name, m in shuffled["models"].items():
        shuffled["models"][name] = m = dict(reversed(list(m.items())))
        m["predict"] = dict(reversed(list(m["predict"].items())))
        if "train" in m:
            m["train"] = dict(reversed(list(m["train"].items())))
        if "answers" in m:
            m["answers"] = dict(reversed(list(m["answers"].items())))
    a, b = settings.load_config(written), settings.load_config(shuffled)
    assert a.models["judge"].kind == "judge"
    for name in a.models:
        parts = PARTS[a.models[name].kind]
        for part in parts:
            assert repr(settings.to_params(getattr(a.models[name], part))) == repr(
                settings.to_params(getattr(b.models[name], part))
            )


def test_numbers_are_canonical():
    """``epochs: 1`` and ``epochs: 1.0`` (or ``stack_C``) are one setting: the same params, no rerun."""
    as_float = yaml.safe_load(SMALL.read_text())
    as_float["models"]["tiny_gemma2"]["train"]["epochs"] = 1.0
    as_float["blend"]["stack_C"] = 1  # the schema's default is 1.0
    a, b = settings.load_config(BASE), settings.load_config(as_float)
    assert repr(settings.to_params(a.models["tiny_gemma2"].training)) == repr(
        settings.to_params(b.models["tiny_gemma2"].training)
    )
    assert repr(settings.to_params(a.blend)) == repr(settings.to_params(b.blend))


def test_job_options_are_not_params():
    """Save and log intervals and bf16 emulation change how a job runs, not what it makes: they
    reach the job as an object Snakemake does not compare, and no fingerprint holds them."""
    model = settings.load_config(BASE).models["tiny_gemma2"]
    params = repr(settings.to_params(model.training))
    assert "save_steps" not in params and "logging_steps" not in params and "allow_bf16" not in params
    assert model.options == settings.JobOptions(allow_bf16_emulation=False, save_steps=3, logging_steps=2)


def test_a_feature_member_is_validated_and_filled():
    cfg = {
        **config_with(pf={"predict": {"folds": [1]}, "C": 3, "kind": "features", "learner": "logreg"}),
        "blend": {"method": "stack"},
    }
    model = settings.load_config(cfg).models["pf"]
    assert model.kind == "features" and model.folds == (1,) and model.tta is True
    # the keys logreg does not read are None: changing them reruns nothing
    assert model.learner == settings.FeatureLearner(
        learner="logreg",
        max_iter=200,
        learning_rate=None,
        max_leaf_nodes=None,
        min_samples_leaf=None,
        l2_regularization=None,
        C=3.0,
        seed=None,
    )
    hgb = settings.load_config({**cfg, "models": {"pf": {"kind": "features", "learner": "hgb"}}}).models["pf"].learner
    assert hgb.C is None and hgb.learning_rate == 0.05 and hgb.seed == 0
    assert settings.load_config(cfg).names("features") == ["pair_features", "pf"]


@pytest.mark.parametrize(
    "model, message",
    [
        ({"kind": "features", "max_length": 128}, r"config\.models\.pf: unknown key 'max_length'"),
        ({"kind": "features", "learner": "forest"}, r"config\.models\.pf\.learner: 'forest' is not one of"),
        ({"kind": "feature"}, r"config\.models\.pf\.kind: 'feature' is not one of \['llm', 'features', 'judge'\]"),
    ],
)
def test_feature_member_errors_name_the_key(model, message):
    with pytest.raises(InputError, match=message):
        settings.load_config({**config_with(pf=model), "blend": {"method": "stack"}})


@pytest.mark.parametrize(
    "model, message",
    [
        ({"kind": "features", "learner": "hgb", "C": 0.1}, r"config\.models\.pf: learner 'hgb' does not read C "),
        (
            {"kind": "features", "learning_rate": 0.1, "max_leaf_nodes": 7},
            r"config\.models\.pf: learner 'logreg' does not read learning_rate, max_leaf_nodes "
            r"\(it reads C, max_iter\)",
        ),
    ],
)
def test_a_key_the_learner_does_not_read_is_an_error(model, message):
    with pytest.raises(InputError, match=message):
        settings.load_config({**config_with(pf=model), "blend": {"method": "stack"}})


def test_blend_weights_with_another_method_are_an_error():
    """Weights a stacker would silently ignore (a config written before stacking became the default)."""
    cfg = {**BASE, "blend": {"weights": {name: 1 for name in BASE["models"]}}}
    with pytest.raises(InputError, match="config blend.weights: only blend.method 'weights' reads them"):
        settings.load_config(cfg)


def test_blend_defaults_to_stacking_with_the_guard():
    cfg = {k: v for k, v in BASE.items() if k != "blend"}
    blend = settings.load_config(cfg).blend
    assert blend == settings.BlendSettings(
        method="stack",
        weights={},
        stack_C=1.0,
        calibrate=False,
        guard=True,
        post_rules=settings.PostRules(identical=False, empty=False),
    )


def test_params_round_trip_to_typed_settings():
    model = settings.load_config(BASE).models["tiny_gemma2"]
    for cls, value in (
        (settings.TrainSettings, model.training),
        (settings.PredictSettings, model.prediction),
        (settings.TokenSettings, model.tokens),
    ):
        assert settings.from_params(cls, settings.to_params(value)) == value
    assert model.training.train.packing is True and model.training.lora.target_modules == ("q_proj", "v_proj")
    assert model.training.train.weight_decay == 0.0  # a default the schema filled


def test_oof_settings_do_not_hold_tta_or_folds():
    """OOF always predicts both orders with every fold's own adapter: its params must not change
    when the test-time settings do."""
    params = settings.to_params(settings.load_config(BASE).models["minilm"].prediction)
    assert "tta" not in repr(params) and "folds" not in repr(params)


@pytest.mark.parametrize(
    "change, message",
    [
        (
            {"minilm": {**BASE["models"]["minilm"], "backbone": {"kind": "hubb", "name": "x"}}},
            "config.models.minilm.backbone.kind: 'hubb' is not one of ['path', 'hub', 'package', 'tiny']",
        ),
        (
            {
                "tiny_gemma2": {
                    **BASE["models"]["tiny_gemma2"],
                    "backbone": {**BASE["models"]["tiny_gemma2"]["backbone"], "num_layer": 2},
                }
            },
            "config.models.tiny_gemma2.backbone: unknown key 'num_layer' (did you mean 'num_layers'?)",
        ),
        (
            {"minilm": {**BASE["models"]["minilm"], "train": {**BASE["models"]["minilm"]["train"], "epoch": 2}}},
            "config.models.minilm.train: unknown key 'epoch' (did you mean 'epochs'?)",
        ),
        (
            {"minilm": {**BASE["models"]["minilm"], "quantization": "3bit"}},
            "config.models.minilm.quantization: '3bit' is not one of ['4bit', '8bit', 'none']",
        ),
        (
            {"fold.0": BASE["models"]["minilm"]},
            "config.models: name 'fold.0' is not allowed: model names are identifiers",
        ),
    ],
)
def test_config_errors_are_one_line_naming_the_key(change, message):
    with pytest.raises(InputError) as err:
        settings.load_config(config_with(**change))
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_model_names_that_read_like_paths_are_fine():
    """``test``, ``oof`` or ``fold0`` are identifiers: the blend is told model names, it never
    parses them out of paths."""
    config = {
        **BASE,
        "models": {"test": BASE["models"]["minilm"], "fold0": BASE["models"]["tiny_gemma2"]},
        "blend": {"method": "weights", "weights": {"test": 1, "fold0": 1}},
    }
    assert list(settings.load_config(config).models) == ["test", "fold0"]


def model(name="minilm", **changes):
    return settings.load_config(config_with(**{name: {**BASE["models"][name], **changes}})).models[name]


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the checks remember passed models under .snakemake/
    return tmp_path


@pytest.mark.parametrize(
    "name, changes, message",
    [
        ("minilm", {"max_length": 1024}, "models.minilm.max_length: 1024 is above the backbone's position limit (512"),
        (
            "minilm",
            {"template": {"prompt": "question " * 60}},
            "models.minilm.template: the template and special tokens take",
        ),
        (
            "minilm",
            {"lora": {"r": 4, "alpha": 8, "target_modules": ["query", "q_proj"]}},
            "models.minilm.lora.target_modules: ['q_proj'] match no module of the backbone (its linear layers: ",
        ),
        (
            "tiny_gemma2",
            {"lora": {"r": 4, "alpha": 8, "target_modules": ["q_proj"], "layers_to_transform": [0, 16]}},
            "models.tiny_gemma2.lora.layers_to_transform: [16] beyond the backbone's 1 layers",
        ),
        (
            "tiny_gemma2",
            {"backbone": {**BASE["models"]["tiny_gemma2"]["backbone"], "num_heads": 5}},
            "models.tiny_gemma2.backbone: cannot be used: Class validation error for validator "
            "'validate_architecture': "
            "ValueError: The hidden size (64) is not a multiple of the number of attention heads (5).",
        ),
    ],
)
def test_backbone_checks_catch_what_would_fail_later(workdir, name, changes, message):
    with pytest.raises(InputError, match="^" + re.escape("config " + message)):
        backbones.check_model(model(name, **changes))
    backbones.check_model(model(name))  # the shipped settings pass
    assert list((workdir / backbones.CHECKED_DIR).iterdir())  # and are remembered


def test_a_backbone_directory_without_config_is_named(workdir):
    (workdir / "empty").mkdir()
    with pytest.raises(InputError, match=r"config models.minilm.backbone: empty has no config.json"):
        backbones.check_model(model(backbone={"kind": "path", "path": "empty"}))


def test_outputs_get_the_usual_modes(tmp_path):
    """Atomic writes go through mkstemp/mkdtemp (0600/0700): the renamed outputs must get what a
    plain open() or mkdir() would give, or teammates cannot read them."""
    old = os.umask(0o022)
    try:
        atomic.write_csv(pd.DataFrame({"a": [1]}), tmp_path / "out.csv")
        with atomic.atomic_path(tmp_path / "adapter", directory=True) as tmp:
            (tmp / "weights").write_text("w")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "out.csv").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "adapter").stat().st_mode) == 0o755


def with_parallel(name="tiny_gemma2", **model):
    return config_with(**{name: {**BASE["models"][name], **model}})


def test_model_parallel_is_how_a_job_runs_and_sets_its_gpus():
    """compute.model_parallel changes where a model's jobs run, not what they make: it is a job
    option (no rerun, checkpoints resume), and it sets the GPUs its train, oof and infer jobs claim."""
    config = settings.load_config(
        {**with_parallel(compute={"model_parallel": {"gpus": 2, "max_memory_gib": 15}}), "compute": {"predict_gpus": 3}}
    )
    model = config.models["tiny_gemma2"]
    assert model.options.model_parallel == settings.ModelParallel(
        key="models.tiny_gemma2.compute.model_parallel", gpus=2, max_memory_gib=15.0, reserve_gib=3.0
    )
    assert repr(settings.to_params(model.training)) == repr(
        settings.to_params(settings.load_config(BASE).models["tiny_gemma2"].training)
    )
    assert (config.job_gpus("tiny_gemma2", "train"), config.job_gpus("tiny_gemma2", "predict")) == (2, 2)
    assert (config.job_gpus("tiny_llama", "train"), config.job_gpus("tiny_llama", "predict")) == (1, 3)
    assert settings.load_config(BASE).models["tiny_llama"].options.model_parallel is None  # off by default


@pytest.mark.parametrize(
    "model, message",
    [
        (
            {"compute": {"model_parallel": {"gpus": 1}}},
            "config.models.tiny_gemma2.compute.model_parallel.gpus: 1 is less than the minimum of 2",
        ),
        (
            {"compute": {"model_parallel": {"gpu": 2}}},
            "config.models.tiny_gemma2.compute.model_parallel: unknown key 'gpu' (did you mean 'gpus'?)",
        ),
        ({"compute": {"model_parallel": {}}}, "config.models.tiny_gemma2.compute.model_parallel: 'gpus' is a required"),
        (
            {"compute": {"model_parallel": {"gpus": 2, "max_memory": 15}}},
            "config.models.tiny_gemma2.compute.model_parallel: unknown key 'max_memory' "
            "(did you mean 'max_memory_gib'?)",
        ),
        (
            {"compute": {"model_parallel": {"gpus": 2}}, "predict": {"merge_lora": True}},
            "config models.tiny_gemma2.predict.merge_lora: merging into a 4bit base is checked against one "
            "GPU's memory",
        ),
    ],
)
def test_model_parallel_mistakes_name_the_key(model, message):
    with pytest.raises(InputError) as err:
        settings.load_config(with_parallel(**model))
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    "model, message",
    [
        (
            {"compute": {"data_parallel": {"gpus": 3}}},  # the small config's grad_accum is 2
            "config models.tiny_gemma2.train.grad_accum: 2 is the global step's accumulation (batch_size x "
            "grad_accum rows per optimizer step on any number of GPUs) and must be a multiple of the 3 "
            "processes of models.tiny_gemma2.compute.data_parallel (gpus x nodes)",
        ),
        (
            {"compute": {"data_parallel": {"nodes": 2, "gpus": 2}}},  # 4 processes, grad_accum 2
            "config models.tiny_gemma2.train.grad_accum: 2 is the global step's accumulation",
        ),
        (
            {"compute": {"data_parallel": {"gpus": 1}}},
            "config models.tiny_gemma2.compute.data_parallel: gpus 1 on nodes 1 is one process",
        ),
        (
            {"compute": {"data_parallel": {"gpus": 2}, "model_parallel": {"gpus": 2}}, "train": {"grad_accum": 2}},
            "config models.tiny_gemma2.compute: data_parallel and model_parallel together are not supported yet",
        ),
        (
            {"compute": {"data_parallel": {"gpus": 2, "hosts": 2}}},
            "config.models.tiny_gemma2.compute.data_parallel: unknown key 'hosts'",
        ),
    ],
)
def test_data_parallel_mistakes_name_the_key(model, message):
    with pytest.raises(InputError) as err:
        settings.load_config(config_with(tiny_gemma2={**BASE["models"]["tiny_gemma2"], **model}))
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_data_parallel_is_how_a_training_job_runs():
    """Not a param: the same optimizer steps on any number of processes, so a change reruns nothing."""
    model = {**BASE["models"]["tiny_gemma2"], "compute": {"data_parallel": {"gpus": 4}}}
    model["train"] = {**model["train"], "grad_accum": 4}
    loaded = settings.load_config(config_with(tiny_gemma2=model))
    plain = settings.load_config(config_with(tiny_gemma2={**model, "compute": {}}))
    assert loaded.models["tiny_gemma2"].options.data_parallel.gpus == 4
    assert settings.to_params(loaded.models["tiny_gemma2"].training) == settings.to_params(
        plain.models["tiny_gemma2"].training
    )
    assert loaded.job_gpus("tiny_gemma2", "train") == 4 and loaded.job_gpus("tiny_gemma2", "predict") == 1
    assert set(loaded.train_nodes("tiny_gemma2").values()) == {None}  # one node: no SLURM layout


def test_a_model_over_several_nodes_claims_every_gpu_and_one_task_per_node():
    model = {**BASE["models"]["tiny_gemma2"], "compute": {"data_parallel": {"nodes": 2, "gpus": 4}}}
    model["train"] = {**model["train"], "grad_accum": 8}
    loaded = settings.load_config(config_with(tiny_gemma2=model))
    assert loaded.models["tiny_gemma2"].options.data_parallel.processes == 8
    assert loaded.job_gpus("tiny_gemma2", "train") == 8 and loaded.job_gpus("tiny_gemma2", "predict") == 1
    assert loaded.train_nodes("tiny_gemma2") == {"nodes": 2, "tasks": 2, "mpi": "srun", "tasks_per_gpu": 0}
    assert set(loaded.train_nodes("tiny_llama").values()) == {None}


def test_model_parallel_is_for_lora_models_only():
    with pytest.raises(InputError, match=r"^config\.models\.pair_features: unknown key 'compute'"):
        settings.load_config(with_parallel("pair_features", compute={"model_parallel": {"gpus": 2}}))


def test_the_schema_lists_every_setting_the_code_reads():
    schema = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())
    parallel = schema["$defs"]["model_compute"]["properties"]["model_parallel"]["properties"]
    assert set(parallel) == set(settings.ModelParallel.__dataclass_fields__) - {"key"}
    train_keys = set(schema["$defs"]["train"]["properties"])
    assert train_keys == set(settings.TrainOptions.__dataclass_fields__) | {"save_steps", "logging_steps"}
    predict_keys = set(schema["$defs"]["predict"]["properties"])
    assert predict_keys - {"tta", "folds", "average_adapters"} <= (
        set(settings.Batching.__dataclass_fields__) | {"merge_lora", "compile"}
    )
    judge_keys = set(schema["$defs"]["judge_model"]["properties"])
    read = (set(settings.JudgeSettings.__dataclass_fields__) - {"prompt"}) | set(
        settings.JudgePrompt.__dataclass_fields__
    )
    assert judge_keys == read | {"kind", "backbone", "trained", "member", "allow_bf16_emulation", "predict"}
    assert all(
        "description" in v
        for k, v in schema["$defs"]["judge_model"]["properties"].items()
        if k not in ("kind", "backbone", "trained", "member", "predict")
    )
    assert "description" in schema["$defs"]["member"]


# --- runs from trained models (no train.csv) -----------------------------------------------


def predict_only(tmp_path, blend=None, **models):
    """A config as a user writes it for a run from trained models: no train_csv, each model's
    trained directory (made here with the folds it needs)."""
    models = models or {
        "minilm": {**BASE["models"]["minilm"], "trained": str(tmp_path / "minilm")},
        "pair_features": {**BASE["models"]["pair_features"], "trained": str(tmp_path / "pf")},
    }
    for k in (0, 1):
        (tmp_path / "minilm" / f"fold{k}" / "adapter").mkdir(parents=True, exist_ok=True)
        (tmp_path / "minilm" / f"fold{k}" / "adapter" / "adapter_config.json").write_text("{}")
        (tmp_path / "pf" / f"fold{k}").mkdir(parents=True, exist_ok=True)
        (tmp_path / "pf" / f"fold{k}" / "learner.joblib").write_text("")
    from arena_pref.blend.blender import Blender, write_blender

    tta = {m: models[m]["predict"]["tta"] for m in models}
    write_blender(Blender.from_weights({m: 1.0 for m in models}, tta), tmp_path / "blender.json")
    return {
        "data": {"test_csv": "test.csv"},
        "cv": BASE["cv"],
        "models": models,
        "blend": blend if blend is not None else {"from": str(tmp_path / "blender.json")},
    }


def test_a_run_from_trained_models_needs_no_train_csv(tmp_path):
    config = settings.load_config(predict_only(tmp_path))
    assert config.predict_only and config.blender_source == str(tmp_path / "blender.json")
    assert config.test_passes("minilm") == ["fold1"] and config.test_passes("pair_features") == ["fold0"]
    from arena_pref.train import trained_paths

    trained_paths.check(config)
    assert trained_paths.adapter_dir(config, "minilm", "fold1") == f"{tmp_path}/minilm/fold1/adapter"
    assert trained_paths.learner_path(config, "pair_features", 0) == f"{tmp_path}/pf/fold0/learner.joblib"


@pytest.mark.parametrize(
    "change,message",
    [
        (
            lambda c: c["models"]["minilm"].pop("trained"),
            r"config models.minilm: without data.train_csv every model predicts from a trained directory",
        ),
        (
            lambda c: c["data"].update(train_csv="train.csv"),
            r"config models.minilm.trained: a model predicts from trained folds only in a run without data.train_csv",
        ),
        (
            lambda c: c.update(blend={"method": "stack"}),
            r"config blend: without data.train_csv there is nothing to fit a blend on",
        ),
        (
            lambda c: c["blend"].update(weights={"minilm": 1, "pair_features": 1}),
            r"config blend: from is a fitted blender, used as it is: weights would be ignored",
        ),
        (
            lambda c: c["blend"].update(calibrate=True, stack_C=0.5),
            r"config blend: from is a fitted blender, used as it is: calibrate, stack_C would be ignored",
        ),
        (
            lambda c: c["models"].update(tiny_gemma2={**BASE["models"]["tiny_gemma2"], "trained": "x"}),
            r"config models.tiny_gemma2.backbone: a tiny backbone is built from the training texts",
        ),
    ],
)
def test_runs_from_trained_models_are_checked_at_start(tmp_path, change, message):
    config = predict_only(tmp_path)
    change(config)
    with pytest.raises(InputError, match=message):
        settings.load_config(config)


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda c, b: c["blend"].update({"from": "nowhere.json"}), r"config blend.from: no file 'nowhere.json'"),
        (lambda c, b: b.write_text("{"), r"config blend.from: '.*blender.json' is not JSON"),
        (
            lambda c, b: c["models"].pop("pair_features"),
            r"config blend.from: '.*blender.json' was fitted on models minilm, pair_features: no model pair_features",
        ),
        (
            lambda c, b: c["models"]["minilm"]["predict"].update(tta=False),
            r"config models.minilm.predict.tta is False, but config blend.from: '.*blender.json' was fitted on its "
            r"predictions with tta True",
        ),
    ],
)
def test_a_blender_that_does_not_fit_the_run_is_named_at_start(tmp_path, change, message):
    """What the submit job would find hours later, said when the workflow starts."""
    from arena_pref.train import trained_paths

    config = predict_only(tmp_path)
    config["models"]["minilm"]["predict"] = dict(config["models"]["minilm"]["predict"])
    change(config, tmp_path / "blender.json")
    with pytest.raises(InputError, match=message):
        trained_paths.check(settings.load_config(config))


def test_a_missing_trained_fold_is_named(tmp_path):
    from arena_pref.train import trained_paths

    config = predict_only(tmp_path)
    config["models"]["minilm"]["predict"] = {**config["models"]["minilm"]["predict"], "folds": [0, 1]}
    (tmp_path / "minilm" / "fold0" / "adapter" / "adapter_config.json").unlink()
    with pytest.raises(
        InputError,
        match=r"models.minilm.trained: '.*/minilm/fold0/adapter/adapter_config.json' is "
        r"missing \(predict.folds \[0, 1\]",
    ):
        trained_paths.check(settings.load_config(config))


def test_full_fit_is_for_lora_models_and_a_models_own_key_wins():
    config = {**BASE, "cv": {**BASE["cv"], "full_fit": True}}
    config["models"] = {**BASE["models"], "minilm": {**BASE["models"]["minilm"], "full_fit": False}}
    loaded = settings.load_config(config)
    assert [m for m in loaded.models if loaded.has_full_fit(m)] == ["tiny_gemma2", "tiny_llama"]
    # a training run makes the full-data pass beside the folds' (blend.test_from picks in the blend)
    assert loaded.made_passes("tiny_gemma2") == ["fold0", "fold1", "full"]
    assert loaded.test_sources("tiny_gemma2") == ("full",) and loaded.submitted_passes("tiny_gemma2") == ["full"]
    assert loaded.test_sources("minilm") == ("folds",) and loaded.made_passes("minilm") == ["fold1"]
    assert loaded.test_sources("pair_features") == ("folds",)
    both = settings.load_config({**config, "blend": {**BASE["blend"], "test_from": "both"}})
    assert both.submitted_passes("tiny_llama") == ["fold0", "fold1", "full"]
    assert settings.load_config(BASE).made_passes("tiny_gemma2") == ["fold0", "fold1"]  # off by default


@pytest.mark.parametrize("test_from", ["full", "both"])
def test_test_from_without_a_full_data_model_is_an_error(test_from):
    with pytest.raises(InputError, match=rf"^config blend.test_from: '{test_from}' reads the members' full-data"):
        settings.load_config({**BASE, "blend": {**BASE["blend"], "test_from": test_from}})
    settings.load_config({**BASE, "blend": {**BASE["blend"], "test_from": "folds"}})
    opted_out = {m: {**BASE["models"][m], "full_fit": False} for m in ("tiny_gemma2", "tiny_llama", "minilm")}
    with pytest.raises(InputError, match=r"cv.full_fit is on, but every LoRA member sets full_fit: false"):
        settings.load_config(
            {**config_with(**opted_out), "cv": {**BASE["cv"], "full_fit": True}, "blend": {"test_from": test_from}}
        )
    with pytest.raises(
        InputError,
        match=r"models.pair_features: unknown key 'full_fit' \(a LoRA model's key; this model is kind features\)",
    ):
        settings.load_config(config_with(pair_features={**BASE["models"]["pair_features"], "full_fit": True}))


def test_a_run_from_trained_models_reads_the_full_adapter_it_submits(tmp_path):
    """blend.test_from full: the trained directory needs the full-data adapter, not the folds'."""
    from arena_pref.train import trained_paths

    config = predict_only(tmp_path, blend={"from": str(tmp_path / "blender.json"), "test_from": "full"})
    config["models"]["minilm"]["full_fit"] = True
    with pytest.raises(
        InputError,
        match=r"models.minilm.trained: '.*/minilm/full/adapter/adapter_config.json' is missing "
        r"\(the full-data adapter: blend.test_from full; the directory has \['fold0', 'fold1'\]\)",
    ):
        trained_paths.check(settings.load_config(config))
    (tmp_path / "minilm" / "full" / "adapter").mkdir(parents=True)
    (tmp_path / "minilm" / "full" / "adapter" / "adapter_config.json").write_text("{}")
    shutil.rmtree(tmp_path / "minilm" / "fold1")
    loaded = settings.load_config(config)
    trained_paths.check(loaded)
    assert loaded.made_passes("minilm") == ["full"]
    assert trained_paths.adapter_dir(loaded, "minilm", "full") == f"{tmp_path}/minilm/full/adapter"


def test_averaged_adapters_are_one_test_pass(tmp_path):
    """An averaged adapter the trained directory carries is used as is; otherwise this run averages
    the folds'."""
    from arena_pref.train import trained_paths

    config = predict_only(tmp_path)
    config["models"]["minilm"]["predict"] = {**config["models"]["minilm"]["predict"], "average_adapters": True}
    loaded = settings.load_config(config)
    assert loaded.test_passes("minilm") == ["average"]
    assert trained_paths.adapter_dir(loaded, "minilm", "average") == "results/models/minilm/average/adapter"
    (tmp_path / "minilm" / "average" / "adapter").mkdir(parents=True)
    assert trained_paths.adapter_dir(loaded, "minilm", "average") == f"{tmp_path}/minilm/average/adapter"


def test_missing_inputs_of_a_run_from_trained_models(tmp_path, monkeypatch):
    """A run from trained models: its test CSV, each trained directory and each backbone package,
    every one missing named by its key (data.train_csv is not read there)."""
    from arena_pref.settings import inputs

    monkeypatch.chdir(tmp_path)
    raw = predict_only(tmp_path)
    raw["models"]["pair_features"]["trained"] = "gone"
    raw["models"]["minilm"]["backbone"] = {"kind": "package", "package": "no_such_backbone_pkg", "subdir": "m"}
    problems = inputs.missing_inputs(settings.load_config(raw))
    assert problems == [
        f"config data.test_csv: no file 'test.csv' (relative paths start at the working directory, {tmp_path})",
        "config models.minilm.backbone: the package 'no_such_backbone_pkg' is not installed",
        f"config models.pair_features.trained: no directory 'gone' (relative paths start at the working "
        f"directory, {tmp_path})",
    ]
    (tmp_path / "test.csv").write_text("id\n")
    (tmp_path / "gone").mkdir()
    raw["models"]["minilm"]["backbone"] = BASE["models"]["minilm"]["backbone"]
    assert inputs.missing_inputs(settings.load_config(raw)) == []


def test_the_shipped_run_from_trained_models_is_valid_and_predicts_as_the_preset_trained():
    """workflow/examples/predict-from-trained.yaml: a complete config of a run from trained models,
    with the preset's models and, for the LLM, the settings it was trained with."""
    example = yaml.safe_load((REPO / "workflow/examples/predict-from-trained.yaml").read_text())
    config = settings.load_config(example)
    assert config.predict_only and config.blender_source == "runs/gemma/results/blender.json"
    preset = yaml.safe_load((REPO / "workflow/presets/gemma2-9b-qlora.yaml").read_text())
    assert set(example["models"]) == set(preset["models"])
    as_trained = {k: v for k, v in example["models"]["gemma2_9b"].items() if k != "trained"}
    assert as_trained == {k: v for k, v in preset["models"]["gemma2_9b"].items() if k != "train"}
    assert all(m.trained == f"runs/gemma/results/models/{name}" for name, m in config.models.items())


def test_the_shipped_data_parallel_example_adds_to_the_preset():
    """workflow/examples/data-parallel-8gpu.yaml given after the QLoRA preset, merged as Snakemake
    merges --configfile A B: the preset's model on 8 data-parallel processes, its other settings
    kept, and a global step that 8 processes can share."""
    from snakemake.utils import update_config

    merged = yaml.safe_load((REPO / "workflow/presets/gemma2-9b-qlora.yaml").read_text())
    update_config(merged, yaml.safe_load((REPO / "workflow/examples/data-parallel-8gpu.yaml").read_text()))
    config = settings.load_config(merged)
    model = config.models["gemma2_9b"]
    assert model.options.data_parallel.gpus == 8 and config.job_gpus("gemma2_9b", "train") == 8
    assert model.training.train.grad_accum == 8 and model.training.train.lr == 2.0e-4  # the preset's lr
    assert config.has_full_fit("gemma2_9b") and config.submitted_passes("gemma2_9b") == ["full"]


def test_the_shipped_multi_node_example_adds_to_the_preset():
    """workflow/examples/data-parallel-2x8gpu-slurm.yaml after the QLoRA preset: 16 processes over 2
    nodes, one SLURM task on each, the same 16 rows per optimizer step as the 8-GPU example."""
    from snakemake.utils import update_config

    merged = yaml.safe_load((REPO / "workflow/presets/gemma2-9b-qlora.yaml").read_text())
    update_config(merged, yaml.safe_load((REPO / "workflow/examples/data-parallel-2x8gpu-slurm.yaml").read_text()))
    config = settings.load_config(merged)
    train = config.models["gemma2_9b"].training.train
    assert config.job_gpus("gemma2_9b", "train") == 16 and train.batch_size * train.grad_accum == 16
    assert config.train_nodes("gemma2_9b") == {"nodes": 2, "tasks": 2, "mpi": "srun", "tasks_per_gpu": 0}
    assert config.has_full_fit("gemma2_9b") and train.lr == 2.0e-4
