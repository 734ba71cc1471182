"""Settings: typed views of the validated config, built once, read by every rule and every step.

The schema (``workflow/schemas/config.schema.yaml``) is where every key is documented and where
defaults live; :func:`load_config` validates a config against it (filling the defaults), reports
the first problem in one line naming the key, runs the checks a schema cannot express, and
returns a :class:`Config`. Each rule then receives as ``params`` exactly the slice of settings its
step reads, as a canonical dict (:func:`to_params`: keys sorted at every level), so reordering keys
in a YAML file changes nothing and a change to one model or one rule's settings reruns only what
reads them. Scripts turn a slice back into its typed object with :func:`from_params`.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import typing
from dataclasses import dataclass
from pathlib import Path

import yaml

from arena_pref.errors import InputError

SCHEMA = Path(__file__).resolve().parents[2] / "schemas" / "config.schema.yaml"


# --------------------------------------------------------------------------- typed settings


@dataclass(frozen=True)
class Loading:
    """How a model's backbone is loaded and pooled: shared by training and prediction."""

    quantization: str  # 4bit | 8bit | none (bitsandbytes)
    dtype: str  # compute dtype; training runs in mixed precision in it
    attn_implementation: str  # auto | eager | sdpa | flash_attention_2 | flash_attention_4 | flex_attention | fastest
    pooling: str  # auto | last | mean | cls | pair
    attention_softcap: bool = True  # False: Gemma-2 without attention logit softcapping (SDPA then)


@dataclass(frozen=True)
class ModelParallel:
    """``compute.model_parallel`` of a LoRA model: its backbone split over ``gpus`` GPUs by whole
    layers (:mod:`arena_pref.models.placement`)."""

    key: str  # the setting's config key, named in errors (models.<name>.compute.model_parallel)
    gpus: int
    max_memory_gib: float | None  # weights each GPU may hold; None: its memory less reserve_gib
    reserve_gib: float


@dataclass(frozen=True)
class JobOptions:
    """Settings that change how a job runs, never what it produces. Rules pass this object as is:
    Snakemake compares only plain-data params, so changing these reruns nothing, and checkpoint
    fingerprints leave them out, so a rerun resumes."""

    allow_bf16_emulation: bool
    save_steps: int
    logging_steps: int
    model_parallel: ModelParallel | None = None  # None: the model on one GPU


@dataclass(frozen=True)
class Lora:
    r: int
    alpha: float
    dropout: float
    target_modules: tuple
    layers_to_transform: tuple | None


@dataclass(frozen=True)
class TrainOptions:
    epochs: float
    batch_size: int
    max_tokens_per_batch: int | None
    grad_accum: int
    lr: float
    weight_decay: float
    warmup_steps: int
    scheduler: str
    max_grad_norm: float
    optimizer: str
    gradient_checkpointing: bool
    packing: bool
    swap_augment: bool
    seed: int


@dataclass(frozen=True)
class Teachers:
    """Soft targets besides the labels (schema: ``distill``, ``pseudo_labels``): the teachers' names
    and the weight of the distillation term. Teacher predictions reach the job as inputs."""

    distill: str | None  # the model whose OOF predictions the training rows distil
    alpha: float  # weight of KL(teacher || model) on training rows; 0 without distill
    pseudo: str | None  # the model whose predictions label data.extra_csv's rows


@dataclass(frozen=True)
class TrainSettings:
    """Everything the train rule reads."""

    loading: Loading
    lora: Lora
    train: TrainOptions
    teachers: Teachers


@dataclass(frozen=True)
class Batching:
    """How prediction cuts rows into forward passes (``predict.method`` and its budgets)."""

    method: str
    batch_size: int
    max_tokens_per_batch: int
    max_length: int  # ``fixed`` pads to it; the longest sequence a pass can hold


@dataclass(frozen=True)
class PredictSettings:
    """Everything the oof and infer rules read (TTA is the infer rule's own param: OOF always
    predicts both orders)."""

    loading: Loading
    batching: Batching
    merge_lora: bool
    compile: bool


