# training only: a run from trained models has no training rows. {part}: fold<k> (trained without
# fold k's rows) or full
if not CONFIG.predict_only:

    rule train:
        input:
            unpack(training_inputs),
            tokens="results/tokens/{model}/train.parquet",
            data="results/data/train.parquet",
            backbone=backbone_input,
        output:
            adapter=directory("results/models/{model}/{part}/adapter"),
            metrics="results/models/{model}/{part}/train_metrics.json",
        log:
            "results/logs/train/{model}/{part}.log",
        benchmark:
            "results/benchmarks/train/{model}/{part}.tsv"
        wildcard_constraints:
            model=names_regex(LLM_MODELS),
            part=r"fold\d+|full",  # full: the full-data adapter (cv.full_fit), on every labelled row
        conda:
            CONDA_ENV
        threads: CONFIG.threads
        resources:
            gpu=train_gpus,
            # over several nodes: one task per node, and the job's own srun (compute.data_parallel)
            nodes=train_nodes("nodes"),
            tasks=train_nodes("tasks"),
            mpi=train_nodes("mpi"),
            tasks_per_gpu=train_nodes("tasks_per_gpu"),
        params:
            backbone=backbone_spec,
            settings=train_params,
            options=job_options,
            # outside the outputs: a failed or killed job keeps its checkpoints and resumes
            checkpoints="results/checkpoints/{model}/{part}",
        script:
            "../scripts/train.py"
