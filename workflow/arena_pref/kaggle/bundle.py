"""The competition route: predict from trained models, offline, from one directory.

"LMSYS - Chatbot Arena" is a code competition: the test set is hidden, and a submission is a
notebook that runs offline on Kaggle's 2x T4 within 9 hours. :func:`predict_config` turns the
config of a run that trained models into the config of a run that only predicts with them (no
train.csv: each model reads its trained folds, the blend is the fitted blender); the ``kaggle_bundle``
rule (:func:`build_bundle`) writes that config, with the workflow, the trained folds, the blender,
the wheels the Kaggle image lacks, ``run.py`` and a notebook, into one directory to upload as a
Kaggle dataset.
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
from pathlib import Path

import yaml

from arena_pref.errors import InputError

log = logging.getLogger(__name__)


def predict_config(raw, *, models_dir, blender, test_csv, backbones=None):
    """The config of a run that predicts with the models ``raw`` (a validated config) trained.

    ``models_dir``: where each model's trained folds are (``<models_dir>/<model>/fold<k>/...``);
    ``blender``: the fitted ``blender.json``; ``backbones``: model -> a directory to load its
    backbone from instead of its spec (needed for tiny backbones, which are built from training
    texts; real backbones are attached on Kaggle as models and given to ``run.py``).
    """
    from arena_pref.settings import LEARNER_READS

    backbones = dict(backbones or {})
    models = {}
    for name, model in raw["models"].items():
        if not model["member"]:
            continue  # a teacher only: nothing of it is submitted
        model = {**copy.deepcopy(model), "trained": f"{models_dir}/{name}"}
        if model["kind"] == "features":
            # the validated config holds every learner's defaults; a key this learner ignores is an error
            unread = set().union(*LEARNER_READS.values()) - LEARNER_READS[model["learner"]]
            model = {k: v for k, v in model.items() if k not in unread}
        if model["kind"] == "llm":
            if name in backbones:
                model["backbone"] = {"kind": "path", "path": str(backbones[name])}
            elif model["backbone"]["kind"] == "tiny":
                raise InputError(
                    f"model '{name}': a tiny backbone needs its built directory (results/backbones/{name})"
                )
        models[name] = model
    config = {key: copy.deepcopy(value) for key, value in raw.items() if key not in ("data", "demo", "blend")}
    blend = {"from": str(blender)}
    if any(m["kind"] == "llm" and m["full_fit"] for m in models.values()):
        blend["test_from"] = raw["blend"]["test_from"]  # which trained adapters predict, as at home
    return {**config, "data": {"test_csv": str(test_csv)}, "models": models, "blend": blend}


# --------------------------------------------------------------------------- the bundle

REPO = Path(__file__).resolve().parents[3]  # this checkout: workflow/arena_pref/kaggle/bundle.py
WORKFLOW_PARTS = (
    "Snakefile",
    "envs/arena-pref.yaml",
    "workflow/rules",
    "workflow/scripts",
    "workflow/schemas",
    "workflow/report",
    "workflow/arena_pref",
)
"""What of the repository the bundle carries: enough to run the workflow (no presets, profiles or tests)."""
IGNORED = ("__pycache__", "*.pyc", "*.egg-info")
LEFT_OUT = ("workflow/arena_pref/tools",)
"""Developer tools (benchmarks, the real-data and GPU checks) that the notebook never runs."""


def check_bundle(config):
    """What makes a Kaggle bundle of ``config`` (a :class:`~arena_pref.settings.Config`) impossible,
    as one line, before anything is trained for it: a judge member (run.py does not place a judge's
    backbone yet), or a model split over more GPUs than ``kaggle.gpus``."""
    for name in config.members:
        model = config.models[name]
        if model.kind == "judge":
            raise InputError(
                f"model '{name}': a judge (kind: judge) cannot go into a Kaggle bundle yet (run.py does "
                "not place a judge's backbone): remove it from models:, or give it member: false to keep "
                "it as a teacher only"
            )
        parallel = model.options.model_parallel if model.kind == "llm" else None
        if parallel is not None and parallel.gpus > config.kaggle.gpus:
            raise InputError(
                f"config {parallel.key}.gpus: {parallel.gpus} GPUs, and the Kaggle run has kaggle.gpus "
                f"{config.kaggle.gpus}: the bundle could not predict with it"
            )


def bundle_files(config):
    """``{path in the bundle: path here}`` of what a run from trained models reads: each model's test
    passes as it submits them (adapters: averaged, per fold or full-data; fitted learners), the
    blender, and the backbones built or packaged here (real backbones are attached on Kaggle,
    never copied)."""
    from arena_pref.train.trained_paths import adapter_dir, learner_path

    files = {"blender.json": "results/blender.json"}
    members = {name: config.models[name] for name in config.members}
    for name, model in members.items():
        if model.kind == "judge":  # not bundled yet: build_bundle refuses the config
            continue
        for part in config.submitted_passes(name):
            if model.kind == "features":
                files[f"models/{name}/{part}/learner.joblib"] = learner_path(config, name, part.removeprefix("fold"))
            else:
                files[f"models/{name}/{part}/adapter"] = adapter_dir(config, name, part)
    here = home_backbones(config)
    for name, model in members.items():
        if model.kind == "llm" and model.backbone["kind"] in ("tiny", "package"):
            files[f"backbones/{name}"] = here[name]
    return files


BACKBONE_FACTS = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
"""What of a backbone's config.json the bundle records, for run.py to check the attached backbone against."""


