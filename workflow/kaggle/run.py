#!/usr/bin/env python3
"""Predict the test set with the trained models of this bundle, offline (a Kaggle notebook).

    python run.py --test-csv /kaggle/input/lmsys-chatbot-arena/test.csv \
        --out /kaggle/working/submission.csv --backbone gemma2_9b=/kaggle/input/gemma-2-9b/...

1. installs the wheels of wheels/ with pip, offline (--no-index): only what the image lacks;
2. writes the run's config: the bundle's config.yaml with its paths moved to where this bundle
   is, the test CSV and the backbone directories given here;
3. estimates the wall time from the test rows' tokens and the throughput measured beforehand,
   and stops before any model loads when it cannot fit the time limit;
4. runs the bundled Snakemake workflow (nothing is trained, nothing downloaded) and copies
   results/submission.csv to --out.

Standard library only until the wheels are installed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BUNDLE = Path(__file__).resolve().parent


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--test-csv", required=True, help="the competition's test.csv")
    parser.add_argument("--out", default="/kaggle/working/submission.csv", help="where submission.csv goes")
    parser.add_argument("--backbone", action="append", default=[], metavar="MODEL=DIR",
                        help="a model's backbone directory (save_pretrained), e.g. the attached Kaggle model")
    parser.add_argument("--workdir", default="/kaggle/working/arena-pref", help="the run's working directory")
    parser.add_argument("--jobs", type=int, default=None, help="parallel jobs (default: the bundle's GPUs, at least 1)")
    parser.add_argument("--time-limit-h", type=float, default=None,
                        help="stop before the test passes unless the estimate fits this (default: the bundle's)")
    parser.add_argument("--no-estimate", action="store_true", help="skip the time estimate")
    parser.add_argument("--no-install", action="store_true", help="the wheels are installed already")
    parser.add_argument("--dry-run", action="store_true", help="plan the run and estimate its time, run nothing")
    return parser.parse_args(argv)


def say(message):
    print(f"[arena-pref {time.strftime('%H:%M:%S')}] {message}", flush=True)


def fail(message):
    say(f"error: {message}")
    sys.exit(2)


def install_wheels():
    """pip install of wheels/requirements.txt, offline; what the image has in the same version stays."""
    wheels = BUNDLE / "wheels"
    requirements = wheels / "requirements.txt"
    if not requirements.exists():
        fail(f"{requirements} is missing: is this a complete arena-pref bundle?")
    say(f"installing {sum(1 for _ in wheels.glob('*.whl'))} wheels from {wheels} (offline)")
    cmd = [sys.executable, "-m", "pip", "install", "--no-index", "--find-links", str(wheels), "-r", str(requirements),
           "--quiet", "--disable-pip-version-check"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        fail("pip could not install the bundled wheels:\n" + (proc.stdout + proc.stderr)[-3000:])


def moved_paths(value, old, new):
    """``value`` with every string that is ``old`` or a path under it moved under ``new``."""
    if isinstance(value, dict):
        return {k: moved_paths(v, old, new) for k, v in value.items()}
    if isinstance(value, list):
        return [moved_paths(v, old, new) for v in value]
    if isinstance(value, str) and (value == old or value.startswith(old + "/")):
        return new + value[len(old):]
    return value


def run_config(args, workdir):
    """The bundle's config with its own paths moved to where the bundle is, and the test CSV and
    backbones given on the command line."""
    import yaml  # the image has PyYAML

    config = yaml_load(BUNDLE / "config.yaml")
    meta = json.loads((BUNDLE / "bundle.json").read_text())
    moved = moved_paths(config, meta["input_dir"], str(BUNDLE))
    moved["data"]["test_csv"] = str(Path(args.test_csv).resolve())
    if args.time_limit_h is not None:
        moved.setdefault("kaggle", {})["time_limit_h"] = args.time_limit_h
    for item in args.backbone:
        model, _, directory = item.partition("=")
        if model not in moved["models"] or not directory:
            fail(f"--backbone {item}: expected MODEL=DIR with MODEL one of {sorted(moved['models'])}")
        moved["models"][model]["backbone"] = {"kind": "path", "path": str(Path(directory).resolve())}
    for name, model in moved["models"].items():
        backbone = model.get("backbone", {})
        if backbone.get("kind") == "path" and not (Path(backbone["path"]) / "config.json").exists():
            fail(f"model '{name}': no backbone at {backbone['path']} (no config.json there): attach the model to "
                 f"the notebook and pass --backbone {name}=DIR")
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(moved, sort_keys=False))
    return path


def snakemake(workdir, config, jobs, *extra, target="results/submission.csv"):
    cmd = [sys.executable, "-m", "snakemake", "-s", str(BUNDLE / "Snakefile"), "-d", str(workdir), "--configfile",
           str(config), "-j", str(jobs), "--resources", f"gpu={jobs}", "--rerun-incomplete", *extra, target]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run(cmd, env=env).returncode


def check_time(workdir, config, jobs):
    """The workflow's time_estimate (each LoRA model timed on a sample of its test rows) against the
    limit: stop here, before the test passes, when the run cannot fit."""
    if snakemake(workdir, config, jobs, target="results/time_estimate.json") != 0:
        fail(f"the time estimate failed: see {workdir}/results/logs/time_estimate.log")
    estimate = json.loads((workdir / "results" / "time_estimate.json").read_text())
    for name, m in estimate["models"].items():
        say(f"  {name}: {m['passes']} passes x {m['test_tokens']} tokens{' x 2 orders' if m['tta'] else ''} at "
            f"{m['tokens_per_s']:.0f} tokens/s on {m['gpus']} x {m['device']}, load {m['load_s']:.0f} s: "
            f"{m['seconds']:.0f} s ({m['seconds'] / 3600:.2f} h)")
    say(f"estimated {estimate['estimate_h']:.2f} h for the test passes; the limit is {estimate['limit_h']:.2f} h")
    if not estimate["fits"]:
        fail(f"the run would not fit the time limit: {estimate['advice']} (or rerun with --no-estimate)")


def yaml_load(path):
    import yaml

    return yaml.safe_load(Path(path).read_text())


def main(argv=None):
    args = parse_args(argv)
    if not Path(args.test_csv).exists():
        fail(f"--test-csv {args.test_csv}: no such file")
    if not args.no_install:
        install_wheels()
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    config = run_config(args, workdir)
    jobs = args.jobs or max(1, int(yaml_load(config)["kaggle"]["gpus"]))
    if args.dry_run:
        sys.exit(snakemake(workdir, config, jobs, "-n"))
    started = time.time()
    if not args.no_estimate:
        check_time(workdir, config, jobs)
    if snakemake(workdir, config, jobs) != 0:
        fail(f"the workflow failed: its log names the job and the log file (under {workdir}/results/logs)")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=out.parent, prefix=f".{out.name}.", delete=False) as tmp:
        shutil.copyfile(workdir / "results" / "submission.csv", tmp.name)
    os.replace(tmp.name, out)
    say(f"wrote {out} in {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
