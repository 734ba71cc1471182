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


from arena_pref import settings
from arena_pref.models import backbones
from arena_pref.kaggle import bundle
from arena_pref.settings import inputs
from arena_pref.train import trained_paths
from arena_pref.errors import InputError

try:
    # validated against workflow/schemas/config.schema.yaml (defaults filled), cross-checked, and
    # each model checked against its backbone: errors are one line naming the key
    CONFIG = settings.load_config(config)
    LLM_MODELS = CONFIG.names(
        "llm"
    )  # fine-tuned backbones: tokenize, train, oof, infer
    FEATURE_MODELS = CONFIG.names("features")  # pair-feature learners: features_fold
    JUDGE_MODELS = CONFIG.names("judge")  # zero-shot judges: judge_score, judge_fold
    # nothing is fetched from a model hub unless a config names a hub backbone
    if any(
        CONFIG.models[m].backbone["kind"] == "hub" for m in LLM_MODELS + JUDGE_MODELS
    ):
        os.environ.pop("HF_HUB_OFFLINE", None)
    else:
        os.environ.update(HF_HUB_OFFLINE="1")
    # every file the run reads from outside the workflow, all missing ones at once
    if _missing := inputs.missing_inputs(CONFIG):
        raise InputError(
            f"{len(_missing)} missing input(s):\n  " + "\n  ".join(_missing)
        )
    for _name in LLM_MODELS:
        backbones.check_model(CONFIG.models[_name])
    for _name in JUDGE_MODELS:
        backbones.check_judge(CONFIG.models[_name])
    # runs from trained models: every fold they read is there
    trained_paths.check(CONFIG)
except InputError as err:
    # snakemake merges --configfile A B key by key (the models of both are kept): say so
    _merged = workflow.overwrite_configfiles or []
    if len(_merged) > 1:
        err = f"{err}\n  (the config is merged from {len(_merged)} files, later ones overriding earlier ones key by key: {', '.join(map(str, _merged))})"
    raise WorkflowError(f"arena-pref: {err}") from None

MODELS = sorted(CONFIG.models)  # the order models are listed in does not matter
MEMBERS = (
    CONFIG.members
)  # blended and submitted (member: false models are teachers only)
LLM_MEMBERS = [
    m for m in LLM_MODELS if m in MEMBERS
]  # what a Kaggle run predicts and times
FOLDS = CONFIG.fold_ids()
CONDA_ENV = "../../envs/arena-pref.yaml"
FEATURE_PHRASES = os.path.join(
    PACKAGE_DIR, "arena_pref", "features", "feature_phrases.yaml"
)
KAGGLE = settings.canonical(CONFIG.kaggle)
# the Kaggle bundle's files: path in the bundle -> path here (inputs of kaggle_bundle)
BUNDLE_FILES = {} if CONFIG.predict_only else bundle.bundle_files(CONFIG)


wildcard_constraints:
    split="train|test|extra",
    fold=r"\d+",
    part=r"fold\d+|average|full",
    scored="test|pseudo",
    model="|".join(MODELS),


def names_regex(names):
    """A wildcard constraint matching exactly these names (nothing when there are none): which rule
    makes a model's OOF and test files depends on its kind."""
    return "|".join(names) if names else "(?!)"


# ---------------------------------------------------------------- input functions


def split_csv(wildcards):
    if CONFIG.predict_only and wildcards.split == "train":
        raise WorkflowError(
            "arena-pref: a run from trained models has no data.train_csv: nothing may read the training rows"
        )
    if wildcards.split == "extra":
        if CONFIG.extra_csv is None:
            raise WorkflowError(
                "arena-pref: results/data/extra.parquet is parsed from data.extra_csv, which this config does not set"
            )
        return CONFIG.extra_csv
    return CONFIG.raw["data"][f"{wildcards.split}_csv"]


def parse_inputs(wildcards):
    """The CSV, and for the test split the parsed training rows (their ids are checked against;
    a run from trained models has none); for the extra rows both (their prompts are dropped).
    """
    inputs = {"csv": split_csv(wildcards)}
    if wildcards.split != "train" and not CONFIG.predict_only:
        inputs["train"] = "results/data/train.parquet"
    if wildcards.split == "extra":
        inputs["test"] = "results/data/test.parquet"
    return inputs


REPORT_TABLES = [
    "position_consistency",
    "members",
    "loss_by_group",
    "post_rules",
    "worst_rows",
]  # results/report/<table>.html: the report's tables (rules position_consistency, diagnostics)


def final_targets():
    """What a plain `snakemake` makes: the submission, and where there are labels the plots and
    the report's tables."""
    if CONFIG.predict_only:
        return ["results/submission.csv"]
    return [
        "results/submission.csv",
        "results/plots/fold_scores.png",
        "results/plots/calibration.png",
        "results/plots/position_consistency.png",
        "results/plots/loss_by_group.png",
        *expand(
            "results/report/{table}.html",
            table=REPORT_TABLES,
        ),
    ]


