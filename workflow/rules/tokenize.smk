# training only: a run from trained models has no training rows
if not CONFIG.predict_only:

    rule tiny_backbone:
        input:
            "results/data/train.parquet",
        output:
            directory("results/backbones/{model}"),
        log:
            "results/logs/tiny_backbone/{model}.log",
        conda:
            CONDA_ENV
        params:
            backbone=tiny_spec,
        script:
            "../scripts/tiny_backbone.py"


rule tokenize:
    input:
        data="results/data/{split}.parquet",
        backbone=backbone_input,
    output:
        "results/tokens/{model}/{split}.parquet",
    log:
        "results/logs/tokenize/{model}/{split}.log",
    benchmark:
        "results/benchmarks/tokenize/{model}/{split}.tsv"
    wildcard_constraints:
        model=names_regex(LLM_MODELS),
    conda:
        CONDA_ENV
    params:
        backbone=backbone_spec,
        settings=token_params,
    script:
        "../scripts/tokenize.py"