@dataclass(frozen=True)
class TokenSettings:
    """Everything the tokenize rule reads."""

    max_length: int
    truncation: str
    prompt_max_frac: float
    template: dict


@dataclass(frozen=True)
class ModelConfig:
    """One model of the config: its backbone spec and each rule's slice of its settings."""

    name: str
    backbone: dict
    tokens: TokenSettings
    training: TrainSettings
    prediction: PredictSettings
    tta: bool
    folds: tuple | None  # folds whose adapters predict the test set; None: all
    options: JobOptions
    average_adapters: bool = False  # those folds' adapters averaged into one, one test pass
    trained: str | None = None  # a directory of trained folds from an earlier run (nothing trained)
    member: bool = True  # blended and submitted; False: a teacher only
    kind: str = "llm"


@dataclass(frozen=True)
class FeatureLearner:
    """Everything the features_fold rule reads: the scikit-learn learner over pair features
    (``features.fit``)."""

    learner: str  # hgb | logreg; the settings the other learner reads are None
    max_iter: int
    learning_rate: float | None  # hgb
    max_leaf_nodes: int | None  # hgb
    min_samples_leaf: int | None  # hgb
    l2_regularization: float | None  # hgb
    C: float | None  # logreg
    seed: int | None  # hgb (logreg's solver is deterministic)


LEARNER_READS = {
    "hgb": {"max_iter", "learning_rate", "max_leaf_nodes", "min_samples_leaf", "l2_regularization", "seed"},
    "logreg": {"max_iter", "C"},
}
"""The settings each learner reads: only those reach its jobs' params (changing another reruns nothing)."""


@dataclass(frozen=True)
class FeatureModelConfig:
    """A pair-feature member of the config (``kind: features``)."""

    name: str
    learner: FeatureLearner
    tta: bool
    folds: tuple | None  # folds whose learners predict the test set; None: all
    trained: str | None = None  # a directory of fitted folds from an earlier run (nothing fitted)
    member: bool = True  # blended and submitted; False: a teacher only
    kind: str = "features"


@dataclass(frozen=True)
class JudgePrompt:
    """How a row becomes a judging prompt (:mod:`arena_pref.judge.prompts`)."""

    template: str  # with {prompt}, {response_a}, {response_b} once each
    plain_suffix: str  # after the template where the tokenizer has no chat template
    answers: dict  # a | b | tie -> the answer string whose first token scores that class
    max_length: int
    prompt_max_frac: float


@dataclass(frozen=True)
class JudgeSettings:
    """Everything the judge_score rule reads."""

    backend: str  # transformers | vllm
    quantization: str
    dtype: str
    attn_implementation: str
    max_tokens_per_batch: int  # padded token slots per forward pass (transformers)
    prompt: JudgePrompt


@dataclass(frozen=True)
class JudgeOptions:
    """How a judge_score job runs, never what it produces (not compared as params)."""

    allow_bf16_emulation: bool


@dataclass(frozen=True)
class JudgeModelConfig:
    """A zero-shot judge member of the config (``kind: judge``): scored once per split, its answer
    logits calibrated per fold."""

    name: str
    backbone: dict
    scoring: JudgeSettings
    tta: bool
    folds: tuple | None  # folds whose calibrations predict the test set; None: all
    options: JudgeOptions
    trained: str | None = None  # a directory of fold<k>/calibration.json from an earlier run (nothing fitted)
    member: bool = True  # blended and submitted; False: a teacher only
    kind: str = "judge"


JUDGE_PLACEHOLDERS = ("{prompt}", "{response_a}", "{response_b}")


@dataclass(frozen=True)
class PostRules:
    identical: bool  # identical answers get the frequencies of training rows with identical answers
    empty: bool  # one answer empty: the frequencies of training rows with that answer empty


