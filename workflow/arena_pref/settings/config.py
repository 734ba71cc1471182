"""The run's settings (:class:`Config`), built once from a validated config and read by every rule:
:func:`load_config` validates a config against the schema (filling the defaults), runs the checks a
schema cannot express, and builds the typed settings of each model, the blend and the Kaggle bundle.
"""

from __future__ import annotations

from dataclasses import dataclass

from arena_pref.settings.checks import check
from arena_pref.settings.models import build_model
from arena_pref.settings.params import build
from arena_pref.settings.schema import validate


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
    test_from: str = "full"  # blend.test_from: folds | full | both, for a member with a full-data model

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

    def split_gpus(self, model):
        """GPUs one copy of ``model`` is split over (``compute.model_parallel``), else 1."""
        parallel = self.models[model].options.model_parallel
        return 1 if parallel is None else parallel.gpus

    def job_gpus(self, model, step):
        """GPUs a ``train``, ``oof`` or ``infer`` job of ``model`` claims: a model-parallel model's
        ``gpus`` (one copy split over them); else for training one, or a data-parallel model's
        ``gpus`` x ``nodes`` (one process on each), and for prediction ``compute.predict_gpus`` (one
        copy on each)."""
        split, data_parallel = self.split_gpus(model), self.models[model].options.data_parallel
        if split > 1:
            return split
        if step == "train":
            return 1 if data_parallel is None else data_parallel.processes
        return self.predict_gpus

    def train_nodes(self, model):
        """The SLURM layout of a ``train`` job of ``model`` over several nodes, in
        snakemake-executor-plugin-slurm's resources: ``nodes``, one task on each (``tasks``),
        ``mpi`` so that the job runs its own srun (arena_pref.train.data_parallel), and no
        ``--ntasks-per-gpu`` (``tasks_per_gpu`` 0). None for every key on one node."""
        parallel = self.models[model].options.data_parallel
        if parallel is None or parallel.nodes == 1:
            return dict.fromkeys(("nodes", "tasks", "mpi", "tasks_per_gpu"))
        return {"nodes": parallel.nodes, "tasks": parallel.nodes, "mpi": "srun", "tasks_per_gpu": 0}

    def fold_ids(self):
        return list(range(self.n_folds))

    def predict_folds(self, model):
        folds = self.models[model].folds
        return self.fold_ids() if folds is None else sorted(set(folds))

    def test_passes(self, model):
        """The fold side of a model's test predictions, as named in result paths: ``fold<k>`` for
        each predicting fold, or ``average`` for their averaged adapter (averaged into one file)."""
        if getattr(self.models[model], "average_adapters", False):
            return ["average"]
        return [f"fold{k}" for k in self.predict_folds(model)]

    def has_full_fit(self, model):
        """Whether a LoRA model has a full-data adapter (``full``): its full_fit, or cv.full_fit."""
        return getattr(self.models[model], "full_fit", False)

    def test_sources(self, model):
        """What a member submits for the test rows: ``("folds",)``, ``("full",)`` or both
        (blend.test_from, for a model with a full-data adapter)."""
        if not self.has_full_fit(model):
            return ("folds",)
        return {"folds": ("folds",), "full": ("full",), "both": ("folds", "full")}[self.test_from]

    def submitted_passes(self, model):
        """The test passes the submission reads: the fold side's where it uses the folds, and
        ``full`` where it uses the full-data adapter (what a Kaggle bundle carries and times)."""
        sources = self.test_sources(model)
        return (self.test_passes(model) if "folds" in sources else []) + (["full"] if "full" in sources else [])

    def made_passes(self, model):
        """The test passes this run makes: a training run makes the full-data pass beside the
        folds' whatever blend.test_from says (changing it reruns only the blend); a run from
        trained models only what it submits."""
        if self.predict_only:
            return self.submitted_passes(model)
        return self.test_passes(model) + (["full"] if self.has_full_fit(model) else [])


def load_config(config):
    """Validate ``config`` (a dict as Snakemake reads it) and build the settings every rule reads."""
    written = {name: set(m) if isinstance(m, dict) else set() for name, m in (config.get("models") or {}).items()}
    blend_keys = set(config.get("blend") or {}) if isinstance(config.get("blend"), dict) else set()
    config = validate(config)
    check(config, written_keys=written, written_blend=blend_keys)
    return build_config(config)


def build_config(config):
    """The :class:`Config` of a validated and checked config."""
    blend = {**config["blend"], "weights": {k: float(v) for k, v in config["blend"]["weights"].items()}}
    source = blend.pop("from", None)
    test_from = blend.pop("test_from")
    return Config(
        raw=config,
        models={name: build_model(name, m) for name, m in config["models"].items()},
        blend=build(BlendSettings, blend),
        n_folds=config["cv"]["n_folds"],
        cv_seed=config["cv"]["seed"],
        threads=config["compute"]["threads"],
        predict_gpus=config["compute"]["predict_gpus"],
        kaggle=build(KaggleSettings, config["kaggle"]),
        train_csv=config["data"].get("train_csv"),
        blender_source=source,
        extra_csv=config["data"].get("extra_csv"),
        test_from=test_from,
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
