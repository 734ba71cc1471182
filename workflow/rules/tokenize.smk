rule tiny_backbone:
    input:
        "results/data/train.parquet",
    output:
        directory("results/backbones/{model}"),
    params:
        backbone=backbone_spec,
    log:
        "results/logs/tiny_backbone/{model}.log",
    script:
        "../scripts/tiny_backbone.py"


rule tokenize:
    input:
        data="results/data/{split}.parquet",
        backbone=backbone_input,
    output:
        "results/tokens/{model}/{split}.parquet",
    params:
        backbone=backbone_spec,
        settings=token_settings,
    log:
        "results/logs/tokenize/{model}/{split}.log",
    benchmark:
        "results/benchmarks/tokenize/{model}/{split}.tsv"
    script:
        "../scripts/tokenize.py"
