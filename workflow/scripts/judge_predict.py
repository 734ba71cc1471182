"""Rule judge_predict: one fold's judge calibration (this run's or a trained one) applied to the test scores."""

from arena_pref import steps
from arena_pref.logs import run_main, setup_logging


@run_main
def main(sm):
    setup_logging(sm.log[0])
    steps.judge_predict(
        model=sm.wildcards.model,
        fold=int(sm.wildcards.fold),
        test_scores=sm.input.test,
        calibration=sm.input.calibration,
        tta=sm.params.tta,
        test_out=sm.output[0],
    )


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
