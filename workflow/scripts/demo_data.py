"""Rule demo_data: synthetic Kaggle-format train.csv / test.csv, and the test rows' labels."""

from arena_pref import steps
from arena_pref.logs import run_main, setup_logging


@run_main
def main(sm):
    setup_logging(sm.log[0])
    demo = sm.params.demo
    steps.demo_data(
        sm.output.train,
        sm.output.test,
        sm.output.test_labels,
        n_train=demo["n_train"],
        n_test=demo["n_test"],
        seed=demo["seed"],
    )


# guarded: a spawned worker process (several GPUs) re-imports this file as __mp_main__, without the
# snakemake object Snakemake's preamble defines
if __name__ == "__main__":
    main(snakemake)  # noqa: F821