@dataclass(frozen=True)
class BlendSettings:
    """Everything the blend rule reads."""

    method: str  # stack | weights | optimize
    weights: dict
    stack_C: float
    calibrate: bool
    guard: bool  # fall back to the class prior where the blend does not beat it on OOF
    post_rules: PostRules


@dataclass(frozen=True)
class KaggleSettings:
    """Everything the kaggle_bundle rule reads (schema: ``kaggle``)."""

    input_dir: str  # where Kaggle mounts the bundle
    test_csv: str  # the competition's test.csv there
    backbones: dict  # model -> backbone directory as attached on Kaggle
    wheels: tuple  # distributions bundled as wheels, with their dependencies the image lacks
    python_version: str | None  # the image's Python where it differs from this one
    platform: str | None  # its pip platform tag
    gpus: int
    dtype: str  # the LoRA models' compute dtype there (as_trained: unchanged)
    time_limit_h: float
    margin_h: float  # kept free below the limit for what the estimate leaves out
    calibration_rows: int  # test rows each LoRA model times for the time estimate


@dataclass(frozen=True)
class Config:
    raw: dict  # the validated config, defaults filled (run_info.json records it)
    models: dict  # name -> ModelConfig, FeatureModelConfig or JudgeModelConfig (``kind``), in config order
    blend: BlendSettings
    n_folds: int
    cv_seed: int
    threads: int
    predict_gpus: int
    kaggle: KaggleSettings | None = None
    train_csv: str | None = None  # None: a run from trained models (predict only)
    blender_source: str | None = None  # blend.from: a blender.json fitted by an earlier run
    extra_csv: str | None = None  # data.extra_csv: unlabelled pairs the pseudo-label teachers label

    @property
    def predict_only(self):
        """No training data: every model predicts from its trained directory."""
        return self.train_csv is None

    def teachers(self, model, role):
        """The model ``model`` learns from in ``role`` (``distill`` or ``pseudo``), or None: always
        None in a run from trained models, which trains nothing."""
        settings = getattr(self.models[model], "training", None)
        if self.predict_only or settings is None:
            return None
        return getattr(settings.teachers, role)

    @property
    def members(self):
        """Names of the models blended and submitted (``member``), sorted: teachers-only left out."""
        return sorted(n for n, m in self.models.items() if m.member)

    def names(self, kind):
        """Names of the models of one kind (``llm``, ``features`` or ``judge``), sorted."""
        return sorted(n for n, m in self.models.items() if m.kind == kind)

    def job_gpus(self, model, step):
        """GPUs a ``train``, ``oof`` or ``infer`` job of ``model`` claims: a model-parallel model's
        ``gpus`` (one copy split over them), else one for training and ``compute.predict_gpus``
        for prediction (one copy on each)."""
        parallel = self.models[model].options.model_parallel
        if parallel is not None:
            return parallel.gpus
        return 1 if step == "train" else self.predict_gpus

    def fold_ids(self):
        return list(range(self.n_folds))

    def predict_folds(self, model):
        folds = self.models[model].folds
        return self.fold_ids() if folds is None else sorted(set(folds))

    def test_passes(self, model):
        """The parts that predict a model's test set, as named in result paths: ``fold<k>`` for
        each predicting fold, or ``average`` for their averaged adapter."""
        if getattr(self.models[model], "average_adapters", False):
            return ["average"]
        return [f"fold{k}" for k in self.predict_folds(model)]


_OPERATIONAL = {"save_steps", "logging_steps"}  # train keys that go to JobOptions


def _folds(predict):
    return None if predict["folds"] == "all" else tuple(predict["folds"])


def _teachers(m):
    distill, pseudo = m["distill"], m["pseudo_labels"]
    return Teachers(
        distill=distill and distill["teacher"],
        alpha=float(distill["alpha"]) if distill else 0.0,
        pseudo=pseudo and pseudo["teacher"],
    )


