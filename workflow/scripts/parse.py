"""Rule parse: a Kaggle CSV into a checked parquet table."""

from arena_pref import steps
from arena_pref.logs import run_main, setup_logging


@run_main
def main(sm):
    setup_logging(sm.log[0])
    steps.parse(
        sm.input.csv,
        sm.wildcards.split,
        sm.output[0],
        train_parquet=getattr(sm.input, "train", None),
        test_parquet=getattr(sm.input, "test", None),
    )


# guarded: a spawned worker process (several GPUs) re-imports this file as __mp_main__, without the
# snakemake object Snakemake's preamble defines
if __name__ == "__main__":
    main(snakemake)  # noqa: F821
