"""Rule kaggle_bundle: the trained models, the blender, the workflow and the wheels, in one directory for Kaggle."""

from arena_pref import steps
from arena_pref.logs import run_main, setup_logging


@run_main
def main(sm):
    setup_logging(sm.log[0])
    steps.kaggle_bundle(
        files=dict(zip(sm.params.destinations, sm.input)),
        config=sm.params.config,
        kaggle=sm.params.kaggle,
        backbones=sm.params.backbones,
        out=sm.output[0],
    )


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
