"""Rule train: one fold's LoRA adapter, or the full-data one; checkpoints resume a killed job."""

from arena_pref import steps
from arena_pref.logs import run_main, setup_logging
from arena_pref.models.backbones import backbone_dir
from arena_pref.models.gpus import claim_gpus
from arena_pref.settings import TrainSettings, from_params
from arena_pref.train.data_parallel import require_slurm
from arena_pref.train.trained_paths import training_fold


@run_main
def main(sm):
    setup_logging(sm.log[0])
    require_slurm(sm.params.options.data_parallel)  # several nodes: before claiming a GPU count
    claim_gpus(sm.resources.gpu)  # before anything starts CUDA: -j2 jobs get their own GPUs
    steps.train(
        tokens_parquet=sm.input.tokens,
        train_parquet=sm.input.data,
        folds_parquet=getattr(sm.input, "folds", None),
        fold=training_fold(sm.wildcards.part),
        backbone=backbone_dir(sm.params.backbone, sm.input.backbone),
        settings=from_params(TrainSettings, sm.params.settings),
        options=sm.params.options,
        checkpoints=sm.params.checkpoints,
        teacher_oof=list(getattr(sm.input, "teacher_oof", [])),
        pseudo_labels=getattr(sm.input, "pseudo_labels", None),
        extra_tokens=getattr(sm.input, "extra_tokens", None),
        init_adapter=getattr(sm.input, "init_adapter", None),
        adapter=sm.output.adapter,
        metrics=sm.output.metrics,
        threads=sm.threads,
    )


# guarded: a spawned worker process (several GPUs) re-imports this file as __mp_main__, without the
# snakemake object Snakemake's preamble defines
if __name__ == "__main__":
    main(snakemake)  # noqa: F821
