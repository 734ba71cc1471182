"""Data-parallel training of one adapter over several processes: PyTorch DDP, started by torchrun.

``compute.data_parallel`` trains a fold over ``gpus`` processes (one per GPU; on a CPU, gloo
processes). The job's own process keeps what must happen once: it holds the checkpoint lock,
readies the checkpoint directory (:func:`arena_pref.train.checkpoints.prepare`) and writes the
run (rows, targets, settings, the checkpoint to resume) to one file; then ``torchrun --standalone``
starts the ranks, each running :func:`main`. The Hugging Face Trainer does the rest through
accelerate: the model wrapped in DistributedDataParallel, each rank's share of the batches
(every n-th batch of the same order, so the step count is the same on every rank), gradients
averaged every optimizer step, checkpoints written by rank 0 and resumed by every rank from the
same step. Rank 0 logs to the job's log at INFO, the others only their warnings and errors; a
rank that fails logs its traceback there and torchrun stops the others.

The global batch is the config's: ``batch_size`` x ``grad_accum`` rows (or token budgets) per
optimizer step, whatever the number of processes: each rank accumulates ``grad_accum / world``
of them (:func:`rank_grad_accum`), so one process and eight train the same model.
"""

from __future__ import annotations

import logging
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

MODULE = "arena_pref.train.data_parallel"  # what torchrun runs in each rank (-m): there __name__ is __main__
log = logging.getLogger(MODULE)

UNDER_TORCHRUN = "TORCHELASTIC_RUN_ID"  # set by torchrun in every rank it starts
FAIL_RANK = "ARENA_PREF_FAIL_RANK"  # tests: this rank fails as it starts, as a rank out of memory would


def world_size():
    """The processes training together (1 outside torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank():
    return int(os.environ.get("RANK", "0"))


def is_rank_zero():
    return rank() == 0


def rank_grad_accum(grad_accum, world):
    """Each rank's accumulation steps for the config's global ``grad_accum`` (checked divisible
    when the config is loaded)."""
    if grad_accum % world:
        raise ValueError(f"grad_accum {grad_accum} is not a multiple of {world} processes")
    return grad_accum // world


def local_device():
    """This rank's GPU under torchrun (``cuda:<LOCAL_RANK>``), else None (the default device)."""
    import torch

    if UNDER_TORCHRUN in os.environ and torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return None


def launch(run, *, processes, log_path, key="compute.data_parallel"):
    """Train ``run`` (the keyword arguments of :func:`arena_pref.train.trainer.run_training`) on
    ``processes`` ranks of this machine; raises when a rank fails (its error is in ``log_path``).
    Called with the checkpoint lock held: the run's file beside the checkpoints is this job's."""
    _check_gpus(processes, key)
    if run.get("threads"):  # the job's CPU threads, shared by its processes
        run = {**run, "threads": max(1, run["threads"] // processes)}
    handoff = Path(f"{run['ckpt_dir']}.ddp")  # a killed job's is replaced, a finished one's removed
    shutil.rmtree(handoff, ignore_errors=True)
    handoff.mkdir(parents=True)
    try:
        spec = handoff / "run.pkl"
        with open(spec, "wb") as fh:
            pickle.dump({"run": run, "log_path": str(log_path) if log_path else None}, fh)
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc-per-node={processes}",
            "-m",
            MODULE,
            str(spec),
        ]
        log.info("data-parallel training on %d processes: %s", processes, " ".join(cmd[2:]))
        code = subprocess.run(
            cmd, env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        ).returncode
    finally:
        shutil.rmtree(handoff, ignore_errors=True)
    if code != 0:
        raise RuntimeError(
            f"data-parallel training failed (torchrun exited with {code}): the failing rank's error is "
            "above in this log"
        )


def _check_gpus(processes, key):
    """On a GPU machine, one GPU per process given to this job (resources gpu, CUDA_VISIBLE_DEVICES)."""
    import torch

    from arena_pref.errors import InputError

    if torch.cuda.is_available() and torch.cuda.device_count() < processes:
        raise InputError(
            f"config {key}.gpus: {processes} processes, and this job sees {torch.cuda.device_count()} GPU(s): "
            f"give the train rule gpu={processes} (--resources gpu=..., or gpu: {processes} under train in a "
            "SLURM profile's set-resources)"
        )


def main(spec_path):
    """One rank: the run of ``spec_path`` (written by :func:`launch`), logged to the job's log."""
    from arena_pref.logs import setup_logging

    with open(spec_path, "rb") as fh:  # written by this job's own process (launch), never a user's file
        spec = pickle.load(fh)
    level = logging.INFO if is_rank_zero() else logging.WARNING
    setup_logging(spec["log_path"], level=level, append=True, tag=f"rank {rank()}")
    device = local_device()
    if device is not None:  # before anything touches CUDA: "cuda" then means this rank's GPU
        import torch

        torch.cuda.set_device(device)
    try:
        if os.environ.get(FAIL_RANK) == str(rank()):
            raise RuntimeError(f"{FAIL_RANK}={rank()}: rank {rank()} fails on purpose")
        from arena_pref.train.trainer import run_training

        run_training(**spec["run"])
    except BaseException:
        log.exception("rank %d of %d failed", rank(), world_size())
        raise


if __name__ == "__main__":
    main(sys.argv[1])
