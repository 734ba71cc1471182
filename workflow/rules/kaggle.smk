if not CONFIG.predict_only:

    rule kaggle_bundle:
        input:
            list(BUNDLE_FILES.values()),
        output:
            directory("results/kaggle_bundle"),
        log:
            "results/logs/kaggle_bundle.log",
        benchmark:
            "results/benchmarks/kaggle_bundle.tsv"
        conda:
            CONDA_ENV
        params:
            destinations=list(BUNDLE_FILES),
            config=settings.canonical(bundle.bundle_config(CONFIG, KAGGLE)),
            kaggle=settings.to_params(CONFIG.kaggle),
        script:
            "../scripts/kaggle_bundle.py"
