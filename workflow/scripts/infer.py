"""Rule infer: test probabilities from one adapter, a fold's or the folds' average (with A/B-swap TTA if
configured); or a pseudo-label teacher's probabilities of the extra rows (always with TTA)."""

from arena_pref import steps
from arena_pref.logs import run_main, setup_logging
from arena_pref.models.backbones import backbone_dir
from arena_pref.models.gpus import claim_gpus
from arena_pref.settings import PredictSettings, from_params


@run_main
def main(sm):
    setup_logging(sm.log[0])
    claim_gpus(sm.resources.gpu)  # before anything starts CUDA: -j2 jobs get their own GPUs
    steps.infer(
        model=sm.wildcards.model,
        part=sm.wildcards.part,
        tokens_parquet=sm.input.tokens,
        backbone=backbone_dir(sm.params.backbone, sm.input.backbone),
        adapter=sm.input.adapter,
        settings=from_params(PredictSettings, sm.params.settings),
        options=sm.params.options,
        tta=sm.params.tta,
        scored=sm.wildcards.scored,
        out=sm.output[0],
        threads=sm.threads,
    )


# guarded: a spawned worker process (several GPUs) re-imports this file as __mp_main__, without the
# snakemake object Snakemake's preamble defines
if __name__ == "__main__":
    main(snakemake)  # noqa: F821
