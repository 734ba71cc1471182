"""What the schema cannot express: checks across keys of a validated config, each raising
:class:`InputError` in one line naming the key."""

from __future__ import annotations

import difflib

from arena_pref.errors import InputError
from arena_pref.settings.models import JUDGE_PLACEHOLDERS, LEARNER_READS
from arena_pref.settings.params import canonical


def check(config, *, written_keys, written_blend):
    """Every cross-key check of ``config`` (validated, defaults filled). ``written_keys``: each
    model's keys as written; ``written_blend``: the keys of ``blend`` as written."""
    _check_learner_keys(config, written_keys)
    _check_judges(config)
    _check_trained(config, list(config["models"]), written_blend)
    _check_blend(config, [n for n, m in config["models"].items() if m["member"]])
    _check_test_from(config, written_blend)
    if config["data"].get("train_csv") is not None:
        _check_teachers(config)
    _check_model_parallel(config)
    _check_data_parallel(config)
    _check_folds(config)


def _check_trained(config, models, written_blend):
    """A run either trains (``data.train_csv``) or predicts from trained models (each model's
    ``trained`` directory, ``blend.from`` or weights): not a mix, whose OOF rows could have been
    trained on."""
    train_csv = config["data"].get("train_csv")
    trained = [m for m in models if config["models"][m].get("trained")]
    if train_csv is not None:
        if trained:
            raise InputError(
                f"config models.{trained[0]}.trained: a model predicts from trained folds only in a run "
                "without data.train_csv (its OOF rows may have been in their training folds): remove "
                "data.train_csv to predict from trained models, or trained to train here"
            )
        if "from" in config["blend"]:
            raise InputError(
                "config blend.from: a fitted blender is used only in a run without data.train_csv; "
                "with training data the blend rule fits one"
            )
        return
    ignored = written_blend - {"from", "test_from"}  # test_from picks the test passes the blender reads
    if "from" in written_blend and ignored:
        raise InputError(
            f"config blend: from is a fitted blender, used as it is: "
            f"{', '.join(sorted(ignored))} would be ignored; keep from (and test_from) alone"
        )
    tiny = [m for m in models if config["models"][m].get("backbone", {}).get("kind") == "tiny"]
    if tiny:
        raise InputError(
            f"config models.{tiny[0]}.backbone: a tiny backbone is built from the training texts; a run "
            "from trained models loads the one it was trained with: kind: path, path: the earlier run's "
            f"results/backbones/{tiny[0]}"
        )
    teachers_only = [m for m in models if not config["models"][m]["member"]]
    if teachers_only:
        raise InputError(
            f"config models.{teachers_only[0]}.member: false: a run from trained models trains nothing, so "
            "a teacher has nothing to do there: remove the model"
        )
    untrained = [m for m in models if m not in trained]
    if untrained:
        raise InputError(
            f"config models.{untrained[0]}: without data.train_csv every model predicts from a trained "
            "directory: set its trained: to a directory of its fold<k>/ (an earlier run's "
            f"results/models/{untrained[0]})"
        )
    if "from" not in config["blend"] and config["blend"]["method"] != "weights":
        raise InputError(
            "config blend: without data.train_csv there is nothing to fit a blend on: set blend.from to "
            "the earlier run's results/blender.json, or method: weights with weights"
        )


def _check_test_from(config, written_blend):
    """blend.test_from full or both, written where no member has a full-data model, would submit
    the folds silently."""
    test_from = config["blend"]["test_from"]
    if "test_from" not in written_blend or test_from == "folds":
        return
    lora = [n for n, m in config["models"].items() if m["member"] and m["kind"] == "llm"]
    if any(config["models"][n]["full_fit"] for n in lora):
        return
    if not lora:
        why = "no member is a LoRA model (only they have full-data models)"
    elif config["cv"]["full_fit"]:
        why = f"cv.full_fit is on, but every LoRA member sets full_fit: false ({', '.join(lora)})"
    else:
        why = "no member has one: set cv.full_fit: true (or a LoRA model's full_fit: true)"
    raise InputError(
        f"config blend.test_from: '{test_from}' reads the members' full-data models, and {why}; or remove test_from"
    )


