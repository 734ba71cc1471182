"""Rule blender_from_weights: runs from trained models without a fitted blender: the config's weights."""

from arena_pref.blend.blender import Blender, write_blender
from arena_pref.logs import run_main, setup_logging


@run_main
def main(sm):
    setup_logging(sm.log[0])
    write_blender(Blender.from_weights(sm.params.weights, sm.params.tta), sm.output[0])


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
