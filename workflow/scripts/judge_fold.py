"""Rule judge_fold: one fold's calibration of a judge and its OOF rows."""

from arena_pref import steps
from arena_pref.logs import run_main, setup_logging


@run_main
def main(sm):
    setup_logging(sm.log[0])
    steps.judge_fold(
        model=sm.wildcards.model,
        fold=int(sm.wildcards.fold),
        train_scores=sm.input.train,
        train_parquet=sm.input.data,
        folds_parquet=sm.input.folds,
        oof_out=sm.output.oof,
        calibration_out=sm.output.calibration,
    )


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