def _model_parallel(name, m):
    parallel = m["compute"].get("model_parallel")
    if parallel is None:
        return None
    key = f"models.{name}.compute.model_parallel"
    if m["predict"]["merge_lora"] and m["quantization"] != "none":
        raise InputError(
            f"config models.{name}.predict.merge_lora: merging into a {m['quantization']} base is checked "
            f"against one GPU's memory and this model is split ({key}): set merge_lora: false, or "
            "quantization: none (merged in place)"
        )
    return build(ModelParallel, {"key": key, **parallel})


def _judge_config(name, m):
    prompt = JudgePrompt(
        template=m["template"],
        plain_suffix=m["plain_suffix"],
        answers=dict(m["answers"]),
        max_length=m["max_length"],
        prompt_max_frac=float(m["prompt_max_frac"]),
    )
    scoring = JudgeSettings(
        backend=m["backend"],
        quantization=m["quantization"],
        dtype=m["dtype"],
        attn_implementation=m["attn_implementation"],
        max_tokens_per_batch=m["max_tokens_per_batch"],
        prompt=prompt,
    )
    return JudgeModelConfig(
        name=name,
        backbone=m["backbone"],
        scoring=scoring,
        tta=m["predict"]["tta"],
        folds=_folds(m["predict"]),
        options=JudgeOptions(m["allow_bf16_emulation"]),
        trained=m.get("trained"),
        member=m["member"],
    )


def _model_config(name, m):
    if m["kind"] == "judge":
        return _judge_config(name, m)
    if m["kind"] == "features":
        reads = LEARNER_READS[m["learner"]]
        learner = build(
            FeatureLearner,
            {
                k: (v if k in reads | {"learner"} else None)
                for k, v in m.items()
                if k not in ("kind", "predict", "trained", "member")
            },
        )
        return FeatureModelConfig(
            name=name,
            learner=learner,
            tta=m["predict"]["tta"],
            folds=_folds(m["predict"]),
            trained=m.get("trained"),
            member=m["member"],
        )
    loading = Loading(**{f.name: m[f.name] for f in dataclasses.fields(Loading)})
    p, t = m["predict"], m["train"]
    return ModelConfig(
        name=name,
        backbone=m["backbone"],
        tokens=TokenSettings(
            max_length=m["max_length"],
            truncation=m["truncation"],
            prompt_max_frac=float(m["prompt_max_frac"]),
            template=m["template"],
        ),
        training=TrainSettings(
            loading=loading,
            lora=build(Lora, m["lora"]),
            train=build(TrainOptions, {k: v for k, v in t.items() if k not in _OPERATIONAL}),
            teachers=_teachers(m),
        ),
        prediction=PredictSettings(
            loading=loading,
            batching=Batching(
                method=p["method"],
                batch_size=p["batch_size"],
                max_tokens_per_batch=p["max_tokens_per_batch"],
                max_length=m["max_length"],
            ),
            merge_lora=p["merge_lora"],
            compile=p["compile"],
        ),
        tta=p["tta"],
        folds=_folds(p),
        options=JobOptions(
            allow_bf16_emulation=m["allow_bf16_emulation"],
            save_steps=t["save_steps"],
            logging_steps=t["logging_steps"],
            model_parallel=_model_parallel(name, m),
        ),
        average_adapters=p["average_adapters"],
        trained=m.get("trained"),
        member=m["member"],
    )


# --------------------------------------------------------------------------- params <-> objects


def canonical(value):
    """``value`` as plain data with dict keys sorted at every level (tuples become lists)."""
    if dataclasses.is_dataclass(value):
        value = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): canonical(value[k]) for k in sorted(value)}
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    return value


def to_params(settings):
    """A settings object as a rule's ``params`` value: canonical plain data, so Snakemake sees
    the same params whatever order the YAML keys came in."""
    return canonical(settings)


