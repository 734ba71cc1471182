if not CONFIG.predict_only:

    rule kaggle_bundle:
        input:
            bundle_inputs,
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
            kaggle={k: KAGGLE[k] for k in bundle.BUILD_READS},
            backbones=bundle.home_backbones(CONFIG),
            # the workflow and run.py it copies: a code change rebuilds it
            code=bundle.code_fingerprint(),
        script:
            "../scripts/kaggle_bundle.py"


rule time_estimate:
    input:
        unpack(estimate_inputs),
    output:
        "results/time_estimate.json",
    log:
        "results/logs/time_estimate.log",
    benchmark:
        "results/benchmarks/time_estimate.tsv"
    conda:
        CONDA_ENV
    threads: CONFIG.threads
    resources:
        gpu=estimate_gpus(),
    params:
        models=LLM_MEMBERS,
        backbones={
            m: settings.canonical(CONFIG.models[m].backbone) for m in LLM_MEMBERS
        },
        settings={
            m: settings.to_params(CONFIG.models[m].prediction) for m in LLM_MEMBERS
        },
        tta={m: CONFIG.models[m].tta for m in LLM_MEMBERS},
        passes={m: len(CONFIG.submitted_passes(m)) for m in LLM_MEMBERS},
        # one of those passes the full-data adapter's (cv.full_fit): averaging the folds leaves it
        full_pass={m: "full" in CONFIG.submitted_passes(m) for m in LLM_MEMBERS},
        bf16_emulation={
            m: CONFIG.models[m].options.allow_bf16_emulation for m in LLM_MEMBERS
        },
        model_parallel={
            m: settings.canonical(CONFIG.models[m].options.model_parallel)
            for m in LLM_MEMBERS
        },
        limit_h=CONFIG.kaggle.time_limit_h,
        margin_h=CONFIG.kaggle.margin_h,
        gpus=CONFIG.predict_gpus,
        rows=CONFIG.kaggle.calibration_rows,
    script:
        "../scripts/time_estimate.py"
