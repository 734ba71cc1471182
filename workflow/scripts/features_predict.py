"""Rule features_predict: a trained pair-feature learner's test predictions (runs from trained models)."""

from arena_pref import steps
from arena_pref.logs import run_main, setup_logging


@run_main
def main(sm):
    setup_logging(sm.log[0])
    steps.features_predict(
        model=sm.wildcards.model,
        fold=int(sm.wildcards.fold),
        test_stats=sm.input.test,
        learner=sm.input.learner,
        test_out=sm.output[0],
    )


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
