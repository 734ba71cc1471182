"""Rule position_consistency: how often each member's predicted winner flips when A and B are swapped."""

from arena_pref import steps
from arena_pref.logs import run_main, setup_logging


@run_main
def main(sm):
    setup_logging(sm.log[0])
    steps.position_consistency(
        oof_paths={m: list(getattr(sm.input, f"oof_{m}")) for m in sm.params.models},
        table=sm.output.table,
        plot=sm.output.plot,
    )


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
