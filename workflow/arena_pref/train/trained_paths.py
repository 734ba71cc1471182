"""Where a model's trained folds live: this run's results, or an earlier run's directory.

A model trained here keeps its folds under ``results/models/<model>/``. A model with ``trained:``
(a run from trained models, without training data) reads them from that directory instead, laid
out the same way: ``fold<k>/adapter`` (LoRA models), ``fold<k>/learner.joblib`` (pair-feature
models), ``fold<k>/calibration.json`` (judges), and optionally ``average/adapter`` (the folds'
adapters averaged, as a Kaggle bundle carries them) and ``full/adapter`` (a full-data model). The
paths are checked when the workflow starts, so a missing fold is one line naming it rather than a
MissingInputException deep in the DAG.
"""

from __future__ import annotations

from pathlib import Path

from arena_pref.errors import InputError

RESULTS = "results/models"
AVERAGE = "average"
FULL = "full"  # the full-data adapter (cv.full_fit), trained on every labelled row


def training_fold(part):
    """The fold a trained part held out (``fold<k>`` -> k), or None for the full-data adapter."""
    return None if part == FULL else int(part.removeprefix("fold"))


def model_dir(config, model):
    """The directory of the model's folds (trained elsewhere, or trained by this run)."""
    return config.models[model].trained or f"{RESULTS}/{model}"


def adapter_dir(config, model, part):
    """A LoRA model's adapter for one test pass (``fold<k>``, ``average`` or ``full``). A trained directory
    that carries no averaged adapter gets one averaged by this run from its folds."""
    trained = config.models[model].trained
    if part == AVERAGE and trained and not (Path(trained) / AVERAGE / "adapter").is_dir():
        return f"{RESULTS}/{model}/{AVERAGE}/adapter"
    return f"{model_dir(config, model)}/{part}/adapter"


def learner_path(config, model, fold):
    return f"{model_dir(config, model)}/fold{fold}/learner.joblib"


def calibration_path(config, model, fold):
    """A judge's fitted calibration of one fold."""
    return f"{model_dir(config, model)}/fold{fold}/calibration.json"


def check(config):
    """Each trained directory holds what its model's test passes read, and the blender to apply
    (``blend.from``) fits these models (:class:`InputError` naming the first problem otherwise)."""
    if config.blender_source:
        _check_blender_file(config)
    for name, m in config.models.items():
        if not m.trained:
            continue
        if not Path(m.trained).is_dir():
            raise InputError(f"config models.{name}.trained: no directory '{m.trained}'")
        for path in _needed(config, name):
            if not Path(path).exists():
                raise InputError(
                    f"config models.{name}.trained: '{path}' is missing ({_reads(config, name)}; the directory has "
                    f"{sorted(p.name for p in Path(m.trained).iterdir()) or 'nothing'})"
                )


def _reads(config, model):
    """What the config makes a trained directory's model read, by its keys."""
    sources = config.test_sources(model)
    reads = [f"predict.folds {config.predict_folds(model)}"] if "folds" in sources else []
    if FULL in sources:
        reads.append(f"the full-data adapter: blend.test_from {config.test_from}")
    return ", ".join(reads)


def _needed(config, model):
    m = config.models[model]
    if m.kind == "features":
        return [learner_path(config, model, k) for k in config.predict_folds(model)]
    if m.kind == "judge":
        return [calibration_path(config, model, k) for k in config.predict_folds(model)]
    needed = []
    for part in config.submitted_passes(model):
        if part == AVERAGE and not (Path(m.trained) / AVERAGE / "adapter").is_dir():  # averaged here
            needed += [f"{m.trained}/fold{k}/adapter/adapter_config.json" for k in config.predict_folds(model)]
        else:
            needed.append(f"{m.trained}/{part}/adapter/adapter_config.json")
    return needed


def _check_blender_file(config):
    import json

    from arena_pref.blend.blender import Blender

    path = Path(config.blender_source)
    if not path.is_file():
        raise InputError(f"config blend.from: no file '{path}' (relative paths start at the working directory)")
    try:
        blender = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"config blend.from: '{path}' is not JSON ({err})") from None
    source = f"config blend.from: '{path}'"
    Blender.from_json(blender, source).check({m: config.models[m].tta for m in config.models}, source)
