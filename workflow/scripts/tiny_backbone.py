"""Rule tiny_backbone: a small random model and a tokenizer trained on the training texts."""
from arena_pref import steps
from arena_pref.logs import run_main, setup_logging


@run_main
def main(sm):
    setup_logging(sm.log[0])
    steps.tiny_backbone(sm.input[0], sm.output[0], sm.params.backbone)


main(snakemake)  # noqa: F821
