"""The models of a config, one dataclass a kind (``llm``, ``features``, ``judge``), each holding
the settings of its rules, and how each is built from the validated config."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from arena_pref.settings.jobs import (
    Batching,
    DataParallel,
    JobOptions,
    Loading,
    Lora,
    ModelParallel,
    PredictSettings,
    Teachers,
    TokenSettings,
    TrainOptions,
    TrainSettings,
)
from arena_pref.settings.params import build


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
    full_fit: bool = False  # a full-data adapter too (its full_fit, or cv.full_fit where that is null)


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

    @property
    def loading(self):
        """How the transformers backend loads the judge (a :class:`Loading`, not a setting of its
        own: its answer logits are read at the last token, whatever the pooling)."""
        return Loading(self.quantization, self.dtype, self.attn_implementation, pooling="last")


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


def build_model(name, m):
    """The settings of model ``name`` from its validated config mapping ``m``, by its ``kind``."""
    builders = {"llm": _lora_model, "features": _feature_model, "judge": _judge_model}
    return builders[m["kind"]](name, m)


def _folds(predict):
    return None if predict["folds"] == "all" else tuple(predict["folds"])


def _judge_model(name, m):
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


def _feature_model(name, m):
    reads = LEARNER_READS[m["learner"]] | {"learner"}
    keys = [k for k in m if k not in ("kind", "predict", "trained", "member")]
    learner = {k: (m[k] if k in reads else None) for k in keys}
    return FeatureModelConfig(
        name=name,
        learner=build(FeatureLearner, learner),
        tta=m["predict"]["tta"],
        folds=_folds(m["predict"]),
        trained=m.get("trained"),
        member=m["member"],
    )


_OPERATIONAL = {"save_steps", "logging_steps"}  # train keys that go to JobOptions


def _lora_model(name, m):
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
            init_from=m["init"] and m["init"]["from"],
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
            data_parallel=_data_parallel(name, m),
        ),
        average_adapters=p["average_adapters"],
        trained=m.get("trained"),
        member=m["member"],
        full_fit=m["full_fit"],
    )


def _teachers(m):
    distill, pseudo = m["distill"], m["pseudo_labels"]
    return Teachers(
        distill=distill and distill["teacher"],
        alpha=float(distill["alpha"]) if distill else 0.0,
        pseudo=pseudo and pseudo["teacher"],
    )


def _data_parallel(name, m):
    parallel = m["compute"].get("data_parallel")
    if parallel is None:
        return None
    return build(DataParallel, {"key": f"models.{name}.compute.data_parallel", **parallel})


def _model_parallel(name, m):
    parallel = m["compute"].get("model_parallel")
    if parallel is None:
        return None
    return build(ModelParallel, {"key": f"models.{name}.compute.model_parallel", **parallel})
