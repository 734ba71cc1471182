rule features:
    input:
        data="results/data/{split}.parquet",
        # the phrase lists behind the refusal and apology counts: editing them reruns this
        phrases=FEATURE_PHRASES,
    output:
        "results/features/{split}.parquet",
    log:
        "results/logs/features/{split}.log",
    benchmark:
        "results/benchmarks/features/{split}.tsv"
    conda:
        CONDA_ENV
    script:
        "../scripts/features.py"


if not CONFIG.predict_only:

    rule features_fold:
        input:
            train="results/features/train.parquet",
            test="results/features/test.parquet",
            data="results/data/train.parquet",
            folds="results/data/folds.parquet",
        output:
            oof="results/oof/{model}/fold{fold}.parquet",
            test="results/test/{model}/fold{fold}.parquet",
            learner="results/models/{model}/fold{fold}/learner.joblib",
        log:
            "results/logs/features_fold/{model}/fold{fold}.log",
        benchmark:
            "results/benchmarks/features_fold/{model}/fold{fold}.tsv"
        wildcard_constraints:
            model=names_regex(FEATURE_MODELS),
        conda:
            CONDA_ENV
        threads: CONFIG.threads
        params:
            settings=feature_params,
        script:
            "../scripts/features_fold.py"

else:

    rule features_predict:
        input:
            test="results/features/test.parquet",
            learner=trained_learner,
        output:
            "results/test/{model}/fold{fold}.parquet",
        log:
            "results/logs/features_predict/{model}/fold{fold}.log",
        wildcard_constraints:
            model=names_regex(FEATURE_MODELS),
        conda:
            CONDA_ENV
        script:
            "../scripts/features_predict.py"
