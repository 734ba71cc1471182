"""Rule average_test: one model's test probabilities averaged over its folds."""
from arena_pref import steps
from arena_pref.logs import run_main, setup_logging


@run_main
def main(sm):
    setup_logging(sm.log[0])
    steps.average_test(list(sm.input), sm.output[0], tta=sm.params.tta)


main(snakemake)  # noqa: F821
