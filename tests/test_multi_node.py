"""Data-parallel training over several nodes (compute.data_parallel.nodes): the SLURM job the
plugin submits for it, the job step that starts one torchrun per node, and the error outside
SLURM. The run itself: tests/test_slurm.py, whose one-node cluster runs two such tasks side by side."""

import os
import re
import shlex
import socket
from types import SimpleNamespace

import pytest
from arena_pref.errors import InputError
from arena_pref.settings import DataParallel
from arena_pref.train import data_parallel

OVER_TWO_NODES = DataParallel(key="models.gemma2_9b.compute.data_parallel", gpus=8, nodes=2)


def fake_slurm(directory, monkeypatch, job_line):
    """``scontrol`` answering ``job_line`` for ``show job`` and an ``srun``, first on PATH, inside
    SLURM job 77."""
    directory.mkdir()
    (directory / "scontrol").write_text(f"#!/bin/sh\necho {shlex.quote(job_line)}\n")
    (directory / "srun").write_text("#!/bin/sh\nexit 0\n")
    for tool in ("scontrol", "srun"):
        (directory / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{directory}:{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_JOB_ID", "77")


def test_each_node_runs_one_torchrun_meeting_at_this_node(tmp_path, monkeypatch):
    fake_slurm(tmp_path / "bin", monkeypatch, "JobId=77 JobName=x NumNodes=2 NumCPUs=16 NumTasks=2 CPUs/Task=8")
    cmd = data_parallel.command(OVER_TWO_NODES, tmp_path / "run.pkl")
    torchrun = cmd.index("torch.distributed.run")
    # the plugin's jobstep hid the job's SLURM_* variables: the step names its nodes and CPUs itself
    assert cmd[: torchrun - 2] == ["srun", "--nodes=2", "--ntasks=2", "--kill-on-bad-exit=1", "--cpus-per-task=8"]
    args = cmd[torchrun + 1 :]
    assert args[:3] == ["--nproc-per-node=8", "--nnodes=2", "--rdzv-backend=c10d"]
    assert re.fullmatch(rf"--rdzv-endpoint={re.escape(socket.gethostname())}:\d+", args[3])
    assert args[4] == "--rdzv-id=arena-pref-77" and "--standalone" not in args
    assert args[-3:] == ["-m", data_parallel.MODULE, str(tmp_path / "run.pkl")]


@pytest.mark.parametrize(
    "job, step",
    [
        # --cpus-per-gpu 4 on 2 nodes of 8 GPUs: scontrol shows CPUs/Task=1, the node has 32 CPUs
        ("JobId=9 NumNodes=2 NumCPUs=64 NumTasks=2 CPUs/Task=1", ["--nodes=2", "--ntasks=2", "--cpus-per-task=32"]),
        # the one-node test cluster (slurm-local: nodes 1): both tasks share its 2 CPUs
        ("JobId=9 NumNodes=1 NumCPUs=2 NumTasks=2 CPUs/Task=1", ["--nodes=1", "--ntasks=2", "--cpus-per-task=1"]),
    ],
)
def test_each_task_gets_its_share_of_its_nodes_cpus(tmp_path, monkeypatch, job, step):
    fake_slurm(tmp_path / "bin", monkeypatch, job)
    cmd = data_parallel.command(OVER_TWO_NODES, tmp_path / "run.pkl")
    assert set(step) <= set(cmd[: cmd.index("torch.distributed.run")])


def test_one_node_is_torchrun_standalone(tmp_path):
    one = DataParallel(key="k", gpus=2)
    cmd = data_parallel.command(one, tmp_path / "run.pkl")
    assert cmd[1:] == [
        "-m",
        "torch.distributed.run",
        "--nproc-per-node=2",
        "--standalone",
        "-m",
        data_parallel.MODULE,
        str(tmp_path / "run.pkl"),
    ]


def test_several_nodes_outside_slurm_stop_naming_the_key(tmp_path, monkeypatch):
    """A local run (no SLURM job) of a multi-node model: one line naming the key (the train script
    checks it before claiming GPUs), and the hand-over file gone."""
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    with pytest.raises(InputError, match=r"^config models.gemma2_9b.compute.data_parallel.nodes: 2 nodes train only"):
        data_parallel.require_slurm(OVER_TWO_NODES)
    data_parallel.require_slurm(DataParallel(key="k", gpus=2))  # one node: anywhere
    with pytest.raises(InputError) as err:
        data_parallel.launch({"ckpt_dir": str(tmp_path / "ckpt")}, OVER_TWO_NODES, log_path=None)
    assert str(err.value) == (
        "config models.gemma2_9b.compute.data_parallel.nodes: 2 nodes train only inside a SLURM job of that "
        "many nodes (snakemake --executor slurm, or the slurm profile), and this job is not one"
    )
    assert not (tmp_path / "ckpt.ddp").exists()


class Resources(dict):
    """A job's resources as the SLURM plugin reads them (``.get`` and attributes)."""

    __getattr__ = dict.__getitem__


def test_the_slurm_plugin_submits_one_task_per_node_and_runs_the_job_as_is():
    """The resources the train rule declares for a model over 2 nodes of 8 GPUs, through
    snakemake-executor-plugin-slurm's own sbatch builder: 2 nodes, 2 tasks, 16 GPUs, no
    --ntasks-per-gpu (which would start 16 tasks); ``mpi`` makes its jobstep run the job in the
    batch script, where the job's own srun starts the tasks."""
    from arena_pref.settings import Config
    from snakemake_executor_plugin_slurm.submit_string import get_submit_command
    from snakemake_executor_plugin_slurm.utils import set_gres_string

    model = SimpleNamespace(options=SimpleNamespace(data_parallel=OVER_TWO_NODES))
    layout = Config.train_nodes(SimpleNamespace(models={"gemma2_9b": model}), "gemma2_9b")
    job = SimpleNamespace(resources=Resources(gpu=16, cpus_per_task=8, mem_mb=64000, **layout), threads=8)
    params = dict(run_uuid="u", slurm_logfile="log", comment_str="rule_train", account="", partition="", workdir="")
    call = get_submit_command(job, params) + set_gres_string(job)
    flags = shlex.split(call)
    assert {"--nodes=2", "--ntasks=2", "--gpus=16", "--cpus-per-task=8"} <= set(flags), call
    assert not any(f.startswith("--ntasks-per-gpu") for f in flags), call
