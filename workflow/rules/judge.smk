# zero-shot judges (kind: judge): every row scored once per split, then calibrated per fold; the
# test rows are scored and calibrated only for a member (a teacher-only judge's students read its OOF)


rule judge_score:
    input:
        data="results/data/{split}.parquet",
        backbone=backbone_input,
    output:
        "results/judge/{model}/{split}.parquet",
    log:
        "results/logs/judge_score/{model}/{split}.log",
    benchmark:
        "results/benchmarks/judge_score/{model}/{split}.tsv"
    wildcard_constraints:
        model=names_regex(JUDGE_MODELS),
    conda:
        CONDA_ENV
    threads: CONFIG.threads
    resources:
        gpu=1,
    params:
        backbone=backbone_spec,
        settings=judge_params,
        both_orders=judge_both_orders,
        options=judge_options,
    script:
        "../scripts/judge_score.py"


if not CONFIG.predict_only:

    rule judge_fold:
        input:
            train="results/judge/{model}/train.parquet",
            data="results/data/train.parquet",
            folds="results/data/folds.parquet",
        output:
            oof="results/oof/{model}/fold{fold}.parquet",
            calibration="results/models/{model}/fold{fold}/calibration.json",
        log:
            "results/logs/judge_fold/{model}/fold{fold}.log",
        wildcard_constraints:
            model=names_regex(JUDGE_MODELS),
        conda:
            CONDA_ENV
        script:
            "../scripts/judge_fold.py"


# the calibration of this run's judge_fold, or of a trained directory (a run from trained models)
rule judge_predict:
    input:
        test="results/judge/{model}/test.parquet",
        calibration=trained_calibration,
    output:
        "results/test/{model}/fold{fold}.parquet",
    log:
        "results/logs/judge_predict/{model}/fold{fold}.log",
    wildcard_constraints:
        model=names_regex(JUDGE_MODELS),
    conda:
        CONDA_ENV
    params:
        tta=model_tta,
    script:
        "../scripts/judge_predict.py"
