rule oof:
    input:
        adapter="results/models/{model}/fold{fold}/adapter",
        tokens="results/tokens/{model}/train.parquet",
        folds="results/data/folds.parquet",
        backbone=backbone_input,
    output:
        "results/oof/{model}/fold{fold}.parquet",
    params:
        backbone=backbone_spec,
        settings=predict_settings,
    threads: THREADS
    resources:
        gpu=1,
    log:
        "results/logs/oof/{model}/fold{fold}.log",
    benchmark:
        "results/benchmarks/oof/{model}/fold{fold}.tsv"
    script:
        "../scripts/oof.py"


rule infer:
    input:
        adapter="results/models/{model}/fold{fold}/adapter",
        tokens="results/tokens/{model}/test.parquet",
        backbone=backbone_input,
    output:
        "results/test/{model}/fold{fold}.parquet",
    params:
        backbone=backbone_spec,
        settings=predict_settings,
    threads: THREADS
    resources:
        gpu=1,
    log:
        "results/logs/infer/{model}/fold{fold}.log",
    benchmark:
        "results/benchmarks/infer/{model}/fold{fold}.tsv"
    script:
        "../scripts/infer.py"


rule average_test:
    input:
        fold_test_predictions,
    output:
        "results/test/{model}.parquet",
    params:
        tta=blend_tta(),
    log:
        "results/logs/average_test/{model}.log",
    script:
        "../scripts/average_test.py"
