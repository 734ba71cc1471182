"""Rule folds: id -> fold, stratified by label and grouped by prompt."""

from arena_pref import steps
from arena_pref.logs import run_main, setup_logging


@run_main
def main(sm):
    setup_logging(sm.log[0])
    steps.folds(sm.input[0], sm.output[0], n_folds=sm.params.n_folds, seed=sm.params.seed)


# guarded: a spawned worker process (several GPUs) re-imports this file as __mp_main__, without the
# snakemake object Snakemake's preamble defines
if __name__ == "__main__":
    main(snakemake)  # noqa: F821
