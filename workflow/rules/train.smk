# training only: a run from trained models has no training rows
if not CONFIG.predict_only:

    rule train:
        input:
            unpack(teacher_inputs),
            tokens="results/tokens/{model}/train.parquet",
            data="results/data/train.parquet",
            folds="results/data/folds.parquet",
            backbone=backbone_input,
        output:
            adapter=directory("results/models/{model}/fold{fold}/adapter"),
            metrics="results/models/{model}/fold{fold}/train_metrics.json",
        log:
            "results/logs/train/{model}/fold{fold}.log",
        benchmark:
            "results/benchmarks/train/{model}/fold{fold}.tsv"
        wildcard_constraints:
            model=names_regex(LLM_MODELS),
        conda:
            CONDA_ENV
        threads: CONFIG.threads
        resources:
            gpu=train_gpus,
        params:
            backbone=backbone_spec,
            settings=train_params,
            options=job_options,
            # outside the outputs: a failed or killed job keeps its checkpoints and resumes
            checkpoints="results/checkpoints/{model}/fold{fold}",
        script:
            "../scripts/train.py"
