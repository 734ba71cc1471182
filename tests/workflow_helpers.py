"""Running the workflow from tests: Snakemake in a subprocess on the small test config."""

import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEFILE = REPO / "Snakefile"
SNAKEMAKE = [sys.executable, "-m", "snakemake"]  # also where no snakemake script is on the PATH (a GPU device)
SMALL = REPO / "tests" / "configs" / "small.yaml"


SMALL_LORA = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}


def model_settings(**model):
    """The settings of a model configured with ``model`` (a mapping as in a config file; backbone
    and LoRA default to a tiny model's), validated and filled by the workflow's own code."""
    from arena_pref import settings

    return settings.model_config({"backbone": {"kind": "tiny"}, "lora": SMALL_LORA, **model})


def snakemake_command(workdir, *args, config=None, snakefile=SNAKEFILE):
    """The command line that runs the workflow in ``workdir`` on its own config (or ``config``)."""
    config = config or workdir / "config.yaml"
    return [*SNAKEMAKE, "-s", str(snakefile), "-d", str(workdir), "--configfile", str(config), *args]


def snakemake(workdir, *args, config=None, env=None, check=True, timeout=900, snakefile=SNAKEFILE):
    cmd = snakemake_command(workdir, *args, config=config, snakefile=snakefile)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


def side_by_side(*runs):
    """Independent runs (each ``(workdir, *args)`` of :func:`snakemake`) at the same time, one per
    core: two -j1 runs take the time of one. Their results, in order."""
    with ThreadPoolExecutor(len(runs)) as pool:
        return list(pool.map(lambda run: snakemake(*run), runs))


def write_config(workdir, **changes):
    cfg = yaml.safe_load(SMALL.read_text())
    for key, value in changes.items():
        node = cfg
        *parents, last = key.split(".")
        for p in parents:
            node = node[p]
        node[last] = value
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "config.yaml"
    # in the order a person wrote it: params must not depend on key order (sort_keys would hide that)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def copy_run(source, dest, *, drop=()):
    """A copy of a finished run's working directory (its outputs with their times, and Snakemake's
    metadata) less the ``drop`` paths (relative to it): Snakemake then reruns exactly the jobs whose
    outputs were dropped and what depends on them, which is how a test reruns part of a run
    without paying for the rest."""
    shutil.copytree(source, dest, symlinks=True, ignore=shutil.ignore_patterns("locks", "incomplete"))
    for rel in drop:
        path = dest / rel
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    return dest


def planned_jobs(proc):
    """{rule: count} from a dry run's job stats table."""
    jobs, in_table = {}, False
    for line in proc.stdout.splitlines():
        parts = line.split()
        if parts[:2] == ["job", "count"]:
            in_table = True
        elif in_table and len(parts) == 2 and parts[1].isdigit():
            if parts[0] == "total":
                break
            jobs[parts[0]] = int(parts[1])
    return jobs


def planned_resources(proc):
    """[(rule, wildcards, resources)] of the jobs a dry run prints (wildcards and resources as
    dicts of strings)."""
    jobs = []
    for line in proc.stdout.splitlines():
        line = line.strip()
        if line.startswith("rule ") and line.endswith(":"):
            jobs.append((line[5:-1], {}, {}))
        elif jobs and line.startswith(("wildcards: ", "resources: ")):
            key, _, values = line.partition(": ")
            target = jobs[-1][1] if key == "wildcards" else jobs[-1][2]
            target.update(item.split("=", 1) for item in values.split(", "))
    return jobs


def assert_resumed_and_matches(reference, workdir, target, model="tiny_gemma2", fold=0, checkpoint=3):
    """The rerun training job of ``target`` (an adapter directory) resumed from ``checkpoint`` and
    ended with the adapter the uninterrupted run in ``reference`` trained (to 1e-6)."""
    from safetensors.torch import load_file

    log = (workdir / f"results/logs/train/{model}/fold{fold}.log").read_text()
    assert "resuming from" in log and f"checkpoint-{checkpoint}" in log
    a = load_file(str(reference / target / "adapter_model.safetensors"))
    b = load_file(str(workdir / target / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert (a[k] - b[k]).abs().max() < 1e-6, k
