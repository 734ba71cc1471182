"""Rule average_test: one model's test probabilities averaged over its folds."""

from arena_pref import steps
from arena_pref.logs import run_main, setup_logging


@run_main
def main(sm):
    setup_logging(sm.log[0])
    steps.average_test(list(sm.input), sm.output[0], tta=sm.params.tta)


# guarded: a spawned worker process (several GPUs) re-imports this file as __mp_main__, without the
# snakemake object Snakemake's preamble defines
if __name__ == "__main__":
    main(snakemake)  # noqa: F821
