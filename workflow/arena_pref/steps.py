"""One function per workflow rule, named after it: read the rule's inputs, call the package, write
the outputs.

Workflow scripts (``workflow/scripts/*.py``) only unpack the ``snakemake`` object and call one of
these, so every step can also be run and tested without Snakemake. Modules that import torch or
transformers are imported inside the steps that need them: the light rules start in a second.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

from arena_pref import PROB_COLUMNS, TTA_COLUMNS, atomic
from arena_pref.data import kaggle_csv
from arena_pref.errors import InputError
from arena_pref.train import targets

log = logging.getLogger(__name__)


def demo_data(train_csv, test_csv, test_labels_csv, *, n_train, n_test, seed):
    """The demo's CSVs, and the test rows' labels (hidden on Kaggle; here they score test predictions)."""
    from arena_pref.data.demo import write_demo_csvs

    write_demo_csvs(train_csv, test_csv, n_train, n_test, seed, test_labels_path=test_labels_csv)
    log.info(
        "wrote %d synthetic training rows to %s and %d test rows to %s (their labels: %s)",
        n_train,
        train_csv,
        n_test,
        test_csv,
        test_labels_csv,
    )


def parse(csv, split, out, *, train_parquet=None, test_parquet=None):
    """A Kaggle CSV into a checked table; ``train_parquet`` (test split): the parsed training rows,
    whose ids the test ids should not repeat. Split ``extra``: unlabelled pairs in the test format,
    less those whose prompt the training or test rows have (``train_parquet``, ``test_parquet``)."""
    df = kaggle_csv.read_kaggle_csv(csv, "test" if split == "extra" else split)
    if split == "train":
        kaggle_csv.check_training_labels(df, csv)
    if split == "extra":
        kaggle_csv.warn_unread_labels(csv)
        df = kaggle_csv.unseen_extra_rows(
            df, [kaggle_csv.read_parsed(train_parquet), kaggle_csv.read_parsed(test_parquet)], csv
        )
    elif train_parquet is not None:
        kaggle_csv.warn_shared_ids(kaggle_csv.read_parsed(train_parquet), df, csv)
    kaggle_csv.write_parsed(df, out)
    msg = f"parsed {len(df)} {split} rows from {csv}"
    if "label" in df:
        freq = np.bincount(df["label"], minlength=3) / len(df)
        msg += " (A wins {:.1%}, B wins {:.1%}, tie {:.1%})".format(*freq)
    log.info(msg)


def folds(train_parquet, out, *, n_folds, seed):
    from arena_pref.data.folds import assign_folds

    assignment = assign_folds(kaggle_csv.read_parsed(train_parquet), n_folds, seed)
    atomic.write_parquet(assignment, out)
    log.info("fold sizes: %s", assignment["fold"].value_counts().sort_index().tolist())


def tiny_backbone(train_parquet, out_dir, spec):
    """A tiny backbone from its spec (the model's ``backbone``; a judge's also carries ``head:
    causal_lm``, ``template_texts``, its template and suffix, for the tokenizer to learn, and
    ``answer_words``, its answers)."""
    from arena_pref.data import templates
    from arena_pref.models import loading

    df = kaggle_csv.read_parsed(train_parquet)
    # the tokenizer learns from the training texts only, the template labels included
    texts = [t for col in kaggle_csv.TURN_COLUMNS for turns in df[col] for t in turns if t]
    texts += list(templates.DEFAULT_TEMPLATE.values()) + list(spec.get("template_texts", []))
    options = {k: v for k, v in spec.items() if k not in ("kind", "template_texts")}
    loading.build_tiny_backbone(out_dir, texts, **options)


def judge_score(*, model, split, parsed, backbone, settings, both_orders, options, out, threads=None):
    """Raw answer logits of a judge for one split (:class:`~arena_pref.settings.JudgeSettings`), each
    row as given and, with ``both_orders``, swapped; ``options``: :class:`~arena_pref.settings.JudgeOptions`."""
    import torch

    from arena_pref.judge.zero_shot import score_rows

    if threads:
        torch.set_num_threads(threads)
    rows = kaggle_csv.read_parsed(parsed)
    t0 = time.monotonic()
    scores = score_rows(
        model=model,
        parsed=rows,
        backbone=backbone,
        settings=settings,
        both_orders=both_orders,
        allow_bf16_emulation=options.allow_bf16_emulation,
    )
    atomic.write_parquet(scores, out)
    seconds = time.monotonic() - t0
    log.info(
        "model '%s': %d %s rows judged%s in %.1f s (%.1f rows/s)",
        model,
        len(rows),
        split,
        " in both orders" if both_orders else "",
        seconds,
        len(rows) / max(seconds, 1e-9),
    )


def judge_predict(*, model, fold, test_scores, calibration, tta, test_out):
    """One fold's calibration (``calibration.json`` of :func:`judge_fold`, this run's or an earlier
    run's) applied to the test scores: a member's test pass."""
    from arena_pref.judge.calibration import load, predict_frame

    fitted = load(calibration)
    atomic.write_parquet(predict_frame(fitted, pd.read_parquet(test_scores), tta), test_out)
    log.info(
        "model '%s', fold %d: test rows calibrated by %s (temperature %.3f, biases A %+.3f B %+.3f)",
        model,
        fold,
        calibration,
        fitted.temperature,
        fitted.bias[0],
        fitted.bias[1],
    )


def judge_fold(*, model, fold, train_scores, train_parquet, folds_parquet, oof_out, calibration_out):
    """One fold of a judge: its calibration fitted on the training rows outside the fold
    (:func:`arena_pref.judge.calibration.calibrate_fold`), written as JSON, and the held-out rows'
    OOF file, written like any member's. The test rows: :func:`judge_predict`."""
    from arena_pref.judge.calibration import MAX_T, calibrate_fold
    from arena_pref.metrics import log_loss

    labels = kaggle_csv.read_parsed(train_parquet).set_index("id")["label"]
    assignment = pd.read_parquet(folds_parquet).set_index("id")["fold"]
    oof_frame, calibration, scores = calibrate_fold(pd.read_parquet(train_scores), labels, assignment, fold)
    atomic.write_json({"model": model, "fold": fold, **calibration.to_json()}, calibration_out)
    atomic.write_parquet(oof_frame, oof_out)
    log.info(
        "model '%s', fold %d: temperature %.3f, biases A %+.3f B %+.3f (tie 0); held-out log loss raw %.4f, "
        "calibrated %.4f, with TTA %.4f",
        model,
        fold,
        calibration.temperature,
        calibration.bias[0],
        calibration.bias[1],
        scores["raw"],
        scores["calibrated"],
        log_loss(oof_frame["id"].map(labels).to_numpy(), oof_frame[TTA_COLUMNS]),
    )
    if calibration.temperature >= MAX_T * 0.999:
        log.warning(
            "model '%s', fold %d: the temperature reached its bound (%g): the judge's answer logits carry "
            "no signal on these rows, and its probabilities are the fitted biases alone",
            model,
            fold,
            MAX_T,
        )


