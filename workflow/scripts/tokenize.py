"""Rule tokenize: token cache of one split for one model, in both A/B orders."""
from arena_pref import steps
from arena_pref.logs import run_main, setup_logging


@run_main
def main(sm):
    setup_logging(sm.log[0])
    backbone = steps.backbone_dir(sm.params.backbone, sm.input.backbone)
    steps.tokenize_split(sm.input.data, backbone, sm.output[0], sm.params.settings)


main(snakemake)  # noqa: F821
