"""What made the outputs: package versions, the config, the workflow's git commit."""

from __future__ import annotations

import importlib.metadata
import platform
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

PACKAGES = (
    "arena-pref",
    "torch",
    "transformers",
    "peft",
    "accelerate",
    "bitsandbytes",
    "tokenizers",
    "pandas",
    "pyarrow",
    "numpy",
    "scikit-learn",
    "scipy",
    "snakemake",
)


def package_versions(names=PACKAGES):
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_commit(directory=None):
    """Commit of the workflow's checkout (with ``-dirty`` if it has changes), or None."""
    directory = directory or Path(__file__).resolve().parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=directory, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=directory,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("-dirty" if dirty else "")


def run_info(config):
    import torch

    return {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": package_versions(),
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "config": config,
    }
