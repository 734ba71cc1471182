"""Debian packages the slow tests need (SLURM, Chromium): installed with apt-get where missing, as
CI runs as root on a fresh Debian machine; elsewhere the test is skipped with the reason."""

from __future__ import annotations

import os
import shutil
import subprocess


class Unavailable(Exception):
    """The tool cannot be installed or started here (the reason is the message)."""


def ensure_installed(binaries, packages):
    """Install ``packages`` unless every one of ``binaries`` is on PATH already."""
    if all(shutil.which(b) for b in binaries):
        return
    what = " ".join(packages)
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise Unavailable(f"{what} not installed, and this is not a root Debian machine to install it")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "-q", *packages]
    if subprocess.run(cmd, capture_output=True, env=env, timeout=900).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], capture_output=True, env=env, timeout=900)
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
        if proc.returncode != 0:
            raise Unavailable(f"apt-get install {what} failed: {proc.stderr[-2000:]}")
