"""The workflow under a real SLURM (one node on localhost, GPU-less) through the executor plugin.

The cluster is installed and started by tests/slurm_cluster.py when missing (CI runs as root on a
fresh Debian machine); elsewhere these tests are skipped with the reason.
"""

import json
import os
import re
import shutil
import subprocess
import time
from collections import Counter

import pandas as pd
import pytest
import yaml
from conftest import REAL_PATH
from slurm_cluster import Cluster, Unavailable, squeue_jobs
from workflow_helpers import (
    REPO,
    assert_resumed_and_matches,
    copy_run,
    snakemake,
    snakemake_command,
)

pytestmark = pytest.mark.slow

PROFILE = REPO / "workflow" / "profiles" / "slurm-local"
SUBMITTED = re.compile(r"Job \d+ has been submitted with SLURM jobid (\d+) \(log: (\S+)\)")


@pytest.fixture(scope="module")
def cluster():
    hidden, os.environ["PATH"] = os.environ["PATH"], REAL_PATH  # the real scontrol (conftest.py)
    c = Cluster()
    try:
        c.start()
    except Unavailable as err:
        os.environ["PATH"] = hidden
        pytest.skip(f"no SLURM cluster: {err}")
    yield c
    c.stop()
    os.environ["PATH"] = hidden


def submitted_rules(printed):
    """[(slurm job id, rule)] from the plugin's submission lines in what Snakemake printed."""
    return [(jobid, re.search(r"/rule_([A-Za-z_]+)/", log).group(1)) for jobid, log in SUBMITTED.findall(printed)]


def on_cluster(cluster, workdir, *targets, timeout, env=None):
    """Snakemake with the slurm-local profile; a run past ``timeout`` fails with what Snakemake
    printed and what the cluster says of itself (queue, node, daemon logs)."""
    try:
        return snakemake(workdir, "--workflow-profile", str(PROFILE), *targets, timeout=timeout, env=env)
    except subprocess.TimeoutExpired as err:
        printed = "".join(
            x.decode(errors="replace") if isinstance(x, bytes) else x or "" for x in (err.stdout, err.stderr)
        )
        raise AssertionError(
            f"snakemake on SLURM ran past {timeout} s; it printed:\n{printed[-6000:]}\n{cluster.diagnostics()}"
        ) from None


FLAKY_CALLS = 12


def flaky_squeue(directory):
    """The environment of a run whose squeue fails its first FLAKY_CALLS calls, as a busy slurmctld
    leaves them unanswered, and then answers (the calls counted in ``directory``/squeue_calls)."""
    shim = directory / "bin" / "squeue"
    shim.parent.mkdir()
    shim.write_text(f"""#!/bin/sh
n=$(cat "{directory}/squeue_calls" 2>/dev/null || echo 0)
echo $((n + 1)) > "{directory}/squeue_calls"
if [ "$n" -lt {FLAKY_CALLS} ]; then echo "squeue: error: Socket timed out on send/recv operation" >&2; exit 1; fi
exec {shutil.which("squeue")} "$@"
""")
    shim.chmod(0o755)
    return {"PATH": f"{shim.parent}:{os.environ['PATH']}"}


# what the SLURM run recomputes of the local run_a: fold 1 of the 4-bit LLM member (its training, OOF
# and test pass) and fold 0 of the feature member, then the test averages and the blend; the data,
# the tokens, the other folds and members come from run_a's copy (every rule's SLURM path, without
# paying for a whole run twice)
RERUN = {"tiny_gemma2": 1, "pair_features": 0}
TRAINED = "results/models/tiny_gemma2/fold1/adapter"


@pytest.fixture(scope="module")
def slurm_run(cluster, run_a, tmp_path_factory):
    """The SLURM run, as a user with a time limit meets it: the first attempt's training job is
    cancelled after its checkpoint 3 (scancel, as a time limit or a lost node ends it), and the same
    command run again finishes the run. squeue fails its first calls throughout (flaky_squeue).
    Returns the directory, what both attempts printed, and their seconds."""
    workdir = tmp_path_factory.mktemp("slurm_run") / "w"
    dropped = [
        f"results/{part}/{model}/fold{fold}{suffix}"
        for model, fold in RERUN.items()
        for part, suffix in (("models", ""), ("checkpoints", ""), ("oof", ".parquet"), ("test", ".parquet"))
    ]
    copy_run(run_a, workdir, drop=[*dropped, "results/submission.csv"])
    # the retrained fold on two data-parallel processes "over two nodes": the SLURM job's own srun
    # starts two torchrun tasks (the slurm-local profile keeps them on its one node), which meet at
    # a c10d rendezvous. How a job runs, not what it makes, so nothing else of the Gemma-2 reruns
    config = yaml.safe_load((workdir / "config.yaml").read_text())
    config["models"]["tiny_gemma2"]["compute"] = {"data_parallel": {"gpus": 1, "nodes": 2}}
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    env = flaky_squeue(workdir.parent)
    t0 = time.monotonic()
    first = cancelled_attempt(workdir, env)
    assert not (workdir / TRAINED).exists()  # no complete-looking output after the cancel
    rerun = on_cluster(cluster, workdir, "results/submission.csv", timeout=900, env=env)
    return workdir, first + rerun.stdout + rerun.stderr, time.monotonic() - t0


