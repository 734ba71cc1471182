"""Rule average_adapters: the predicting folds' LoRA adapters averaged into one (one test pass)."""

from arena_pref import steps
from arena_pref.logs import run_main, setup_logging


@run_main
def main(sm):
    setup_logging(sm.log[0])
    steps.average_adapters(model=sm.wildcards.model, adapters=list(sm.input), out=sm.output[0])


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
