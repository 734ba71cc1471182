"""Typed settings built once from the validated config, and the run's outside inputs (rules: common.smk).

Everything a rule or a step reads is here: ``load_config`` validates a config and builds a
:class:`Config`; each job's settings (``TrainSettings``, ``PredictSettings``, ...) travel to its
script as ``params`` (``to_params``) and are rebuilt there (``from_params``).

Modules: :mod:`.config` (the run's :class:`Config`, ``load_config``), :mod:`.models` (each kind
of model), :mod:`.jobs` (the settings of a LoRA model's jobs), :mod:`.params` (settings as rule
params and back), :mod:`.schema` (the JSON schema, ``validate``), :mod:`.checks` (what the schema
cannot express), :mod:`.inputs` (the files a run reads).
"""

from arena_pref.settings.config import BlendSettings, Config, KaggleSettings, PostRules, load_config, model_config
from arena_pref.settings.jobs import (
    DEFAULT_JOB_OPTIONS,
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
from arena_pref.settings.models import (
    LEARNER_READS,
    FeatureLearner,
    FeatureModelConfig,
    JudgeModelConfig,
    JudgeOptions,
    JudgePrompt,
    JudgeSettings,
    ModelConfig,
)
from arena_pref.settings.params import build, canonical, from_params, to_params
from arena_pref.settings.schema import validate

__all__ = [
    "DEFAULT_JOB_OPTIONS",
    "LEARNER_READS",
    "Batching",
    "BlendSettings",
    "Config",
    "FeatureLearner",
    "FeatureModelConfig",
    "JobOptions",
    "JudgeModelConfig",
    "JudgeOptions",
    "JudgePrompt",
    "JudgeSettings",
    "KaggleSettings",
    "Loading",
    "Lora",
    "ModelConfig",
    "DataParallel",
    "ModelParallel",
    "PostRules",
    "PredictSettings",
    "Teachers",
    "TokenSettings",
    "TrainOptions",
    "TrainSettings",
    "build",
    "canonical",
    "from_params",
    "load_config",
    "model_config",
    "to_params",
    "validate",
]
