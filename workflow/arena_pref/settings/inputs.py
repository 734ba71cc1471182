"""The files a run reads from outside the workflow, checked when it starts.

Snakemake reports a missing input file one at a time, as a MissingInputException of the rule that
reads it, and only once the DAG reaches it. Here every missing one is found before any job runs,
each named by its config key, all in one error: the CSVs of ``data``, each model's backbone
directory or package, and each ``trained`` directory.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

DEMO_CSVS = {"train": "results/demo/train.csv", "test": "results/demo/test.csv"}
"""The CSVs the demo_data rule writes: inputs that need not exist yet."""


def missing_inputs(config):
    """One line for each file or directory ``config`` (:class:`~arena_pref.settings.Config`) reads
    from outside the workflow that is not there; empty when all are."""
    where = f"relative paths start at the working directory, {os.getcwd()}"
    problems = []
    data = {"train_csv": config.train_csv, "test_csv": config.raw["data"]["test_csv"], "extra_csv": config.extra_csv}
    for key, path in data.items():
        if path and path not in DEMO_CSVS.values() and not Path(path).is_file():
            problems.append(f"config data.{key}: no file '{path}' ({where})")
    for name, model in sorted(config.models.items()):
        spec = getattr(model, "backbone", None) or {}
        if spec.get("kind") == "path" and not (Path(spec["path"]) / "config.json").is_file():
            what = "has no config.json" if Path(spec["path"]).is_dir() else "is not a directory"
            problems.append(
                f"config models.{name}.backbone: '{spec['path']}' {what} (a directory written by "
                f"save_pretrained is expected; {where})"
            )
        if spec.get("kind") == "package" and importlib.util.find_spec(spec["package"]) is None:
            problems.append(f"config models.{name}.backbone: the package '{spec['package']}' is not installed")
        if model.trained and not Path(model.trained).is_dir():
            problems.append(f"config models.{name}.trained: no directory '{model.trained}' ({where})")
    return problems
