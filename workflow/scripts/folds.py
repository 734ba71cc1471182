"""Rule folds: id -> fold, stratified by label and grouped by prompt."""
from arena_pref import steps
from arena_pref.logs import run_main, setup_logging


@run_main
def main(sm):
    setup_logging(sm.log[0])
    steps.folds(sm.input[0], sm.output[0], n_folds=sm.params.n_folds, seed=sm.params.seed)


main(snakemake)  # noqa: F821
