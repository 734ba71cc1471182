# training only: a run from trained models has no training rows
if not CONFIG.predict_only:

    rule oof:
        input:
            adapter="results/models/{model}/fold{fold}/adapter",
            tokens="results/tokens/{model}/train.parquet",
            folds="results/data/folds.parquet",
            backbone=backbone_input,
        output:
            "results/oof/{model}/fold{fold}.parquet",
        log:
            "results/logs/oof/{model}/fold{fold}.log",
        benchmark:
            "results/benchmarks/oof/{model}/fold{fold}.tsv"
        wildcard_constraints:
            model=names_regex(LLM_MODELS),
        conda:
            CONDA_ENV
        threads: CONFIG.threads
        resources:
            gpu=predict_gpus,
        params:
            backbone=backbone_spec,
            settings=predict_params,
            options=job_options,
        script:
            "../scripts/oof.py"


rule average_adapters:
    input:
        fold_adapters,
    output:
        directory("results/models/{model}/average/adapter"),
    log:
        "results/logs/average_adapters/{model}.log",
    wildcard_constraints:
        model=names_regex(LLM_MODELS),
    conda:
        CONDA_ENV
    script:
        "../scripts/average_adapters.py"


# scored "test": the test rows; "pseudo": a pseudo-label teacher's passes over the extra rows
rule infer:
    input:
        adapter=pass_adapter,
        tokens=pass_tokens,
        backbone=backbone_input,
    output:
        "results/{scored}/{model}/{part}.parquet",
    log:
        "results/logs/infer/{scored}/{model}/{part}.log",
    benchmark:
        "results/benchmarks/infer/{scored}/{model}/{part}.tsv"
    wildcard_constraints:
        model=names_regex(LLM_MODELS),
    conda:
        CONDA_ENV
    threads: CONFIG.threads
    resources:
        gpu=predict_gpus,
    params:
        backbone=backbone_spec,
        settings=predict_params,
        options=job_options,
        tta=pass_tta,
    script:
        "../scripts/infer.py"


rule average_test:
    input:
        fold_test_predictions,
    output:
        "results/{scored}/{model}.parquet",
    log:
        "results/logs/average_test/{scored}/{model}.log",
    conda:
        CONDA_ENV
    params:
        tta=pass_tta,
    script:
        "../scripts/average_test.py"
