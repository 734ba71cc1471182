"""Rule blend: weights (given or fitted on OOF), optional temperature, the submission."""
from arena_pref import steps
from arena_pref.logs import run_main, setup_logging


@run_main
def main(sm):
    setup_logging(sm.log[0])
    steps.blend(oof_paths=list(sm.input.oof), test_paths=list(sm.input.test),
                train_parquet=sm.input.data, folds_parquet=sm.input.folds,
                blend_config=sm.params.blend, tta=sm.params.tta, models=sm.params.models,
                submission=sm.output.submission, metrics_path=sm.output.metrics,
                oof_blend_path=sm.output.oof_blend, run_info_path=sm.output.run_info,
                config=sm.config)


main(snakemake)  # noqa: F821
