"""Rule tiny_backbone: a small random model and a tokenizer trained on the training texts."""

from arena_pref import steps
from arena_pref.logs import run_main, setup_logging


@run_main
def main(sm):
    setup_logging(sm.log[0])
    steps.tiny_backbone(sm.input[0], sm.output[0], sm.params.backbone)


# guarded: a spawned worker process (several GPUs) re-imports this file as __mp_main__, without the
# snakemake object Snakemake's preamble defines
if __name__ == "__main__":
    main(snakemake)  # noqa: F821
