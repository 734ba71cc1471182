if not CONFIG.predict_only:

    rule blend:
        input:
            unpack(blend_inputs),
        output:
            submission="results/submission.csv",
            metrics="results/metrics.json",
            oof_blend="results/oof_blend.parquet",
            blender="results/blender.json",
            run_info="results/run_info.json",
        log:
            "results/logs/blend.log",
        conda:
            CONDA_ENV
        params:
            blend=settings.to_params(CONFIG.blend),
            tta=blend_tta(),
            models=MEMBERS,
            test_sources=test_sources(),
        script:
            "../scripts/blend.py"

    rule plots:
        input:
            metrics="results/metrics.json",
            oof_blend="results/oof_blend.parquet",
        output:
            fold_scores=report(
                "results/plots/fold_scores.png",
                caption="../report/fold_scores.rst",
                category="Scores",
            ),
            calibration=report(
                "results/plots/calibration.png",
                caption="../report/calibration.rst",
                category="Calibration",
            ),
        log:
            "results/logs/plots.log",
        conda:
            CONDA_ENV
        script:
            "../scripts/plots.py"

else:

    rule submit:
        input:
            unpack(submit_inputs),
        output:
            submission="results/submission.csv",
            run_info="results/run_info.json",
        log:
            "results/logs/submit.log",
        conda:
            CONDA_ENV
        params:
            models=MEMBERS,
            tta=blend_tta(),
            test_sources=test_sources(),
        script:
            "../scripts/submit.py"

    rule blender_from_weights:
        output:
            "results/blender.json",
        log:
            "results/logs/blender_from_weights.log",
        conda:
            CONDA_ENV
        params:
            weights=settings.canonical(CONFIG.blend.weights),
            tta=blend_tta(),
        script:
            "../scripts/blender_from_weights.py"
