"""One function per workflow rule: read the rule's inputs, call the package, write outputs.

Workflow scripts (``workflow/scripts/*.py``) only unpack the ``snakemake`` object and call
one of these, so every step can also be run and tested without Snakemake.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from . import blend as blending
from . import data, folds, io, modeling, predict, text, tokenize, train
from .errors import InputError

log = logging.getLogger(__name__)


def demo_data(train_csv, test_csv, *, n_train, n_test, seed):
    from .demo import write_demo_csvs

    write_demo_csvs(train_csv, test_csv, n_train, n_test, seed)
    log.info("wrote %d synthetic training rows to %s and %d test rows to %s",
             n_train, train_csv, n_test, test_csv)


def parse(csv, split, out):
    df = data.read_kaggle_csv(csv, split)
    data.write_parsed(df, out)
    msg = f"parsed {len(df)} {split} rows from {csv}"
    if "label" in df:
        freq = np.bincount(df["label"], minlength=3) / len(df)
        msg += " (A wins {:.1%}, B wins {:.1%}, tie {:.1%})".format(*freq)
    log.info(msg)


def make_folds(train_parquet, out, *, n_folds, seed):
    df = data.read_parsed(train_parquet)
    assignment = folds.assign_folds(df, n_folds, seed)
    io.write_parquet(assignment, out)
    log.info("fold sizes: %s", assignment["fold"].value_counts().sort_index().tolist())


def tiny_backbone(train_parquet, out_dir, spec):
    df = data.read_parsed(train_parquet)
    # the tokenizer learns from the training texts only, the template labels included
    texts = [t for col in data.TURN_COLUMNS for turns in df[col] for t in turns if t]
    texts += list(text.DEFAULT_TEMPLATE.values())
    modeling.build_tiny_backbone(out_dir, texts, **{k: v for k, v in spec.items() if k != "kind"})


def backbone_dir(spec, built):
    """Where a model's weights are: the built directory for tiny models, else from the spec."""
    if spec["kind"] == "hub":
        return spec["name"]
    return modeling.resolve_backbone(spec, built_dir=built or None)


def tokenize_split(parsed, backbone, out, settings):
    df = data.read_parsed(parsed)
    tokenizer = modeling.load_tokenizer(backbone)
    cache = tokenize.tokenize_frame(df, tokenizer, strategy=settings["truncation"],
                                    max_length=settings["max_length"], template=settings["template"],
                                    prompt_max_frac=settings["prompt_max_frac"])
    io.write_parquet(cache, out)


def _fold_rows(tokens, folds_parquet, fold, *, held_out):
    assignment = pd.read_parquet(folds_parquet).set_index("id")["fold"]
    missing = ~tokens["id"].isin(assignment.index)
    if missing.any():
        raise InputError(f"token cache rows without a fold: ids {tokens['id'][missing].head().tolist()}")
    in_fold = tokens["id"].map(assignment).to_numpy() == fold
    rows = tokens[in_fold if held_out else ~in_fold].reset_index(drop=True)
    if rows.empty:
        raise InputError(f"fold {fold} has no {'validation' if held_out else 'training'} rows")
    return rows


def train_fold(*, tokens_parquet, train_parquet, folds_parquet, fold, backbone, settings,
               checkpoints, adapter, metrics, threads=None):
    tokens = _fold_rows(tokenize.read_tokens(tokens_parquet), folds_parquet, fold, held_out=False)
    labels = data.read_parsed(train_parquet).set_index("id")["label"]
    train.train_fold(backbone=backbone, tokens=tokens, labels=tokens["id"].map(labels).to_numpy(),
                     settings=settings, ckpt_dir=checkpoints, adapter_dir=adapter,
                     metrics_path=metrics, threads=threads)


def oof(*, model, tokens_parquet, folds_parquet, fold, backbone, adapter, settings, out, threads=None):
    """Held-out rows of one fold, predicted in both orders (TTA scored either way)."""
    tokens = _fold_rows(tokenize.read_tokens(tokens_parquet), folds_parquet, fold, held_out=True)
    pred = predict.predict_on_devices(backbone=backbone, adapter_dir=adapter, tokens=tokens,
                                      settings=settings, tta=True, threads=threads,
                                      label=f"model '{model}', fold {fold} (OOF)")
    pred.insert(1, "fold", np.int64(fold))
    io.write_parquet(pred, out)


def infer(*, model, fold, tokens_parquet, backbone, adapter, settings, out, threads=None):
    tokens = tokenize.read_tokens(tokens_parquet)
    tta = settings["predict"]["tta"]
    pred = predict.predict_on_devices(backbone=backbone, adapter_dir=adapter, tokens=tokens,
                                      settings=settings, tta=tta, threads=threads,
                                      label=f"model '{model}', fold {fold} (test)")
    io.write_parquet(pred, out)


def average_test(fold_predictions, out, *, tta):
    preds = [pd.read_parquet(p) for p in fold_predictions]
    io.write_parquet(predict.average_folds(preds, tta), out)
    log.info("averaged %d folds' test predictions (TTA %s)", len(preds), "on" if tta else "off")


def _model_of(path):
    # results/oof/{model}/fold{fold}.parquet or results/test/{model}.parquet
    from pathlib import Path

    p = Path(path)
    return p.parent.name if p.parent.name not in ("oof", "test") else p.stem


def blend(*, oof_paths, test_paths, train_parquet, folds_parquet, blend_config, tta, models,
          submission, metrics_path, oof_blend_path, run_info_path, config):
    from .runinfo import run_info

    oof = {m: pd.concat([pd.read_parquet(p) for p in oof_paths if _model_of(p) == m],
                        ignore_index=True) for m in models}
    test = {m: pd.read_parquet(p) for p in test_paths for m in [_model_of(p)] if m in models}
    labels = data.read_parsed(train_parquet).set_index("id")["label"]
    assignment = pd.read_parquet(folds_parquet).set_index("id")["fold"]
    sub, metrics, oof_blend = blending.blend_run(oof, test, labels, assignment, use_tta=tta,
                                      method=blend_config["method"],
                                      weights=blend_config.get("weights") or None,
                                      calibrate=blend_config["calibrate"])
    io.write_csv(sub, submission)
    io.write_json(metrics, metrics_path)
    io.write_parquet(oof_blend, oof_blend_path)
    io.write_json(run_info(config), run_info_path)
    log.info("prior log loss %.4f; %s; blend %.4f with weights %s", metrics["prior_log_loss"],
             ", ".join(f"{m} {v['log_loss_tta' if tta[m] else 'log_loss']:.4f}"
                       for m, v in metrics["models"].items()),
             metrics["blend"]["log_loss"], metrics["blend"]["weights"])


def plots(*, metrics_path, oof_blend_path, fold_scores_png, calibration_png):
    from .plots import plot_calibration, plot_fold_scores

    plot_fold_scores(io.read_json(metrics_path), fold_scores_png)
    plot_calibration(pd.read_parquet(oof_blend_path), calibration_png)