def _wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}")


def cancelled_attempt(workdir, env):
    """A SLURM run whose training job trains to checkpoint 3 and stalls there until this cancels
    it; what Snakemake printed before it stopped on the failed job."""
    cmd = snakemake_command(workdir, "--workflow-profile", str(PROFILE), "results/submission.csv")
    pause = {"ARENA_PREF_PAUSE_AFTER_CHECKPOINT": "3"}
    first = subprocess.Popen(
        cmd, env={**os.environ, **env, **pause}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        log = workdir / "results/logs/train/tiny_gemma2/fold1.log"
        _wait_for(lambda: log.exists() and "pausing after checkpoint" in log.read_text(), 600, "the pause")
        assert (workdir / "results/checkpoints/tiny_gemma2/fold1/checkpoint-3").exists()
        training = [jid for jid, comment in squeue_jobs().items() if "rule_train" in comment]
        assert len(training) == 1, f"the training job is not in the queue: {squeue_jobs()}"
        subprocess.run(["scancel", training[0]], check=True)
        out, _ = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert first.returncode != 0, out[-3000:]
    return out


def test_every_job_went_through_sbatch(slurm_run):
    workdir, printed, seconds = slurm_run
    rules = Counter(rule for _, rule in submitted_rules(printed))
    # the LLM's test average, and the feature member's where the first attempt got to it before it
    # stopped: the rerun finds that member's refitted fold file unchanged in content and keeps the
    # average made from it
    assert rules.pop("average_test") in (1, 2), rules
    # each rerun job its own SLURM job (training twice: cancelled, then resumed), and nothing that
    # run_a's copy already had
    assert rules == {
        "train": 2,
        "oof": 1,
        "infer": 1,
        "features_fold": 1,
        "blend": 1,
    }, rules  # in a run that trains, features_fold predicts the test rows and blend submits
    assert len(list((workdir / ".snakemake/slurm_logs/rule_train").rglob("*.log"))) == 2
    print(f"SLURM run of part of the small config: {seconds:.0f} s")


def test_cancelled_training_job_resumed_on_rerun(slurm_run, run_a):
    """The training job resubmitted by the rerun resumed from checkpoint 3, on two data-parallel
    processes in two SLURM tasks, and ended with the adapter run_a's uninterrupted single-process
    run trained."""
    workdir, _, _ = slurm_run
    assert_resumed_and_matches(run_a, workdir, TRAINED, fold=1)
    log = (workdir / "results/logs/train/tiny_gemma2/fold1.log").read_text()
    assert "data-parallel training on 2 processes (2 node(s) x 1): srun --nodes=1 --ntasks=2" in log
    assert "--nnodes=2 --rdzv-backend=c10d" in log and "[rank 0]" in log
    metrics = json.loads((workdir / "results/models/tiny_gemma2/fold1/train_metrics.json").read_text())
    assert metrics["processes"] == 2 and metrics["resumed_from"].endswith("checkpoint-3")


def test_submission_matches_a_local_run(slurm_run, run_a):
    workdir, _, _ = slurm_run
    a = pd.read_csv(run_a / "results/submission.csv").set_index("id").sort_index()
    b = pd.read_csv(workdir / "results/submission.csv").set_index("id").sort_index()
    assert list(a.index) == list(b.index)
    assert (a - b).abs().to_numpy().max() <= 1e-6


def test_jobs_survive_status_checks_that_fail_for_a_while(slurm_run):
    """squeue unanswered for several checks in a row (a busy slurmctld) must not lose the running
    jobs: plugin 2.8.0 forgets every job once all attempts of one check fail, and Snakemake then
    waits forever; the profile's slurm-status-attempts rides it out. The SLURM run's squeue fails
    its first calls (flaky_squeue), and the run went on to the submission."""
    workdir, _, _ = slurm_run
    assert int((workdir.parent / "squeue_calls").read_text()) > FLAKY_CALLS
    assert (workdir / "results/submission.csv").exists()
