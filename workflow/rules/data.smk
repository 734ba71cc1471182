rule demo_data:
    output:
        train="results/demo/train.csv",
        test="results/demo/test.csv",
    params:
        demo=config["demo"],
    log:
        "results/logs/demo_data.log",
    script:
        "../scripts/demo_data.py"


rule parse:
    input:
        split_csv,
    output:
        "results/data/{split}.parquet",
    log:
        "results/logs/parse/{split}.log",
    script:
        "../scripts/parse.py"


rule folds:
    input:
        "results/data/train.parquet",
    output:
        "results/data/folds.parquet",
    params:
        cv=config["cv"],
    log:
        "results/logs/folds.log",
    script:
        "../scripts/folds.py"
