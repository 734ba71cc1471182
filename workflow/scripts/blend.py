"""Rule blend: weights (given or fitted on OOF), optional temperature, the submission."""

from arena_pref import settings, steps
from arena_pref.logs import run_main, setup_logging
from arena_pref.predict.prediction_files import submitted_files


@run_main
def main(sm):
    setup_logging(sm.log[0])
    models = sm.params.models
    steps.blend(
        oof_paths={m: list(getattr(sm.input, f"oof_{m}")) for m in models},
        test_paths=submitted_files(sm.input, sm.params.test_sources),
        train_parquet=sm.input.data,
        test_parquet=sm.input.parsed_test,
        folds_parquet=sm.input.folds,
        settings=settings.from_params(settings.BlendSettings, sm.params.blend),
        tta=sm.params.tta,
        submission=sm.output.submission,
        metrics_path=sm.output.metrics,
        oof_blend_path=sm.output.oof_blend,
        blender_path=sm.output.blender,
        run_info_path=sm.output.run_info,
        config=settings.validate(sm.config),
    )


# guarded: a spawned worker process (several GPUs) re-imports this file as __mp_main__, without the
# snakemake object Snakemake's preamble defines
if __name__ == "__main__":
    main(snakemake)  # noqa: F821