def tokenize(parsed, backbone, out, settings, *, model):
    """Token cache of one split for one model (:class:`~arena_pref.settings.TokenSettings`)."""
    from arena_pref.data.token_cache import tokenize_frame
    from arena_pref.models.backbones import check_template_room
    from arena_pref.models.loading import load_tokenizer

    tokenizer = load_tokenizer(backbone)
    check_template_room(model, tokenizer, settings)
    cache = tokenize_frame(
        kaggle_csv.read_parsed(parsed),
        tokenizer,
        strategy=settings.truncation,
        max_length=settings.max_length,
        template=settings.template,
        prompt_max_frac=settings.prompt_max_frac,
    )
    atomic.write_parquet(cache, out)


def _fold_rows(tokens, folds_parquet, fold, *, held_out):
    """The rows of a table with an ``id`` column (token cache, pair statistics) that train on fold
    ``fold`` or, ``held_out``, that it scores."""
    assignment = pd.read_parquet(folds_parquet).set_index("id")["fold"]
    missing = ~tokens["id"].isin(assignment.index)
    if missing.any():
        raise InputError(f"training rows without a fold: ids {tokens['id'][missing].head().tolist()}")
    in_fold = tokens["id"].map(assignment).to_numpy() == fold
    rows = tokens[in_fold if held_out else ~in_fold].reset_index(drop=True)
    if rows.empty:
        raise InputError(f"fold {fold} has no {'validation' if held_out else 'training'} rows")
    return rows