def build(cls, data):
    """A settings dataclass from plain data (a config slice or a rule's params): nested settings
    built recursively, lists as tuples; a missing or unknown key is an error."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown settings {sorted(unknown)}")
    kwargs = {}
    for name in names:
        value, hint = data[name], hints[name]
        if dataclasses.is_dataclass(hint):
            value = build(hint, value)
        elif isinstance(value, list):
            value = tuple(value)
        elif float in (hint, *typing.get_args(hint)) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)  # ``epochs: 1`` and ``epochs: 1.0`` are one setting
        kwargs[name] = value
    return cls(**kwargs)


def from_params(cls, params):
    """The settings object a rule's ``params`` value (:func:`to_params`) stands for."""
    return build(cls, params)


# --------------------------------------------------------------------------- validation


def _schema():
    return yaml.safe_load(SCHEMA.read_text(encoding="utf-8"))


def _validator():
    """The schema's validator, extended to fill in defaults (copies: no two places share one)."""
    from jsonschema import Draft202012Validator, validators

    properties = Draft202012Validator.VALIDATORS["properties"]

    def set_defaults(validator, props, instance, schema):
        if isinstance(instance, dict):
            for key, sub in props.items():
                if "default" in sub and key not in instance:
                    instance[key] = copy.deepcopy(sub["default"])
        yield from properties(validator, props, instance, schema)

    return validators.extend(Draft202012Validator, {"properties": set_defaults})(_schema())


def _where(path):
    return "config" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path)


def _one_line(error):
    """A validation error as one line naming the key (and the closest known key for a typo)."""
    from jsonschema.exceptions import best_match

    error = best_match([error])
    if error.validator == "pattern" and "propertyNames" in error.relative_schema_path:
        return (
            f"{_where(error.absolute_path)}: name {error.instance!r} is not allowed: "
            f"{' '.join(error.schema.get('description', error.message).split())}"
        )
    if error.validator in ("additionalProperties", "unevaluatedProperties") and isinstance(error.instance, dict):
        known = set(error.schema.get("properties", {}))
        for branch in error.schema.get("allOf", []):
            known |= set(branch.get("then", {}).get("properties", {}))
        unknown = [k for k in error.instance if k not in known]
        hints = [
            f"unknown key '{k}'"
            + (f" (did you mean '{m[0]}'?)" if (m := difflib.get_close_matches(k, known, 1)) else "")
            for k in unknown
        ]
        if hints:
            return f"{_where(error.absolute_path)}: {'; '.join(hints)}"
    return f"{_where(error.absolute_path)}: {error.message}"


def validate(config):
    """``config`` checked against the schema, with defaults filled in (a copy); the first problem
    raises :class:`InputError` in one line naming the key."""
    from jsonschema.exceptions import best_match

    config = copy.deepcopy(dict(config))
    errors = list(_validator().iter_errors(config))
    # a wrong backbone kind is the error to report, not the keys of the kind meant
    kinds = [e for e in errors if list(e.absolute_path)[-1:] == ["kind"]]
    error = best_match(kinds or errors)
    if error is not None:
        raise InputError(_one_line(error))
    return config


