"""Rule diagnostics: the report's tables of the members, the blend's errors and the post-rules."""

from arena_pref import steps
from arena_pref.logs import run_main, setup_logging


@run_main
def main(sm):
    setup_logging(sm.log[0])
    steps.diagnostics(
        metrics_path=sm.input.metrics,
        oof_blend_path=sm.input.oof_blend,
        train_parquet=sm.input.data,
        oof_paths={m: list(getattr(sm.input, f"oof_{m}")) for m in sm.params.models},
        benchmarks=sm.params.benchmarks,
        outputs=dict(sm.output.items()),
    )


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
