"""Rule time_estimate: the test passes' wall time, from each LoRA model timed on a sample of its test rows."""

from dataclasses import replace

from arena_pref import steps
from arena_pref.logs import run_main, setup_logging
from arena_pref.models.backbones import backbone_dir
from arena_pref.models.gpus import claim_gpus
from arena_pref.settings import DEFAULT_JOB_OPTIONS, ModelParallel, PredictSettings, from_params


def job_options(emulation, parallel):
    """The options the model's prediction jobs run with (what the estimate times)."""
    parallel = from_params(ModelParallel, parallel) if parallel else None
    return replace(DEFAULT_JOB_OPTIONS, allow_bf16_emulation=emulation, model_parallel=parallel)


@run_main
def main(sm):
    setup_logging(sm.log[0])
    claim_gpus(sm.resources.gpu)
    p = sm.params
    models = {
        m: {
            "backbone": backbone_dir(p.backbones[m], getattr(sm.input, f"backbone_{m}", None) or None),
            "adapter": getattr(sm.input, f"adapter_{m}"),
            "tokens_parquet": getattr(sm.input, f"tokens_{m}"),
            "settings": from_params(PredictSettings, p.settings[m]),
            "tta": p.tta[m],
            "passes": p.passes[m],
            "full_pass": p.full_pass[m],
            "options": job_options(p.bf16_emulation[m], p.model_parallel[m]),
        }
        for m in p.models
    }
    steps.time_estimate(
        models=models,
        limit_h=p.limit_h,
        margin_h=p.margin_h,
        gpus=p.gpus,
        rows=p.rows,
        out=sm.output[0],
        threads=sm.threads,
    )


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
