"""Rule plots: per-fold scores and calibration figures for the report."""

from arena_pref import steps
from arena_pref.logs import run_main, setup_logging


@run_main
def main(sm):
    setup_logging(sm.log[0])
    steps.plots(
        metrics_path=sm.input.metrics,
        oof_blend_path=sm.input.oof_blend,
        fold_scores_png=sm.output.fold_scores,
        calibration_png=sm.output.calibration,
    )


# guarded: a spawned worker process (several GPUs) re-imports this file as __mp_main__, without the
# snakemake object Snakemake's preamble defines
if __name__ == "__main__":
    main(snakemake)  # noqa: F821
