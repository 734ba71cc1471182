import os
import sys

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version, validate

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


validate(config, os.path.join(workflow.basedir, "workflow/schemas/config.schema.yaml"))

MODELS = list(config["models"])
FOLDS = list(range(config["cv"]["n_folds"]))
THREADS = config["compute"]["threads"]
PREDICT_GPUS = config["compute"]["predict_gpus"]
CONDA_ENV = "../../envs/arena-pref.yaml"


wildcard_constraints:
    split="train|test",
    fold=r"\d+",
    model="|".join(MODELS),


def check_config():
    """Cross-field checks the schema cannot express; errors name the key."""
    # nothing is fetched from a model hub unless a config names a hub backbone
    if any(config["models"][m]["backbone"]["kind"] == "hub" for m in MODELS):
        os.environ.pop("HF_HUB_OFFLINE", None)
    else:
        os.environ.update(HF_HUB_OFFLINE="1")
    blend = config["blend"]
    if blend["method"] == "weights":
        missing = [m for m in MODELS if m not in blend["weights"]]
        unknown = [m for m in blend["weights"] if m not in MODELS]
        if missing or unknown:
            raise WorkflowError(
                f"config blend.weights must name every model: missing {missing}, unknown {unknown}"
            )
        if sum(blend["weights"].values()) <= 0:
            raise WorkflowError(
                "config blend.weights: at least one weight must be positive"
            )
    for m in MODELS:
        folds = config["models"][m]["predict"]["folds"]
        if folds != "all" and any(f >= len(FOLDS) for f in folds):
            raise WorkflowError(
                f"config models.{m}.predict.folds: {folds} names a fold >= cv.n_folds"
            )


check_config()


# ---------------------------------------------------------------- input functions


def split_csv(wildcards):
    return config["data"][f"{wildcards.split}_csv"]


def backbone_input(wildcards):
    """The backbone directory when the workflow builds it or it is a local path."""
    spec = config["models"][wildcards.model]["backbone"]
    if spec["kind"] == "tiny":
        return f"results/backbones/{wildcards.model}"
    if spec["kind"] == "path":
        return spec["path"]
    return []


def predict_folds(model):
    folds = config["models"][model]["predict"]["folds"]
    return FOLDS if folds == "all" else sorted(set(folds))


def fold_test_predictions(wildcards):
    return expand(
        "results/test/{model}/fold{fold}.parquet",
        model=wildcards.model,
        fold=predict_folds(wildcards.model),
    )


# ---------------------------------------------------------------- params (config slices)
# Each rule sees only the part of the config it depends on, so changing one model's
# settings reruns that model's jobs only, and changing the blend reruns the blend only.


def model_config(model, *keys):
    return {k: config["models"][model][k] for k in keys}


def backbone_spec(wildcards):
    return config["models"][wildcards.model]["backbone"]


def token_settings(wildcards):
    return model_config(
        wildcards.model, "max_length", "truncation", "prompt_max_frac", "template"
    )


def train_settings(wildcards):
    return model_config(
        wildcards.model,
        "quantization",
        "dtype",
        "allow_bf16_emulation",
        "attn_implementation",
        "pooling",
        "lora",
        "train",
    )


def predict_settings(wildcards):
    return model_config(
        wildcards.model,
        "quantization",
        "dtype",
        "allow_bf16_emulation",
        "attn_implementation",
        "pooling",
        "max_length",
        "predict",
    )


def blend_tta():
    return {m: config["models"][m]["predict"]["tta"] for m in MODELS}