def home_backbones(config):
    """``{model: its backbone directory here}`` of the LoRA models (hub backbones, which have none,
    left out)."""
    from arena_pref.models.backbones import backbone_dir, built_dir

    dirs = {}
    for name in config.members:
        model = config.models[name]
        if model.kind == "llm" and model.backbone["kind"] != "hub":
            dirs[name] = backbone_dir(model.backbone, built_dir(name) if model.backbone["kind"] == "tiny" else None)
    return dirs


def backbone_facts(directories):
    """``{model: {fact: value}}`` from each backbone's config.json (:data:`BACKBONE_FACTS`)."""
    facts = {}
    for name, directory in directories.items():
        found = json.loads((Path(directory) / "config.json").read_text(encoding="utf-8"))
        facts[name] = {k: found[k] for k in BACKBONE_FACTS if k in found}
    return facts


def bundle_config(config, kaggle):
    """The bundle's config.yaml: a run from trained models whose paths are under ``input_dir``."""
    input_dir = kaggle["input_dir"].rstrip("/")
    backbones = {}
    for name, model in config.models.items():
        if model.kind != "llm":
            continue
        if model.backbone["kind"] in ("tiny", "package"):
            backbones[name] = f"{input_dir}/backbones/{name}"
        else:
            backbones[name] = kaggle["backbones"].get(name, f"/kaggle/input/{name}")
    bundled = predict_config(
        config.raw,
        models_dir=f"{input_dir}/models",
        blender=f"{input_dir}/blender.json",
        test_csv=kaggle["test_csv"],
        backbones=backbones,
    )
    return on_kaggle_gpus(bundled, kaggle)


def on_kaggle_gpus(config, kaggle):
    """The T4 preset's prediction settings: the LoRA models in ``kaggle["dtype"]`` (float16), with
    the model's own attention where flash-attention was asked for (it does not run on a T4) and
    unmerged adapters (a merged 16-bit 9B model does not fit 16 GB); ``as_trained`` keeps the
    models' settings. Each prediction job runs over all ``kaggle["gpus"]``."""
    config = copy.deepcopy(config)
    config["compute"] = {**config.get("compute", {}), "predict_gpus": kaggle["gpus"]}
    if kaggle["dtype"] == "as_trained":
        return config
    for model in config["models"].values():
        if model["kind"] != "llm":
            continue
        model["dtype"] = kaggle["dtype"]
        if model.get("attn_implementation") in GPU_ONLY_ATTENTION:
            model["attn_implementation"] = "auto"
        model.setdefault("predict", {})["merge_lora"] = False
    return config


GPU_ONLY_ATTENTION = ("flash_attention_2", "flash_attention_4", "flex_attention", "fastest")
"""Attention choices a T4 cannot run (flash-attention) or that are unverified there (flex_attention,
and ``fastest``, which would pick the default there anyway): Kaggle runs the model's default."""


