"""Data-parallel training of one adapter over several processes: PyTorch DDP, started by torchrun.

``compute.data_parallel`` trains a fold over ``gpus`` processes (one per GPU; on a CPU, gloo
processes). The job's own process keeps what must happen once: it holds the checkpoint lock,
readies the checkpoint directory (:func:`arena_pref.train.checkpoints.prepare`) and writes the
run (rows, targets, settings, the checkpoint to resume) to one file; then ``torchrun --standalone``
starts the ranks, each running :func:`main`. Over several nodes (``nodes``, SLURM only) the job's
own ``srun`` starts one torchrun per node, meeting at a c10d rendezvous on the job's first node
(:func:`command`). The Hugging Face Trainer does the rest through
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
import socket
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


def launch(run, parallel, *, log_path):
    """Train ``run`` (the keyword arguments of :func:`arena_pref.train.trainer.run_training`) on the
    processes of ``parallel`` (:class:`~arena_pref.settings.DataParallel`); raises when a rank fails
    (its error is in ``log_path``). Called with the checkpoint lock held: the run's file beside the
    checkpoints is this job's."""
    _check_gpus(parallel)
    threads = run.get("threads")
    if threads:  # the job's CPU threads on each node, shared by its processes there
        run = {**run, "threads": max(1, threads // parallel.gpus)}
    handoff = Path(f"{run['ckpt_dir']}.ddp")  # a killed job's is replaced, a finished one's removed
    shutil.rmtree(handoff, ignore_errors=True)
    handoff.mkdir(parents=True)
    try:
        spec = handoff / "run.pkl"
        with open(spec, "wb") as fh:
            pickle.dump({"run": run, "log_path": str(log_path) if log_path else None}, fh)
        cmd = command(parallel, spec)
        log.info(
            "data-parallel training on %d processes (%d node(s) x %d): %s",
            parallel.processes,
            parallel.nodes,
            parallel.gpus,
            " ".join(cmd),
        )
        code = subprocess.run(
            cmd, env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        ).returncode
    finally:
        shutil.rmtree(handoff, ignore_errors=True)
    if code != 0:
        raise RuntimeError(
            f"data-parallel training failed ({cmd[0]} exited with {code}): the failing rank's error is "
            "above in this log"
        )


def command(parallel, spec):
    """What starts the ranks: torchrun --standalone on one machine; over several nodes, one
    torchrun on each (srun in this SLURM job), meeting at a c10d rendezvous on this node."""
    torchrun = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={parallel.gpus}"]
    ranks = ["-m", MODULE, str(spec)]
    if parallel.nodes == 1:
        return [*torchrun, "--standalone", *ranks]
    job = slurm_job(parallel)
    rendezvous = [
        f"--nnodes={parallel.nodes}",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint={socket.gethostname()}:{_free_port()}",
        f"--rdzv-id=arena-pref-{job['JobId']}",
    ]
    return [*srun(parallel, job), *torchrun, *rendezvous, *ranks]


def srun(parallel, job):
    """The job step of one torchrun per node, on the nodes and CPUs this job holds (the SLURM
    plugin's jobstep hides its SLURM_* variables, so they are read from ``job``): one task per node
    on a job of ``nodes`` nodes (on a smaller one, as a one-node test cluster, tasks share nodes),
    ``gpus`` GPUs each where the job has GPUs, and a failing task ends the others."""
    import torch

    nodes = int(job["NumNodes"].split("-")[0])
    if nodes < parallel.nodes:
        log.warning(
            "SLURM job %s has %d node(s) for %d: the torchrun tasks share nodes", job["JobId"], nodes, parallel.nodes
        )
    cmd = ["srun", f"--nodes={nodes}", f"--ntasks={parallel.nodes}", "--kill-on-bad-exit=1"]
    # each node's CPUs over its tasks: CPUs/Task reads 1 where the job asked --cpus-per-gpu
    per_node = -(-parallel.nodes // nodes)
    cmd.append(f"--cpus-per-task={max(1, int(job['NumCPUs']) // nodes // per_node)}")
    if torch.cuda.is_available():
        cmd.append(f"--gpus-per-task={parallel.gpus}")
    return cmd


def require_slurm(parallel):
    """A model over several nodes trains only inside a SLURM job: checked before the job claims its
    GPUs, so a local run stops on this, not on a GPU count."""
    from arena_pref.errors import InputError

    if parallel is not None and parallel.nodes > 1 and not os.environ.get("SLURM_JOB_ID"):
        raise InputError(
            f"config {parallel.key}.nodes: {parallel.nodes} nodes train only inside a SLURM job of that many "
            "nodes (snakemake --executor slurm, or the slurm profile), and this job is not one"
        )


def slurm_job(parallel):
    """``scontrol show job`` of the SLURM job this runs in, as a dict (JobId, NumNodes, CPUs/Task,
    ...); a job outside SLURM is an error naming the key."""
    from arena_pref.errors import InputError

    require_slurm(parallel)
    job_id = os.environ["SLURM_JOB_ID"]
    if not (shutil.which("scontrol") and shutil.which("srun")):
        raise InputError(f"config {parallel.key}.nodes: SLURM job {job_id} without scontrol and srun on PATH")
    out = subprocess.run(["scontrol", "-o", "show", "job", job_id], capture_output=True, text=True)
    if out.returncode != 0:
        raise InputError(f"config {parallel.key}.nodes: cannot read SLURM job {job_id}: {out.stderr.strip()}")
    return dict(field.split("=", 1) for field in out.stdout.split() if "=" in field)


def _free_port():
    """A TCP port free on this node now, for the rendezvous's store."""
    with socket.socket() as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


def _check_gpus(parallel):
    """On a GPU machine, one GPU per process of this node given to this job (resources gpu,
    CUDA_VISIBLE_DEVICES)."""
    import torch

    from arena_pref.errors import InputError

    if torch.cuda.is_available() and torch.cuda.device_count() < parallel.gpus:
        raise InputError(
            f"config {parallel.key}.gpus: {parallel.gpus} processes on each node, and this job sees "
            f"{torch.cuda.device_count()} GPU(s): run it with --resources gpu={parallel.processes} or more "
            "(a gpu under train in a SLURM profile's set-resources overrides the rule's count: leave it out)"
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
