"""Each local GPU job claims its own devices (Snakemake sets no CUDA_VISIBLE_DEVICES)."""

import os
import subprocess
import sys
import textwrap
import time

import pytest
from arena_pref.models import gpus

CLAIM = textwrap.dedent("""
    import os, sys, time
    from arena_pref.models.gpus import claim_gpus
    got = claim_gpus(int(sys.argv[1]), wait_s=float(sys.argv[2]), poll_s=0.1)
    print(os.environ.get("CUDA_VISIBLE_DEVICES", ""), flush=True)
    time.sleep(float(sys.argv[3]))
""")


@pytest.fixture
def two_gpu_machine(tmp_path, monkeypatch):
    env = {**os.environ, gpus.GPUS_ENV: "0,1", gpus.LOCK_DIR_ENV: str(tmp_path / "locks")}
    env.pop("SLURM_JOB_ID", None)
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return env


def claim(env, n=1, wait=0.0, hold=0.0):
    return subprocess.Popen(
        [sys.executable, "-c", CLAIM, str(n), str(wait), str(hold)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_concurrent_jobs_get_different_gpus(two_gpu_machine):
    first, second = claim(two_gpu_machine, hold=3), claim(two_gpu_machine, hold=3)
    time.sleep(1.5)
    third = claim(two_gpu_machine, wait=0.2)  # both taken: a third job cannot get one
    outs = [p.communicate(timeout=60) for p in (first, second, third)]
    assert sorted([outs[0][0].strip(), outs[1][0].strip()]) == ["0", "1"]
    assert third.returncode != 0 and "no 1 free GPUs" in outs[2][1]


def test_a_killed_job_frees_its_gpu(two_gpu_machine):
    holder = claim(two_gpu_machine, n=2, hold=60)
    time.sleep(1.5)
    assert claim(two_gpu_machine, wait=0.2).wait(timeout=60) != 0
    holder.kill()
    holder.wait()
    waiter = claim(two_gpu_machine, wait=5)
    out, err = waiter.communicate(timeout=60)
    assert waiter.returncode == 0 and out.strip() in {"0", "1"}, err


def test_two_gpus_for_one_job(two_gpu_machine):
    out, _ = claim(two_gpu_machine, n=2).communicate(timeout=60)
    assert out.strip() == "0,1"


def test_slurm_assignment_is_kept(two_gpu_machine):
    env = {**two_gpu_machine, "SLURM_JOB_ID": "17", "CUDA_VISIBLE_DEVICES": "3"}
    out, _ = claim(env).communicate(timeout=60)
    assert out.strip() == "3"


def test_no_gpus_no_claim(two_gpu_machine):
    env = {**two_gpu_machine, gpus.GPUS_ENV: ""}
    out, _ = claim(env).communicate(timeout=60)
    assert out.strip() == ""


def test_more_gpus_than_the_machine_has(two_gpu_machine):
    p = claim(two_gpu_machine, n=3)
    _, err = p.communicate(timeout=60)
    assert p.returncode != 0 and "asks for 3 GPUs but the machine has 2" in err
