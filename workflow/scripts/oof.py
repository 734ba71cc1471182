"""Rule oof: one fold's held-out rows predicted with that fold's adapter, both orders."""

from arena_pref import steps
from arena_pref.logs import run_main, setup_logging
from arena_pref.models.backbones import backbone_dir
from arena_pref.models.gpus import claim_gpus
from arena_pref.settings import PredictSettings, from_params


@run_main
def main(sm):
    setup_logging(sm.log[0])
    claim_gpus(sm.resources.gpu)  # before anything starts CUDA: -j2 jobs get their own GPUs
    steps.oof(
        model=sm.wildcards.model,
        tokens_parquet=sm.input.tokens,
        folds_parquet=sm.input.folds,
        fold=int(sm.wildcards.fold),
        backbone=backbone_dir(sm.params.backbone, sm.input.backbone),
        adapter=sm.input.adapter,
        settings=from_params(PredictSettings, sm.params.settings),
        options=sm.params.options,
        out=sm.output[0],
        threads=sm.threads,
    )


# guarded: a spawned worker process (several GPUs) re-imports this file as __mp_main__, without the
# snakemake object Snakemake's preamble defines
if __name__ == "__main__":
    main(snakemake)  # noqa: F821