def _check_blend(config, models):
    blend = config["blend"]
    if blend["weights"] and blend["method"] != "weights":
        raise InputError(
            f"config blend.weights: only blend.method 'weights' reads them (the method is "
            f"'{blend['method']}'): set method: weights, or remove the weights"
        )
    if blend["method"] == "weights":
        missing = [m for m in models if m not in blend["weights"]]
        unknown = [m for m in blend["weights"] if m not in models]
        teachers = [m for m in unknown if m in config["models"]]
        if teachers:
            raise InputError(
                f"config blend.weights.{teachers[0]}: that model has member: false (a teacher only), so "
                "it is not blended: remove its weight"
            )
        if missing or unknown:
            raise InputError(f"config blend.weights must name every model: missing {missing}, unknown {unknown}")
        if sum(blend["weights"].values()) <= 0:
            raise InputError("config blend.weights: at least one weight must be positive")


SOURCES = {"distill": "teacher", "pseudo_labels": "teacher", "init": "from"}  # role -> its key naming the model


def _teacher_of(m, role):
    """The model ``m`` learns from in ``role`` (a key of :data:`SOURCES`), or None."""
    return (m.get(role) or {}).get(SOURCES[role])


def _check_teachers(config):
    """Teachers and earlier stages (``init.from``) name other models of this config, in an order
    training can follow (no model taught, through any chain, by itself); pseudo-label teachers and
    earlier stages are LoRA models (they predict extra rows from tokens; they hand over an
    adapter), and data.extra_csv is given exactly when some model reads it."""
    models = config["models"]
    for name, m in models.items():
        for role in SOURCES:
            teacher = _teacher_of(m, role)
            if teacher is None:
                continue
            where = f"config models.{name}.{role}.{SOURCES[role]}"
            if teacher not in models:
                hint = difflib.get_close_matches(teacher, models, 1)
                raise InputError(
                    f"{where}: no model named {teacher!r} in this config"
                    + (f" (did you mean {hint[0]!r}?)" if hint else "")
                )
            if teacher == name:
                raise InputError(f"{where}: a model cannot learn from itself")
            if role != "distill" and models[teacher]["kind"] != "llm":
                what = "pseudo-labels come from" if role == "pseudo_labels" else "a stage starts from"
                raise InputError(
                    f"{where}: {teacher!r} is a {models[teacher]['kind']} model; {what} a LoRA model's "
                    "fold adapters (kind llm)"
                )
    _check_no_teacher_cycle(models)
    _check_init(models)
    if not any(m["member"] for m in models.values()):
        raise InputError("config models: every model has member: false: nothing would be submitted")
    taught_by = {_teacher_of(m, role) for m in models.values() for role in SOURCES}
    idle = [n for n, m in models.items() if not m["member"] and n not in taught_by]
    if idle:
        raise InputError(
            f"config models.{idle[0]}.member: false, and no model learns from it (distill, "
            "pseudo_labels or init): it would be trained for nothing"
        )
    readers = [n for n, m in models.items() if _teacher_of(m, "pseudo_labels")]
    if readers and not config["data"].get("extra_csv"):
        raise InputError(
            f"config models.{readers[0]}.pseudo_labels: needs data.extra_csv, the unlabelled pairs to label"
        )
    if config["data"].get("extra_csv") and not readers:
        raise InputError(
            "config data.extra_csv: no model has pseudo_labels, so nothing would read it: give a model "
            "pseudo_labels: {teacher: ...}, or remove extra_csv"
        )


def _check_no_teacher_cycle(models):
    def visit(name, path):
        for role in SOURCES:
            teacher = _teacher_of(models[name], role)
            if teacher in path:
                cycle = " -> ".join(path[path.index(teacher) :] + [teacher])
                raise InputError(
                    f"config models: the teachers and stages form a cycle ({cycle}): what a model "
                    "learns from must exist before it trains"
                )
            if teacher in models:
                visit(teacher, [*path, teacher])

    for name in models:
        visit(name, [name])


ADAPTER_SHAPE = ("r", "alpha", "target_modules", "layers_to_transform")
"""The lora keys an adapter's weights depend on (dropout is a training setting only)."""