def features(parsed, out):
    """Pair statistics of one split (:func:`arena_pref.features.pair_features.pair_stats`)."""
    from arena_pref.features.pair_features import pair_stats

    t0 = time.monotonic()
    stats = pair_stats(kaggle_csv.read_parsed(parsed))
    atomic.write_parquet(stats, out)
    seconds = time.monotonic() - t0
    log.info(
        "%d pair statistics of %d rows in %.1f s (%.0f rows/s)",
        stats.shape[1] - 1,
        len(stats),
        seconds,
        len(stats) / max(seconds, 1e-9),
    )


def features_fold(
    *,
    model,
    fold,
    train_stats,
    test_stats,
    train_parquet,
    folds_parquet,
    settings,
    oof_out,
    test_out,
    learner_out,
    threads=None,
):
    """One fold's pair-feature learner (:class:`~arena_pref.settings.FeatureLearner`): fitted on
    the other folds' rows in both answer orders; its held-out rows and the test rows predicted in
    both orders, written as an OOF file and a fold test file like any member's."""
    from threadpoolctl import threadpool_limits

    from arena_pref.features import pair_features
    from arena_pref.metrics import log_loss, prior_log_loss

    stats = pd.read_parquet(train_stats)
    labels = kaggle_csv.read_parsed(train_parquet).set_index("id")["label"]
    fit_rows = _fold_rows(stats, folds_parquet, fold, held_out=False)
    held = _fold_rows(stats, folds_parquet, fold, held_out=True)
    test = pd.read_parquet(test_stats)
    y = fit_rows["id"].map(labels).to_numpy()
    with threadpool_limits(threads):
        fitted = pair_features.fit(fit_rows.drop(columns="id"), y, settings)
        oof_frame, test_frame = _predict_both_orders(fitted, held), _predict_both_orders(fitted, test)
    oof_frame.insert(1, "fold", np.int64(fold))
    pair_features.save(fitted, learner_out)
    atomic.write_parquet(oof_frame, oof_out)
    atomic.write_parquet(test_frame, test_out)
    y_held = held["id"].map(labels).to_numpy()
    log.info(
        "model '%s', fold %d: %s learner fitted on %d rows (both orders); held-out log loss %.4f, with TTA "
        "%.4f (class prior %.4f)",
        model,
        fold,
        settings.learner,
        len(fit_rows),
        log_loss(y_held, oof_frame[PROB_COLUMNS]),
        log_loss(y_held, oof_frame[TTA_COLUMNS]),
        prior_log_loss(y_held),
    )


def features_predict(*, model, fold, test_stats, learner, test_out):
    """A run from trained models: one fold's fitted pair-feature learner (``learner.joblib`` of an
    earlier run) predicts the test rows in both orders, as :func:`features_fold` does."""
    from arena_pref.features import pair_features

    fitted = pair_features.load(learner)
    atomic.write_parquet(_predict_both_orders(fitted, pd.read_parquet(test_stats)), test_out)
    log.info("model '%s', fold %d: test rows predicted by the trained learner %s", model, fold, learner)


def average_adapters(*, model, adapters, out):
    """One adapter standing for the folds' (:func:`arena_pref.train.soup.average_adapters`)."""
    from arena_pref.train.soup import average_adapters as average

    summary = average(adapters, out)
    log.info(
        "model '%s': %d fold adapters averaged into %s (LoRA rank %d -> %d, %d tensors)",
        model,
        len(adapters),
        out,
        summary["rank_before"],
        summary["rank_after"],
        summary["tensors"],
    )


def _predict_both_orders(fitted, rows):
    """Rows (A, B) and mirrored (B, A), as the fine-tuned members predict them: plain and TTA
    columns."""
    from arena_pref.features.pair_features import predict
    from arena_pref.predict.prediction_files import frame_from_probs

    stats = rows.drop(columns="id")
    return frame_from_probs(rows, np.vstack([predict(fitted, stats), predict(fitted, stats, swap=True)]), tta=True)


