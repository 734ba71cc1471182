"""Rule features_fold: one fold's pair-feature learner, its OOF rows and its test predictions."""

from arena_pref import steps
from arena_pref.logs import run_main, setup_logging
from arena_pref.settings import FeatureLearner, from_params


@run_main
def main(sm):
    setup_logging(sm.log[0])
    steps.features_fold(
        model=sm.wildcards.model,
        fold=int(sm.wildcards.fold),
        train_stats=sm.input.train,
        test_stats=sm.input.test,
        train_parquet=sm.input.data,
        folds_parquet=sm.input.folds,
        settings=from_params(FeatureLearner, sm.params.settings),
        threads=sm.threads,
        oof_out=sm.output.oof,
        test_out=sm.output.test,
        learner_out=sm.output.learner,
    )


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