def _check_init(models):
    """A stage starts from an earlier stage's adapter only where it fits and cannot leak: the same
    backbone and LoRA layout (the adapter's weights are loaded as they are), and a full-data
    adapter to start the full-data model from. Fold k always starts from fold k's adapter, which
    never saw fold k's labels (the folds are the run's, shared by every model)."""
    for name, m in models.items():
        source = _teacher_of(m, "init")
        if source is None:
            continue
        earlier, where = models[source], f"config models.{name}.init.from"
        for key, part in (("backbone", None), ("lora", ADAPTER_SHAPE)):
            mine, theirs = (x[key] if part is None else {k: x[key][k] for k in part} for x in (m, earlier))
            if canonical(mine) != canonical(theirs):
                raise InputError(
                    f"{where}: {source!r} has another {key} ({canonical(theirs)} against "
                    f"{canonical(mine)}): a stage starts from an adapter of the same backbone and lora"
                )
        if m["full_fit"] and not earlier["full_fit"]:
            raise InputError(
                f"{where}: this model trains a full-data adapter (full_fit) and {source!r} has none to "
                f"start it from (each stage's full-data adapter starts from the last's): give "
                f"models.{source}.full_fit: true"
            )


def _check_learner_keys(config, written_keys):
    """A key the member's learner does not read (``C`` for hgb, say) is an error: it would be
    ignored without a word. Checked on the config as written, before defaults fill every key."""
    for name, m in config["models"].items():
        if m["kind"] != "features":
            continue
        written = written_keys[name]
        ignored = sorted(written & (set().union(*LEARNER_READS.values()) - LEARNER_READS[m["learner"]]))
        if ignored:
            raise InputError(
                f"config.models.{name}: learner '{m['learner']}' does not read {', '.join(ignored)} "
                f"(it reads {', '.join(sorted(LEARNER_READS[m['learner']]))})"
            )


def _check_judges(config):
    """What the schema cannot say about a judge: each placeholder once in its template, answer
    strings that differ, a quantization its backend runs."""
    for name, m in config["models"].items():
        if m["kind"] != "judge":
            continue
        counts = {p: m["template"].count(p) for p in JUDGE_PLACEHOLDERS}
        wrong = [f"{p} {n} times" for p, n in counts.items() if n != 1]
        if wrong:
            raise InputError(
                f"config models.{name}.template: must hold each of {', '.join(JUDGE_PLACEHOLDERS)} "
                f"exactly once ({', '.join(wrong)})"
            )
        answers = m["answers"]
        if len(set(answers.values())) < len(answers):
            raise InputError(f"config models.{name}.answers: the three answers must differ ({answers})")
        if m["backend"] == "vllm" and m["quantization"] == "8bit":
            raise InputError(
                f"config models.{name}.quantization: backend vllm runs 4bit (bitsandbytes) or none, "
                "not 8bit: choose one of those, or backend: transformers"
            )


def _check_data_parallel(config):
    """Data-parallel training: not with a split model (until someone needs both), and a global
    step the processes can share."""
    for name, m in config["models"].items():
        parallel = m["compute"].get("data_parallel") if m["kind"] == "llm" else None
        if parallel is None:
            continue
        key = f"models.{name}.compute"
        if m["compute"].get("model_parallel") is not None:
            raise InputError(
                f"config {key}: data_parallel and model_parallel together are not supported yet: a model "
                "split over GPUs trains in one process; keep one of them"
            )
        processes, accum = parallel["gpus"] * parallel["nodes"], m["train"]["grad_accum"]
        if processes < 2:
            raise InputError(
                f"config {key}.data_parallel: gpus 1 on nodes 1 is one process: give gpus 2 or more, "
                "or nodes 2 or more, or leave data_parallel out"
            )
        if accum % processes:
            raise InputError(
                f"config models.{name}.train.grad_accum: {accum} is the global step's accumulation "
                f"(batch_size x grad_accum rows per optimizer step on any number of GPUs) and must be a "
                f"multiple of the {processes} processes of {key}.data_parallel (gpus x nodes): each "
                "process accumulates its share"
            )


def _check_model_parallel(config):
    """A model split over GPUs merges its adapter only into an unquantized base (merged in place)."""
    for name, m in config["models"].items():
        if m["kind"] != "llm" or m["compute"].get("model_parallel") is None:
            continue
        if m["predict"]["merge_lora"] and m["quantization"] != "none":
            raise InputError(
                f"config models.{name}.predict.merge_lora: merging into a {m['quantization']} base is checked "
                f"against one GPU's memory and this model is split (models.{name}.compute.model_parallel): set "
                "merge_lora: false, or quantization: none (merged in place)"
            )


def _check_folds(config):
    n_folds = config["cv"]["n_folds"]
    for name, m in config["models"].items():
        folds = m["predict"]["folds"]
        if folds != "all" and any(f >= n_folds for f in folds):
            raise InputError(
                f"config models.{name}.predict.folds: {list(folds)} names a fold >= cv.n_folds ({n_folds})"
            )
