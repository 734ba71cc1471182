"""Rule submit: a run from trained models; a fitted blender applied to this run's test predictions."""

from arena_pref import settings, steps
from arena_pref.logs import run_main, setup_logging
from arena_pref.predict.prediction_files import submitted_files


@run_main
def main(sm):
    setup_logging(sm.log[0])
    steps.submit(
        blender_path=sm.input.blender,
        test_paths=submitted_files(sm.input, sm.params.test_sources),
        test_parquet=sm.input.parsed_test,
        tta=sm.params.tta,
        submission=sm.output.submission,
        run_info_path=sm.output.run_info,
        config=settings.validate(sm.config),
    )


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