def train(
    *,
    tokens_parquet,
    train_parquet,
    folds_parquet,
    fold,
    backbone,
    settings,
    options,
    checkpoints,
    adapter,
    metrics,
    teacher_oof=(),
    pseudo_labels=None,
    extra_tokens=None,
    init_adapter=None,
    threads=None,
):
    """One fold's adapter, or with ``fold`` None the full-data one (every labelled row)
    (:class:`~arena_pref.settings.TrainSettings`, ``options``: :class:`~arena_pref.settings.JobOptions`).
    ``teacher_oof``: the distillation teacher's OOF files of the other folds (of every fold for
    the full-data adapter); ``pseudo_labels`` and ``extra_tokens``: the pseudo-label teacher's
    predictions of the extra rows and this model's tokens of them; ``init_adapter``: the earlier
    stage's adapter of the same fold (or full), where training starts (init.from)."""
    from arena_pref.data.token_cache import read_tokens
    from arena_pref.train.trainer import train_fold

    tokens = read_tokens(tokens_parquet)
    if fold is None:
        log.info("full-data model: training on all %d labelled rows", len(tokens))
    else:
        tokens = _fold_rows(tokens, folds_parquet, fold, held_out=False)
    labels = tokens["id"].map(kaggle_csv.read_parsed(train_parquet).set_index("id")["label"]).to_numpy()
    rows = _distilled(tokens, labels, settings.teachers, teacher_oof)
    if settings.teachers.pseudo:
        extra = read_tokens(extra_tokens)
        probs = targets.teacher_probs([pseudo_labels], name=settings.teachers.pseudo)
        rows = rows.concat(targets.pseudo(extra["id"], probs, name=settings.teachers.pseudo))
        tokens = pd.concat([tokens, extra[tokens.columns]], ignore_index=True)
        log.info(
            "training on %d labelled rows and %d rows pseudo-labelled by '%s'",
            len(labels),
            len(extra),
            settings.teachers.pseudo,
        )
    train_fold(
        backbone=backbone,
        tokens=tokens,
        targets=rows,
        settings=settings,
        options=options,
        ckpt_dir=checkpoints,
        adapter_dir=adapter,
        metrics_path=metrics,
        init_adapter=init_adapter,
        threads=threads,
    )


def _distilled(tokens, labels, teachers, teacher_oof):
    """The fold's training rows' targets: their labels, and with ``distill`` the teacher's OOF
    probabilities (each from the teacher fold that held the row out)."""
    if not teachers.distill:
        return targets.hard(labels)
    probs = targets.teacher_probs(teacher_oof, name=teachers.distill)
    log.info(
        "distilling '%s' (alpha %.2f) from its OOF predictions in %d file(s)",
        teachers.distill,
        teachers.alpha,
        len(teacher_oof),
    )
    return targets.distilled(tokens["id"], labels, probs, alpha=teachers.alpha, name=teachers.distill)


def _predict(tokens, *, backbone, adapter, settings, options, tta, label, threads):
    """One adapter's probabilities of ``tokens``' rows, as every prediction job makes them."""
    from arena_pref.predict.inference import predict_on_devices

    return predict_on_devices(
        backbone=backbone,
        adapter_dir=adapter,
        tokens=tokens,
        settings=settings,
        tta=tta,
        threads=threads,
        label=label,
        options=options,
    )


def oof(*, model, tokens_parquet, folds_parquet, fold, backbone, adapter, settings, options, out, threads=None):
    """Held-out rows of one fold, predicted in both orders (TTA scored either way)."""
    from arena_pref.data.token_cache import read_tokens

    tokens = _fold_rows(read_tokens(tokens_parquet), folds_parquet, fold, held_out=True)
    pred = _predict(
        tokens,
        backbone=backbone,
        adapter=adapter,
        settings=settings,
        options=options,
        tta=True,
        label=f"model '{model}', fold {fold} (OOF)",
        threads=threads,
    )
    pred.insert(1, "fold", np.int64(fold))
    atomic.write_parquet(pred, out)