def build_bundle(*, files, config, kaggle, out, backbones=None, repo=REPO):
    """Write the bundle directory ``out`` (atomically): the workflow, the trained files, the wheels,
    config.yaml, run.py, a notebook, and bundle.json listing every part's size and the facts of the
    backbones the adapters were trained on (``backbones``: model -> its directory here). ``kaggle``:
    the settings of :data:`BUILD_READS`."""
    from arena_pref import atomic
    from arena_pref.kaggle import wheels

    with atomic.atomic_path(out, directory=True) as tmp:
        _copy_workflow(Path(repo), tmp)
        for dest, source in files.items():
            _copy(Path(source), tmp / dest)
        wheels.collect(
            kaggle["wheels"],
            wheels.image_exclude(),
            tmp / "wheels",
            python_version=kaggle["python_version"],
            platform=kaggle["platform"],
            project_dir=repo,
        )
        (tmp / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        shutil.copy(Path(repo) / "workflow" / "kaggle" / "run.py", tmp / "run.py")
        _write_notebook(tmp / "submit.ipynb", kaggle)
        meta = {
            "input_dir": kaggle["input_dir"].rstrip("/"),
            "backbones": backbone_facts(backbones or {}),
            "parts": _sizes(tmp),
        }
        (tmp / "bundle.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    log.info("bundle %s: %s", out, ", ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in meta["parts"].items()))
    return meta


BUILD_READS = ("input_dir", "test_csv", "backbones", "wheels", "python_version", "platform")
"""The kaggle settings the bundle's build reads (the others reach the bundle through its config)."""


def code_fingerprint(repo=REPO):
    """A digest of every file the bundle copies from this checkout (the workflow and run.py), so
    that a code change rebuilds the bundle instead of shipping the old code."""
    import hashlib

    digest = hashlib.sha256()
    parts = [repo / p for p in (*WORKFLOW_PARTS, "workflow/kaggle/run.py")]
    files = sorted(
        f
        for part in parts
        for f in ([part] if part.is_file() else part.rglob("*"))
        if f.is_file() and "__pycache__" not in f.parts and f.suffix != ".pyc" and not _left_out(f, repo)
    )
    for f in files:
        digest.update(str(f.relative_to(repo)).encode() + b"\0" + f.read_bytes())
    return digest.hexdigest()


def _left_out(path, repo):
    return any(path.is_relative_to(repo / part) for part in LEFT_OUT)


def _copy_workflow(repo, dest):
    """Copy WORKFLOW_PARTS, never descending into what LEFT_OUT names (the same :func:`_left_out`
    rule that keeps it out of :func:`code_fingerprint`)."""
    for part in WORKFLOW_PARTS:
        _copy(repo / part, dest / part, skip=lambda path: _left_out(path, repo))


def _copy(source, dest, skip=lambda path: False):
    dest.parent.mkdir(parents=True, exist_ok=True)
    if source.is_dir():
        patterns = shutil.ignore_patterns(*IGNORED)

        def ignore(directory, names):
            return set(patterns(directory, names)) | {n for n in names if skip(Path(directory) / n)}

        shutil.copytree(source, dest, ignore=ignore)
    else:
        shutil.copy2(source, dest)


def _sizes(root):
    """Bytes under each top-level entry of the bundle (and the total)."""
    sizes = {}
    for entry in sorted(root.iterdir()):
        files = [entry] if entry.is_file() else [f for f in entry.rglob("*") if f.is_file()]
        sizes[entry.name] = sum(f.stat().st_size for f in files)
    sizes["total"] = sum(sizes.values())
    return sizes


def _write_notebook(path, kaggle):
    """A one-cell notebook that calls run.py (offline: the bundle is attached as a dataset)."""
    backbones = " ".join(f"--backbone {m}={d}" for m, d in sorted(kaggle["backbones"].items()))
    command = (
        f"!python {kaggle['input_dir'].rstrip('/')}/run.py --test-csv {kaggle['test_csv']} "
        f"--out /kaggle/working/submission.csv {backbones}"
    ).rstrip()
    cell = {"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [], "source": [command]}
    notebook = {
        "cells": [cell],
        "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"}},
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    path.write_text(json.dumps(notebook, indent=1) + "\n", encoding="utf-8")
