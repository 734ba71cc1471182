import os
import sys

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version

min_version("9.0")

# The workflow's own package, for scripts run in a fresh process (also under SLURM).
PACKAGE_DIR = os.path.join(workflow.basedir, "workflow")
os.environ.update(
    PYTHONPATH=os.pathsep.join(p for p in (PACKAGE_DIR, os.getenv("PYTHONPATH")) if p)
)
sys.path.insert(0, PACKAGE_DIR)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


if not workflow.overwrite_configfiles:

    configfile: os.path.join(workflow.basedir, "config.yaml")


from arena_pref import backbones, settings
from arena_pref.errors import InputError

try:
    # validated against workflow/schemas/config.schema.yaml (defaults filled), cross-checked, and
    # each model checked against its backbone: errors are one line naming the key
    CONFIG = settings.load_config(config)
    LLM_MODELS = CONFIG.names(
        "llm"
    )  # fine-tuned backbones: tokenize, train, oof, infer
    FEATURE_MODELS = CONFIG.names("features")  # pair-feature learners: features_fold
    # nothing is fetched from a model hub unless a config names a hub backbone
    if any(CONFIG.models[m].backbone["kind"] == "hub" for m in LLM_MODELS):
        os.environ.pop("HF_HUB_OFFLINE", None)
    else:
        os.environ.update(HF_HUB_OFFLINE="1")
    for _name in LLM_MODELS:
        backbones.check_model(CONFIG.models[_name])
except InputError as err:
    raise WorkflowError(f"arena-pref: {err}") from None

MODELS = sorted(CONFIG.models)  # the order models are listed in does not matter
FOLDS = CONFIG.fold_ids()
CONDA_ENV = "../../envs/arena-pref.yaml"
FEATURE_PHRASES = os.path.join(PACKAGE_DIR, "arena_pref", "feature_phrases.yaml")


wildcard_constraints:
    split="train|test",
    fold=r"\d+",
    model="|".join(MODELS),


def names_regex(names):
    """A wildcard constraint matching exactly these names (nothing when there are none): which rule
    makes a model's OOF and test files depends on its kind."""
    return "|".join(names) if names else "(?!)"


# ---------------------------------------------------------------- input functions


def split_csv(wildcards):
    return CONFIG.raw["data"][f"{wildcards.split}_csv"]


def parse_inputs(wildcards):
    """The CSV, and for the test split the parsed training rows (their ids are checked against)."""
    inputs = {"csv": split_csv(wildcards)}
    if wildcards.split == "test":
        inputs["train"] = "results/data/train.parquet"
    return inputs


def backbone_input(wildcards):
    return backbones.rule_input(
        wildcards.model, CONFIG.models[wildcards.model].backbone
    )


def fold_test_predictions(wildcards):
    return expand(
        "results/test/{model}/fold{fold}.parquet",
        model=wildcards.model,
        fold=CONFIG.predict_folds(wildcards.model),
    )


def blend_inputs(wildcards):
    """Every model's OOF and test predictions, named by model (the blend is told the names,
    never parses them from paths)."""
    inputs = {
        "data": "results/data/train.parquet",
        "parsed_test": "results/data/test.parquet",
        "folds": "results/data/folds.parquet",
    }
    for m in MODELS:
        inputs[f"oof_{m}"] = expand(
            "results/oof/{model}/fold{fold}.parquet", model=m, fold=FOLDS
        )
        inputs[f"test_{m}"] = f"results/test/{m}.parquet"
    return inputs


# ---------------------------------------------------------------- params
# Every job gets exactly the settings its step reads, as canonical plain data (settings.py);
# key order in the YAML never matters, and a change reruns only the jobs that read it.


def backbone_spec(wildcards):
    return settings.canonical(CONFIG.models[wildcards.model].backbone)


def token_params(wildcards):
    return settings.to_params(CONFIG.models[wildcards.model].tokens)


def train_params(wildcards):
    return settings.to_params(CONFIG.models[wildcards.model].training)


def predict_params(wildcards):
    return settings.to_params(CONFIG.models[wildcards.model].prediction)


def job_options(wildcards):
    # an object, not plain data: Snakemake does not compare it, so changing how a job runs (save
    # and log intervals, bf16 emulation) reruns nothing
    return CONFIG.models[wildcards.model].options


def model_tta(wildcards):
    return CONFIG.models[wildcards.model].tta


def feature_params(wildcards):
    return settings.to_params(CONFIG.models[wildcards.model].learner)


def blend_tta():
    return settings.canonical({m: CONFIG.models[m].tta for m in MODELS})