def infer(*, model, part, tokens_parquet, backbone, adapter, settings, options, tta, out, scored="test", threads=None):
    """The rows of ``tokens_parquet`` predicted by one adapter (``part``: ``fold<k>``, ``average``
    for the folds' averaged adapter, or ``full`` for the full-data one): the test rows, or (``scored`` pseudo) the extra
    rows a pseudo-label teacher labels."""
    from arena_pref.data.token_cache import read_tokens

    pred = _predict(
        read_tokens(tokens_parquet),
        backbone=backbone,
        adapter=adapter,
        settings=settings,
        options=options,
        tta=tta,
        label=f"model '{model}', {part} ({scored})",
        threads=threads,
    )
    atomic.write_parquet(pred, out)


def average_test(fold_predictions, out, *, tta):
    from arena_pref.predict.prediction_files import average_folds

    preds = [pd.read_parquet(p) for p in fold_predictions]
    atomic.write_parquet(average_folds(preds, tta), out)
    log.info("averaged %d test passes' predictions (TTA %s)", len(preds), "on" if tta else "off")


def blend(
    *,
    oof_paths,
    test_paths,
    train_parquet,
    test_parquet,
    folds_parquet,
    settings,
    tta,
    submission,
    metrics_path,
    oof_blend_path,
    blender_path,
    run_info_path,
    config,
):
    """``oof_paths``: model name -> its folds' OOF files; ``test_paths``: model name -> its test
    files by source, as :func:`_submitted_predictions` reads them (names given, never parsed from
    paths); ``settings``: :class:`~arena_pref.settings.BlendSettings`."""
    from arena_pref.blend.blender import blend_run, write_blender
    from arena_pref.runinfo import run_info

    oof = {m: _member_oof(paths) for m, paths in oof_paths.items()}
    test = _submitted_predictions(test_paths, tta)
    train = kaggle_csv.read_parsed(train_parquet)
    labels = train.set_index("id")["label"]
    assignment = pd.read_parquet(folds_parquet).set_index("id")["fold"]
    sub, metrics, oof_blend, blender = blend_run(
        oof,
        test,
        labels,
        assignment,
        settings,
        use_tta=tta,
        rule_plan=_post_rules(settings.post_rules, train, test_parquet),
    )
    metrics["test_from"] = {m: list(sources) for m, sources in test_paths.items()}
    atomic.write_csv(sub, submission)
    atomic.write_json(metrics, metrics_path)
    atomic.write_parquet(oof_blend, oof_blend_path)
    write_blender(blender, blender_path)
    atomic.write_json(run_info(config), run_info_path)
    b = metrics["blend"]
    log.info(
        "OOF log loss: class prior %.4f; %s; blend (%s) %.4f%s",
        b["guard"]["prior_oof_log_loss"],
        ", ".join(f"{m} {v['log_loss_used']:.4f}" for m, v in metrics["models"].items()),
        b["method"],
        b["log_loss"],
        " (the class prior: the blend did not beat it)" if b["guard"]["fell_back"] else "",
    )


def submit(*, blender_path, test_paths, test_parquet, tta, submission, run_info_path, config):
    """A run from trained models: the submission a blender fitted earlier (``blender.json`` of the
    run that trained them, or one made from the config's weights) makes of this run's test
    predictions."""
    from arena_pref.blend.blender import apply_blender, read_blender
    from arena_pref.blend.post_rules import row_kinds
    from arena_pref.runinfo import run_info

    blender = read_blender(blender_path)
    blender.check(tta, f"the blender {blender_path}")
    test = _submitted_predictions(test_paths, tta)
    kinds = row_kinds(kaggle_csv.read_parsed(test_parquet)) if blender.post_rules else None
    sub = apply_blender(blender, test, kinds)
    atomic.write_csv(sub, submission)
    atomic.write_json(run_info(config), run_info_path)
    log.info(
        "submission of %d test rows from the blender %s (%s of %s, fitted on %s training rows, OOF log loss %s)",
        len(sub),
        blender_path,
        blender.method,
        ", ".join(blender.members),
        blender.n_train,
        blender.oof_log_loss,
    )


