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

    # the members' OOF rows alone: a blend change does not redraw it
    rule position_consistency:
        input:
            unpack(member_oof_files),
        output:
            table=report(
                "results/report/position_consistency.html",
                caption="../report/position_consistency.rst",
                category="Members",
            ),
            plot=report(
                "results/plots/position_consistency.png",
                caption="../report/position_consistency.rst",
                category="Members",
            ),
        log:
            "results/logs/position_consistency.log",
        conda:
            CONDA_ENV
        params:
            models=MEMBERS,
        script:
            "../scripts/position_consistency.py"

    rule diagnostics:
        input:
            unpack(diagnostics_inputs),
        output:
            members=report(
                "results/report/members.html",
                caption="../report/members.rst",
                category="Members",
            ),
            by_group=report(
                "results/report/loss_by_group.html",
                caption="../report/loss_by_group.rst",
                category="Errors",
            ),
            plot=report(
                "results/plots/loss_by_group.png",
                caption="../report/loss_by_group.rst",
                category="Errors",
            ),
            post_rules=report(
                "results/report/post_rules.html",
                caption="../report/post_rules.rst",
                category="Errors",
            ),
            worst=report(
                "results/report/worst_rows.html",
                caption="../report/worst_rows.rst",
                category="Errors",
            ),
        log:
            "results/logs/diagnostics.log",
        conda:
            CONDA_ENV
        params:
            models=MEMBERS,
            benchmarks=train_benchmarks(),
        script:
            "../scripts/diagnostics.py"

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
