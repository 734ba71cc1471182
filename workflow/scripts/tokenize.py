"""Rule tokenize: token cache of one split for one model, in both A/B orders."""

from arena_pref import steps
from arena_pref.logs import run_main, setup_logging
from arena_pref.models.backbones import backbone_dir
from arena_pref.settings import TokenSettings, from_params


@run_main
def main(sm):
    setup_logging(sm.log[0])
    steps.tokenize(
        sm.input.data,
        backbone_dir(sm.params.backbone, sm.input.backbone),
        sm.output[0],
        from_params(TokenSettings, sm.params.settings),
        model=sm.wildcards.model,
    )


# guarded: a spawned worker process (several GPUs) re-imports this file as __mp_main__, without the
# snakemake object Snakemake's preamble defines
if __name__ == "__main__":
    main(snakemake)  # noqa: F821
