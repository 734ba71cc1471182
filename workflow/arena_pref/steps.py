"""One function per workflow rule, named after it: read the rule's inputs, call the package, write
the outputs.

Workflow scripts (``workflow/scripts/*.py``) only unpack the ``snakemake`` object and call one of
these, so every step can also be run and tested without Snakemake. Modules that import torch or
transformers are imported inside the steps that need them: the light rules start in a second.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from . import data, io
from .errors import InputError

log = logging.getLogger(__name__)


def demo_data(train_csv, test_csv, *, n_train, n_test, seed):
    from .demo import write_demo_csvs

    write_demo_csvs(train_csv, test_csv, n_train, n_test, seed)
    log.info("wrote %d synthetic training rows to %s and %d test rows to %s",
             n_train, train_csv, n_test, test_csv)


def parse(csv, split, out, *, train_parquet=None):
    """A Kaggle CSV into a checked table; ``train_parquet`` (test split): the parsed training rows,
    whose ids the test ids should not repeat."""
    df = data.read_kaggle_csv(csv, split)
    if split == "train":
        data.check_training_labels(df, csv)
    if train_parquet is not None:
        data.warn_shared_ids(data.read_parsed(train_parquet), df, csv)
    data.write_parsed(df, out)
    msg = f"parsed {len(df)} {split} rows from {csv}"
    if "label" in df:
        freq = np.bincount(df["label"], minlength=3) / len(df)
        msg += " (A wins {:.1%}, B wins {:.1%}, tie {:.1%})".format(*freq)
    log.info(msg)


def folds(train_parquet, out, *, n_folds, seed):
    from .folds import assign_folds

    assignment = assign_folds(data.read_parsed(train_parquet), n_folds, seed)
    io.write_parquet(assignment, out)
    log.info("fold sizes: %s", assignment["fold"].value_counts().sort_index().tolist())


def tiny_backbone(train_parquet, out_dir, spec):
    from . import modeling, text

    df = data.read_parsed(train_parquet)
    # the tokenizer learns from the training texts only, the template labels included
    texts = [t for col in data.TURN_COLUMNS for turns in df[col] for t in turns if t]
    texts += list(text.DEFAULT_TEMPLATE.values())
    modeling.build_tiny_backbone(out_dir, texts, **{k: v for k, v in spec.items() if k != "kind"})


def tokenize(parsed, backbone, out, settings, *, model):
    """Token cache of one split for one model (:class:`~arena_pref.settings.TokenSettings`)."""
    from .backbones import check_template_room
    from .modeling import load_tokenizer
    from .tokenize import tokenize_frame

    tokenizer = load_tokenizer(backbone)
    check_template_room(model, tokenizer, settings)
    cache = tokenize_frame(data.read_parsed(parsed), tokenizer, strategy=settings.truncation,
                           max_length=settings.max_length, template=settings.template,
                           prompt_max_frac=settings.prompt_max_frac)
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


def train(*, tokens_parquet, train_parquet, folds_parquet, fold, backbone, settings, options, checkpoints, adapter,
          metrics, threads=None):
    """One fold's adapter (:class:`~arena_pref.settings.TrainSettings`, ``options``:
    :class:`~arena_pref.settings.JobOptions`)."""
    from .tokenize import read_tokens
    from .train import train_fold

    tokens = _fold_rows(read_tokens(tokens_parquet), folds_parquet, fold, held_out=False)
    labels = data.read_parsed(train_parquet).set_index("id")["label"]
    train_fold(backbone=backbone, tokens=tokens, labels=tokens["id"].map(labels).to_numpy(), settings=settings,
               options=options, ckpt_dir=checkpoints, adapter_dir=adapter, metrics_path=metrics, threads=threads)


def oof(*, model, tokens_parquet, folds_parquet, fold, backbone, adapter, settings, options, out, threads=None):
    """Held-out rows of one fold, predicted in both orders (TTA scored either way)."""
    from .predict import predict_on_devices
    from .tokenize import read_tokens

    tokens = _fold_rows(read_tokens(tokens_parquet), folds_parquet, fold, held_out=True)
    pred = predict_on_devices(backbone=backbone, adapter_dir=adapter, tokens=tokens, settings=settings, tta=True,
                              threads=threads, label=f"model '{model}', fold {fold} (OOF)",
                              allow_bf16_emulation=options.allow_bf16_emulation)
    pred.insert(1, "fold", np.int64(fold))
    io.write_parquet(pred, out)


def infer(*, model, fold, tokens_parquet, backbone, adapter, settings, options, tta, out, threads=None):
    from .predict import predict_on_devices
    from .tokenize import read_tokens

    pred = predict_on_devices(backbone=backbone, adapter_dir=adapter, tokens=read_tokens(tokens_parquet),
                              settings=settings, tta=tta, threads=threads, label=f"model '{model}', fold {fold} (test)",
                              allow_bf16_emulation=options.allow_bf16_emulation)
    io.write_parquet(pred, out)


def average_test(fold_predictions, out, *, tta):
    from .predict import average_folds

    preds = [pd.read_parquet(p) for p in fold_predictions]
    io.write_parquet(average_folds(preds, tta), out)
    log.info("averaged %d folds' test predictions (TTA %s)", len(preds), "on" if tta else "off")


def blend(*, oof_paths, test_paths, train_parquet, folds_parquet, settings, tta, submission, metrics_path,
          oof_blend_path, run_info_path, config):
    """``oof_paths``: model name -> its folds' OOF files; ``test_paths``: model name -> its test
    file (names given, never parsed from paths)."""
    from .blend import blend_run
    from .runinfo import run_info

    oof = {m: pd.concat([pd.read_parquet(p) for p in paths], ignore_index=True) for m, paths in oof_paths.items()}
    test = {m: pd.read_parquet(path) for m, path in test_paths.items()}
    labels = data.read_parsed(train_parquet).set_index("id")["label"]
    assignment = pd.read_parquet(folds_parquet).set_index("id")["fold"]
    sub, metrics, oof_blend = blend_run(oof, test, labels, assignment, use_tta=tta, method=settings.method,
                                        weights=settings.weights or None, calibrate=settings.calibrate)
    io.write_csv(sub, submission)
    io.write_json(metrics, metrics_path)
    io.write_parquet(oof_blend, oof_blend_path)
    io.write_json(run_info(config), run_info_path)
    log.info("prior log loss %.4f; %s; blend %.4f with weights %s", metrics["prior_log_loss"],
             ", ".join(f"{m} {v['log_loss_tta' if tta[m] else 'log_loss']:.4f}" for m, v in metrics["models"].items()),
             metrics["blend"]["log_loss"], metrics["blend"]["weights"])


def plots(*, metrics_path, oof_blend_path, fold_scores_png, calibration_png):
    from .plots import plot_calibration, plot_fold_scores

    plot_fold_scores(io.read_json(metrics_path), fold_scores_png)
    plot_calibration(pd.read_parquet(oof_blend_path), calibration_png)
