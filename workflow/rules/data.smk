rule demo_data:
    output:
        train=inputs.DEMO_CSVS["train"],
        test=inputs.DEMO_CSVS["test"],
        test_labels="results/demo/test_labels.csv",
    log:
        "results/logs/demo_data.log",
    conda:
        CONDA_ENV
    params:
        demo=settings.canonical(CONFIG.raw["demo"]),
    script:
        "../scripts/demo_data.py"


rule parse:
    input:
        unpack(parse_inputs),
    output:
        "results/data/{split}.parquet",
    log:
        "results/logs/parse/{split}.log",
    conda:
        CONDA_ENV
    script:
        "../scripts/parse.py"


# training only: a run from trained models has no training rows
if not CONFIG.predict_only:

    rule folds:
        input:
            "results/data/train.parquet",
        output:
            "results/data/folds.parquet",
        log:
            "results/logs/folds.log",
        conda:
            CONDA_ENV
        params:
            n_folds=CONFIG.n_folds,
            seed=CONFIG.cv_seed,
        script:
            "../scripts/folds.py"
