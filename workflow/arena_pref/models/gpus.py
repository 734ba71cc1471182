"""Give each GPU job its own devices: ``CUDA_VISIBLE_DEVICES`` set before CUDA starts.

Snakemake counts a ``gpu`` resource but sets no ``CUDA_VISIBLE_DEVICES``, so two local jobs
(``-j2`` on a two-GPU machine) would both land on GPU 0. Each GPU job therefore claims free
devices itself: an exclusive ``flock`` on one lock file per GPU in a directory shared by the
machine's jobs. The kernel drops the lock when the process ends, however it ends (a killed job
never leaves a device claimed). Under SLURM (``SLURM_JOB_ID`` set) the scheduler has already
assigned devices, and they are used as given.

Keep this module free of torch imports: it must run before anything initialises CUDA.
"""

from __future__ import annotations

import fcntl
import logging
import os
import subprocess
import tempfile
import time
from pathlib import Path

from arena_pref.errors import InputError

log = logging.getLogger(__name__)

LOCK_DIR_ENV = "ARENA_PREF_GPU_LOCK_DIR"
GPUS_ENV = "ARENA_PREF_GPUS"  # override GPU discovery (a comma list of device ids, or empty)

_held = []  # open lock files of this process: closing them would release the devices


def machine_gpus():
    """Device ids this job may choose from, without initialising CUDA."""
    if GPUS_ENV in os.environ:
        listed = os.environ[GPUS_ENV]
    elif "CUDA_VISIBLE_DEVICES" in os.environ:
        listed = os.environ["CUDA_VISIBLE_DEVICES"]
    else:
        try:
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=30,
                check=True,
            ).stdout
        except (OSError, subprocess.SubprocessError):
            return []
        listed = ",".join(out.split())
    return [d.strip() for d in listed.split(",") if d.strip() and d.strip() != "-1"]


def lock_dir():
    return Path(os.environ.get(LOCK_DIR_ENV) or Path(tempfile.gettempdir()) / f"arena-pref-gpus-{os.getuid()}")


def claim_gpus(n, *, wait_s=None, poll_s=2.0):
    """Claim ``n`` free GPUs for this process and set ``CUDA_VISIBLE_DEVICES`` to them.

    Returns the claimed device ids ([] on a machine without GPUs, or where SLURM assigned them).
    Waits (logging) while all are taken; ``wait_s`` bounds the wait (None: forever).
    """
    if n <= 0:
        return []
    if os.environ.get("SLURM_JOB_ID"):
        log.info(
            "SLURM job: using the GPUs it was given (CUDA_VISIBLE_DEVICES=%s)",
            os.environ.get("CUDA_VISIBLE_DEVICES", ""),
        )
        return []
    candidates = machine_gpus()
    if not candidates:
        return []
    if n > len(candidates):
        raise InputError(
            f"a job asks for {n} GPUs but the machine has {len(candidates)}: "
            "lower compute.predict_gpus, or the model's compute.model_parallel.gpus"
        )
    directory = lock_dir()
    directory.mkdir(parents=True, exist_ok=True)
    start, announced = time.monotonic(), False
    while True:
        got = []
        for dev in candidates:
            f = open(directory / f"gpu{dev}.lock", "a+")
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.close()
                continue
            got.append((dev, f))
            if len(got) == n:
                break
        if len(got) == n:
            break
        for _, f in got:  # all or nothing: never sit on part of a claim while waiting
            f.close()
        if wait_s is not None and time.monotonic() - start > wait_s:
            raise TimeoutError(f"no {n} free GPUs among {candidates} after {wait_s} s")
        if not announced:
            log.info("waiting for %d free GPUs among %s (locks in %s)", n, candidates, directory)
            announced = True
        time.sleep(poll_s)
    devices = [d for d, _ in got]
    for d, f in got:
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        _held.append(f)
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(devices)
    log.info("claimed GPU %s (CUDA_VISIBLE_DEVICES set)", ",".join(devices))
    return devices