def _submitted_predictions(test_paths, tta):
    """``{model: {source: path}}`` (``folds``: the fold side's averaged file; ``full``: the
    full-data pass) -> each member's test prediction (blend.test_from)."""
    from arena_pref.predict.prediction_files import submitted_prediction

    test = {}
    for m, sources in test_paths.items():
        read = {source: pd.read_parquet(path) for source, path in sources.items()}
        test[m] = submitted_prediction(read.get("folds"), read.get("full"), tta[m])
        log.info("model '%s' submits its test prediction from %s", m, " and ".join(sources))
    return test


def _post_rules(rules, train, test_parquet):
    """The plan of the enabled post-rules (:class:`~arena_pref.settings.PostRules`; None when none is)."""
    from arena_pref.blend.post_rules import RULES, PostRulePlan, row_kinds

    enabled = tuple(name for name in RULES if getattr(rules, name))
    if not enabled:
        return None
    return PostRulePlan(
        rules=enabled, kinds_train=row_kinds(train), kinds_test=row_kinds(kaggle_csv.read_parsed(test_parquet))
    )


def plots(*, metrics_path, oof_blend_path, fold_scores_png, calibration_png):
    from arena_pref.blend.plots import plot_calibration, plot_fold_scores

    plot_fold_scores(atomic.read_json(metrics_path), fold_scores_png)
    plot_calibration(pd.read_parquet(oof_blend_path), calibration_png)