def backbone_input(wildcards):
    return backbones.rule_input(
        wildcards.model, CONFIG.models[wildcards.model].backbone
    )


def fold_test_predictions(wildcards):
    """A model's test passes: one per predicting fold, or one of the folds' averaged adapter (of
    the test rows, or for a pseudo-label teacher of the extra rows)."""
    return expand(
        "results/{scored}/{model}/{part}.parquet",
        scored=wildcards.scored,
        model=wildcards.model,
        part=CONFIG.test_passes(wildcards.model),
    )


def pass_tokens(wildcards):
    """The rows a pass predicts: the test rows, or the extra rows a teacher pseudo-labels."""
    split = "extra" if wildcards.scored == "pseudo" else "test"
    return f"results/tokens/{wildcards.model}/{split}.parquet"


def model_tta(wildcards):
    return CONFIG.models[wildcards.model].tta


def pass_tta(wildcards):
    """TTA as the model is configured for the test rows; pseudo-labels always average both orders."""
    return wildcards.scored == "pseudo" or model_tta(wildcards)


def pass_adapter(wildcards):
    """The adapter of one test pass: this run's, or a trained directory's."""
    return trained_paths.adapter_dir(CONFIG, wildcards.model, wildcards.part)


def fold_adapters(wildcards):
    """The predicting folds' adapters, to average."""
    return [
        trained_paths.adapter_dir(CONFIG, wildcards.model, f"fold{k}")
        for k in CONFIG.predict_folds(wildcards.model)
    ]


def training_inputs(wildcards):
    """A fold's fold assignment (the full-data adapter reads none: changing the folds does not
    retrain it), what it learns from besides its labels (:func:`teacher_inputs`), and the earlier
    stage's adapter of the same part it starts from (init.from)."""
    inputs = teacher_inputs(wildcards)
    if trained_paths.training_fold(wildcards.part) is not None:
        inputs["folds"] = "results/data/folds.parquet"
    earlier = CONFIG.models[wildcards.model].training.init_from
    if earlier:
        inputs["init_adapter"] = trained_paths.adapter_dir(
            CONFIG, earlier, wildcards.part
        )
    return inputs


def teacher_inputs(wildcards):
    """What a fold learns from besides its labels: the distillation teacher's OOF files of the
    folds this fold trains on (each row's prediction by the teacher fold that held it out; every
    fold's for the full-data model), and the pseudo-label teacher's labels of the extra rows
    with this model's tokens of them."""
    inputs = {}
    distill = CONFIG.teachers(wildcards.model, "distill")
    if distill:
        # None for the full-data model: it trains on every fold's rows
        held_out = trained_paths.training_fold(wildcards.part)
        inputs["teacher_oof"] = [
            f"results/oof/{distill}/fold{k}.parquet" for k in FOLDS if k != held_out
        ]
    pseudo = CONFIG.teachers(wildcards.model, "pseudo")
    if pseudo:
        inputs["pseudo_labels"] = f"results/pseudo/{pseudo}.parquet"
        inputs["extra_tokens"] = f"results/tokens/{wildcards.model}/extra.parquet"
    return inputs


def trained_learner(wildcards):
    return trained_paths.learner_path(CONFIG, wildcards.model, wildcards.fold)


def trained_calibration(wildcards):
    return trained_paths.calibration_path(CONFIG, wildcards.model, wildcards.fold)


def bundle_inputs(wildcards):
    """What the Kaggle bundle copies; a config that cannot be bundled stops here, in the dry run,
    before anything is trained for it."""
    try:
        bundle.check_bundle(CONFIG)
    except InputError as err:
        raise WorkflowError(f"arena-pref: {err}") from None
    return list(BUNDLE_FILES.values())


def estimate_inputs(wildcards):
    """Each LoRA model's test tokens, the adapter of its first submitted test pass and its backbone."""
    inputs = {}
    for m in LLM_MEMBERS:
        inputs[f"tokens_{m}"] = f"results/tokens/{m}/test.parquet"
        inputs[f"adapter_{m}"] = trained_paths.adapter_dir(
            CONFIG, m, CONFIG.submitted_passes(m)[0]
        )
        backbone = backbones.rule_input(m, CONFIG.models[m].backbone)
        if backbone:
            inputs[f"backbone_{m}"] = backbone
    return inputs


def submit_inputs(wildcards):
    """A run from trained models: the blender, the parsed test rows and every model's test file."""
    inputs = {
        "blender": CONFIG.blender_source or "results/blender.json",
        "parsed_test": "results/data/test.parquet",
    }
    for m in MEMBERS:
        inputs.update(member_test_files(m))
    return inputs


def blend_inputs(wildcards):
    """Every model's OOF and test predictions, named by model (the blend is told the names,
    never parses them from paths)."""
    inputs = {
        "data": "results/data/train.parquet",
        "parsed_test": "results/data/test.parquet",
        "folds": "results/data/folds.parquet",
    }
    inputs.update(member_oof_files(wildcards))
    for m in MEMBERS:
        inputs.update(member_test_files(m))
    return inputs