def _check_trained(config, models):
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
    written = config["_written_blend"]
    if "from" in written and written - {"from"}:
        raise InputError(
            f"config blend: from is a fitted blender, used as it is: "
            f"{', '.join(sorted(written - {'from'}))} would be ignored; keep from alone"
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


def _teacher_of(m, role):
    return (m.get(role) or {}).get("teacher")


def _check_teachers(config):
    """Teachers name other models of this config, in an order training can follow (no model taught,
    through any chain, by itself); pseudo-label teachers are LoRA models (they predict extra rows
    from tokens), and data.extra_csv is given exactly when some model reads it."""
    models = config["models"]
    for name, m in models.items():
        for role in ("distill", "pseudo_labels"):
            teacher = _teacher_of(m, role)
            if teacher is None:
                continue
            where = f"config models.{name}.{role}.teacher"
            if teacher not in models:
                hint = difflib.get_close_matches(teacher, models, 1)
                raise InputError(
                    f"{where}: no model named {teacher!r} in this config"
                    + (f" (did you mean {hint[0]!r}?)" if hint else "")
                )
            if teacher == name:
                raise InputError(f"{where}: a model cannot be its own teacher")
            if role == "pseudo_labels" and models[teacher]["kind"] != "llm":
                raise InputError(
                    f"{where}: {teacher!r} is a {models[teacher]['kind']} model; pseudo-labels come "
                    "from a LoRA model's fold adapters (kind llm)"
                )
    _check_no_teacher_cycle(models)
    if not any(m["member"] for m in models.values()):
        raise InputError("config models: every model has member: false: nothing would be submitted")
    taught_by = {_teacher_of(m, role) for m in models.values() for role in ("distill", "pseudo_labels")}
    idle = [n for n, m in models.items() if not m["member"] and n not in taught_by]
    if idle:
        raise InputError(
            f"config models.{idle[0]}.member: false, and no model learns from it (distill or "
            "pseudo_labels): it would be trained for nothing"
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
        for role in ("distill", "pseudo_labels"):
            teacher = _teacher_of(models[name], role)
            if teacher in path:
                cycle = " -> ".join(path[path.index(teacher) :] + [teacher])
                raise InputError(
                    f"config models: the teachers form a cycle ({cycle}): a teacher's predictions "
                    "must exist before its student trains"
                )
            if teacher in models:
                visit(teacher, [*path, teacher])

    for name in models:
        visit(name, [name])


def _check_learner_keys(config):
    """A key the member's learner does not read (``C`` for hgb, say) is an error: it would be
    ignored without a word. Checked on the config as written, before defaults fill every key."""
    for name, m in config["models"].items():
        if m["kind"] != "features":
            continue
        written = config["_written_keys"][name]
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


def load_config(config):
    """Validate ``config`` (a dict as Snakemake reads it) and build the settings every rule reads."""
    written = {name: set(m) if isinstance(m, dict) else set() for name, m in (config.get("models") or {}).items()}
    blend_keys = set(config.get("blend") or {}) if isinstance(config.get("blend"), dict) else set()
    config = validate(config)
    _check_learner_keys({"models": config["models"], "_written_keys": written})
    _check_judges(config)
    _check_trained({**config, "_written_blend": set(blend_keys)}, list(config["models"]))
    _check_blend(config, [n for n, m in config["models"].items() if m["member"]])
    if config["data"].get("train_csv") is not None:
        _check_teachers(config)
    n_folds = config["cv"]["n_folds"]
    models = {name: _model_config(name, m) for name, m in config["models"].items()}
    for m in models.values():
        if m.folds is not None and any(f >= n_folds for f in m.folds):
            raise InputError(
                f"config models.{m.name}.predict.folds: {list(m.folds)} names a fold >= cv.n_folds ({n_folds})"
            )
    blend = {**config["blend"], "weights": {k: float(v) for k, v in config["blend"]["weights"].items()}}
    source = blend.pop("from", None)
    return Config(
        raw=config,
        models=models,
        blend=build(BlendSettings, blend),
        n_folds=n_folds,
        cv_seed=config["cv"]["seed"],
        threads=config["compute"]["threads"],
        predict_gpus=config["compute"]["predict_gpus"],
        kaggle=build(KaggleSettings, config["kaggle"]),
        train_csv=config["data"].get("train_csv"),
        blender_source=source,
        extra_csv=config["data"].get("extra_csv"),
    )


def model_config(model, name="model", **config):
    """One :class:`ModelConfig` (or :class:`FeatureModelConfig`) from a model's config mapping,
    validated and filled as the workflow does (for tests and benchmarks: the same path as a user's
    config)."""
    base = {
        "data": {"train_csv": "train.csv", "test_csv": "test.csv"},
        "models": {name: model},
        "blend": {"method": "weights", "weights": {name: 1.0}},
    }
    return load_config({**base, **config}).models[name]
