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

    rule pseudo_label:
        input:
            adapters=test_pass_adapters,
            tokens="results/tokens/{model}/extra.parquet",
            backbone=backbone_input,
        output:
            "results/pseudo/{model}.parquet",
        log:
            "results/logs/pseudo_label/{model}.log",
        benchmark:
            "results/benchmarks/pseudo_label/{model}.tsv"
        wildcard_constraints:
            model=names_regex(LLM_MODELS),
        conda:
            CONDA_ENV
        threads: CONFIG.threads
        resources:
            gpu=CONFIG.predict_gpus,
        params:
            backbone=backbone_spec,
            settings=predict_params,
            options=job_options,
            parts=test_parts,
        script:
            "../scripts/pseudo_label.py"


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


rule infer:
    input:
        adapter=pass_adapter,
        tokens="results/tokens/{model}/test.parquet",
        backbone=backbone_input,
    output:
        "results/test/{model}/{part}.parquet",
    log:
        "results/logs/infer/{model}/{part}.log",
    benchmark:
        "results/benchmarks/infer/{model}/{part}.tsv"
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
        tta=model_tta,
    script:
        "../scripts/infer.py"


rule average_test:
    input:
        fold_test_predictions,
    output:
        "results/test/{model}.parquet",
    log:
        "results/logs/average_test/{model}.log",
    conda:
        CONDA_ENV
    params:
        tta=model_tta,
    script:
        "../scripts/average_test.py"