def member_oof_files(wildcards):
    """Each member's OOF files, named ``oof_<model>``."""
    return {
        f"oof_{m}": expand(
            "results/oof/{model}/fold{fold}.parquet", model=m, fold=FOLDS
        )
        for m in MEMBERS
    }


def diagnostics_inputs(wildcards):
    """What the report's tables read: the blend's outputs, the training rows and each member's OOF
    files."""
    return {
        "metrics": "results/metrics.json",
        "oof_blend": "results/oof_blend.parquet",
        "data": "results/data/train.parquet",
        **member_oof_files(wildcards),
    }


def train_benchmarks():
    """The training jobs' benchmark files of each LoRA member, read where they exist (a param, not
    an input: a missing one must not retrain a fold for a timing column)."""
    parts = lambda m: [f"fold{k}" for k in FOLDS] + (
        ["full"] if CONFIG.has_full_fit(m) else []
    )
    return {
        m: [f"results/benchmarks/train/{m}/{p}.tsv" for p in parts(m)]
        for m in LLM_MEMBERS
    }


def member_test_files(model):
    """A member's test predictions this run makes, named ``test_<source>_<model>``: ``folds`` (its
    fold side's passes averaged) and ``full`` (its full-data adapter's pass). A training run makes
    both where there is a full-data model, so blend.test_from picks between them in the blend.
    """
    passes = CONFIG.made_passes(model)
    files = {}
    if any(p != trained_paths.FULL for p in passes):
        files[f"test_folds_{model}"] = f"results/test/{model}.parquet"
    if trained_paths.FULL in passes:
        files[f"test_full_{model}"] = f"results/test/{model}/full.parquet"
    return files


def test_sources():
    """What each member submits for the test rows (blend.test_from): a change reruns the blend only."""
    return {m: list(CONFIG.test_sources(m)) for m in MEMBERS}


# ---------------------------------------------------------------- params
# Every job gets exactly the settings its step reads, as canonical plain data (arena_pref.settings);
# key order in the YAML never matters, and a change reruns only the jobs that read it.


def backbone_spec(wildcards):
    return settings.canonical(CONFIG.models[wildcards.model].backbone)


def tiny_spec(wildcards):
    """A tiny backbone's spec; a judge's also names its causal-LM head, the texts of its template,
    for the tokenizer to learn, and its answers, tokens of their own."""
    spec = backbone_spec(wildcards)
    if wildcards.model in JUDGE_MODELS:
        prompt = CONFIG.models[wildcards.model].scoring.prompt
        spec = {
            **spec,
            "head": "causal_lm",
            "template_texts": [prompt.template, prompt.plain_suffix],
            "answer_words": sorted(prompt.answers.values()),
        }
    return settings.canonical(spec)


def judge_params(wildcards):
    return settings.to_params(CONFIG.models[wildcards.model].scoring)


def judge_both_orders(wildcards):
    """Training rows are judged in both orders (calibration and OOF TTA); test rows where TTA is on."""
    return wildcards.split == "train" or CONFIG.models[wildcards.model].tta


def judge_options(wildcards):
    # an object, not plain data: how the job runs (bf16 emulation) reruns nothing
    return CONFIG.models[wildcards.model].options


def token_params(wildcards):
    return settings.to_params(CONFIG.models[wildcards.model].tokens)


def train_params(wildcards):
    return settings.to_params(CONFIG.models[wildcards.model].training)


def predict_params(wildcards):
    return settings.to_params(CONFIG.models[wildcards.model].prediction)


def train_gpus(wildcards):
    """GPUs a training job claims: one, or a model-parallel or data-parallel model's (all nodes')."""
    return CONFIG.job_gpus(wildcards.model, "train")


def train_nodes(key):
    """A train job's SLURM layout resource ``key`` (nodes, tasks, mpi, tasks_per_gpu): set only for
    a model trained over several nodes (compute.data_parallel.nodes)."""
    return lambda wildcards: CONFIG.train_nodes(wildcards.model)[key]


def predict_gpus(wildcards):
    """GPUs an oof or infer job claims: compute.predict_gpus, or a model-parallel model's."""
    return CONFIG.job_gpus(wildcards.model, "predict")


def estimate_gpus():
    """GPUs the time estimate claims: one, or the most a model-parallel model is split over
    (each model is timed as its jobs run)."""
    return max([1] + [CONFIG.split_gpus(m) for m in LLM_MEMBERS])


def job_options(wildcards):
    # an object, not plain data: Snakemake does not compare it, so changing how a job runs (save
    # and log intervals, bf16 emulation) reruns nothing
    return CONFIG.models[wildcards.model].options


def feature_params(wildcards):
    return settings.to_params(CONFIG.models[wildcards.model].learner)


def blend_tta():
    return settings.canonical({m: CONFIG.models[m].tta for m in MEMBERS})