TABLE_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:sans-serif;margin:1em}} table{{border-collapse:collapse}}
th,td{{border:1px solid #ccc;padding:4px 8px;text-align:right}} td:nth-child(2){{text-align:left}}</style>
</head><body><h3>{title}</h3>
{table}
</body></html>
"""


def write_table(frame, path, title):
    """``frame`` as a self-contained HTML page for the report (texts escaped, 4 decimals)."""
    import html

    table = frame.to_html(index=False, float_format=lambda x: f"{x:.4f}", na_rep="", escape=True, border=0)
    with atomic.atomic_path(path) as tmp:
        Path(tmp).write_text(TABLE_PAGE.format(title=html.escape(title), table=table), encoding="utf-8")


def _member_oof(paths, labels=None):
    """One member's OOF rows of every fold, with their ``label`` where ``labels`` (id -> label)."""
    frame = pd.concat([pd.read_parquet(p) for p in paths], ignore_index=True)
    return frame if labels is None else frame.assign(label=frame["id"].map(labels).to_numpy())


def _benchmark_seconds(paths):
    """The seconds of the benchmark files that exist (each holds its job's last attempt), or None
    where none does."""
    found = [p for p in paths if Path(p).exists()]
    if len(found) < len(paths):
        log.info("benchmarks missing, left out of the training time: %s", ", ".join(sorted(set(paths) - set(found))))
    return sum(float(pd.read_csv(p, sep="\t")["s"].sum()) for p in found) if found else None


def position_consistency(*, oof_paths, table, plot):
    """Each member's position consistency before TTA (:func:`arena_pref.blend.diagnostics.position_consistency`)."""
    from arena_pref.blend.diagnostics import position_consistency as consistency
    from arena_pref.blend.plots import plot_position_consistency

    rows = []
    for model, paths in oof_paths.items():
        found = consistency(_member_oof(paths))
        rows.append({"model": model, **(found or {"rows": None, "flip_rate": None, "mean_abs_diff_a": None})})
        if found is None:
            log.info("model '%s': no swapped order in its OOF rows (TTA off or symmetric): left out", model)
    frame = pd.DataFrame(rows)
    write_table(frame, table, "Position consistency before TTA (OOF rows)")
    plot_position_consistency(frame, plot)


def diagnostics(*, metrics_path, oof_blend_path, train_parquet, oof_paths, benchmarks, outputs):
    """The report's tables (:mod:`arena_pref.blend.diagnostics`) and the loss-by-group figure."""
    from arena_pref.blend import diagnostics as d
    from arena_pref.blend.plots import plot_loss_by_group

    metrics = atomic.read_json(metrics_path)
    oof_blend, parsed = pd.read_parquet(oof_blend_path), kaggle_csv.read_parsed(train_parquet)
    labels = oof_blend.set_index("id")["label"]
    oof = {m: _member_oof(paths, labels) for m, paths in oof_paths.items()}
    seconds = {m: _benchmark_seconds(paths) for m, paths in benchmarks.items()}
    by_group = d.loss_by_group(oof_blend, parsed)
    write_table(d.member_table(metrics, oof, seconds), outputs["members"], "Members (OOF log loss)")
    write_table(by_group, outputs["by_group"], "The blend's OOF log loss by group")
    write_table(d.post_rule_table(metrics), outputs["post_rules"], "Post-rules")
    write_table(d.worst_rows(oof_blend, parsed), outputs["worst"], f"The {d.WORST_ROWS} worst OOF rows of the blend")
    plot_loss_by_group(by_group, metrics["prior_log_loss"], outputs["plot"])


def kaggle_bundle(*, files, config, kaggle, backbones, out):
    """The Kaggle bundle (:func:`arena_pref.kaggle.bundle.build_bundle`); ``kaggle``: the settings of
    :data:`arena_pref.kaggle.bundle.BUILD_READS`."""
    from arena_pref.kaggle.bundle import build_bundle

    build_bundle(files=files, config=config, kaggle=kaggle, backbones=backbones, out=out)


def time_estimate(*, models, limit_h, margin_h, gpus, rows, out, threads=None):
    """The test passes' wall time (:mod:`arena_pref.kaggle.time_budget`) against the limit, written to ``out``.
    ``models``: name -> dict(backbone, adapter, tokens_parquet, settings, tta, passes, full_pass
    (one of the passes is the full-data adapter's), options: the
    :class:`~arena_pref.settings.JobOptions` its prediction jobs run with), each LoRA model timed on
    a sample of its test rows."""
    # what every prediction job pays before it loads a model: Python, Snakemake's script preamble
    # and the imports of torch, transformers and peft (done here before the clock is read)
    import peft  # noqa: F401
    import psutil

    import arena_pref.predict.inference  # noqa: F401
    from arena_pref.data.token_cache import read_tokens
    from arena_pref.kaggle import time_budget

    startup, report = time.time() - psutil.Process().create_time(), {}
    for name, m in models.items():
        tokens = read_tokens(m["tokens_parquet"])
        measured = {
            "startup_s": startup,
            **time_budget.calibrate(
                backbone=m["backbone"],
                adapter_dir=m["adapter"],
                tokens=time_budget.sample_rows(tokens, rows),
                settings=m["settings"],
                tta=m["tta"],
                options=m["options"],
                threads=threads,
            ),
        }
        n_tokens = int(tokens["input_ids"].map(len).sum())
        parallel = m["options"].model_parallel
        copies = time_budget.model_copies(gpus, parallel)
        seconds = time_budget.model_seconds(measured, tokens=n_tokens, passes=m["passes"], tta=m["tta"], copies=copies)
        report[name] = {
            **measured,
            "test_tokens": n_tokens,
            "passes": m["passes"],
            "full_pass": m["full_pass"],
            "tta": m["tta"],
            "gpus": parallel.gpus if parallel else gpus,
            "copies": copies,
            "seconds": seconds,
        }
        log.info(
            "model '%s': start %.1f s, load %.1f s, %.0f tokens/s on %s; %d passes x %d tokens%s: %.0f s",
            name,
            measured["startup_s"],
            measured["load_s"],
            measured["tokens_per_s"],
            measured["device"],
            m["passes"],
            n_tokens,
            " x 2 orders" if m["tta"] else "",
            seconds,
        )
    result = {**time_budget.verdict(report, limit_h=limit_h, margin_h=margin_h), "models": report}
    atomic.write_json(result, out)
    (log.info if result["fits"] else log.warning)(
        "estimated %.2f h for the test passes, limit %.2f h less a margin of %.2f h: %s",
        result["estimate_h"],
        limit_h,
        margin_h,
        "fits" if result["fits"] else f"does not fit ({result['advice']})",
    )
