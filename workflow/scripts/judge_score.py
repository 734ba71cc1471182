"""Rule judge_score: a zero-shot judge's raw answer logits for one split, each row in both orders."""

from arena_pref import steps
from arena_pref.logs import run_main, setup_logging
from arena_pref.models.backbones import backbone_dir
from arena_pref.models.gpus import claim_gpus
from arena_pref.settings import JudgeSettings, from_params


@run_main
def main(sm):
    setup_logging(sm.log[0])
    claim_gpus(sm.resources.gpu)  # before anything starts CUDA: -j2 jobs get their own GPUs
    steps.judge_score(
        model=sm.wildcards.model,
        split=sm.wildcards.split,
        parsed=sm.input.data,
        backbone=backbone_dir(sm.params.backbone, sm.input.backbone),
        settings=from_params(JudgeSettings, sm.params.settings),
        both_orders=sm.params.both_orders,
        options=sm.params.options,
        out=sm.output[0],
        threads=sm.threads,
    )


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
