"""Rule features: the pair statistics of one split's rows (lengths, markdown, refusals, overlap)."""

from arena_pref import steps
from arena_pref.logs import run_main, setup_logging


@run_main
def main(sm):
    setup_logging(sm.log[0])
    steps.features(sm.input.data, sm.output[0])


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
