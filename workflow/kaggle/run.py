#!/usr/bin/env python3
"""Predict the test set with the trained models of this bundle, offline (a Kaggle notebook).

    python run.py --test-csv /kaggle/input/lmsys-chatbot-arena/test.csv \
        --out /kaggle/working/submission.csv --backbone gemma2_9b=/kaggle/input/gemma-2-9b/...

1. writes the run's config: the bundle's config.yaml with its paths moved to where this bundle
   is, the test CSV and the backbone directories given here, each prediction job on the GPUs
   there are (at most the bundle's);
2. installs the wheels of wheels/ with pip, offline (--no-index): only what the image lacks;
3. estimates the test passes' wall time (each model timed on a sample of its test rows) and
   stops before they start when it cannot fit the time left;
4. runs the bundled Snakemake workflow (nothing is trained, nothing downloaded) and copies
   results/submission.csv to --out.

Standard library (and PyYAML, which the image has) until the wheels are installed.
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
STARTED = time.time()  # the estimate is checked against the time left from here


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--test-csv", required=True, help="the competition's test.csv")
    parser.add_argument("--out", default="/kaggle/working/submission.csv", help="where submission.csv goes")
    parser.add_argument(
        "--backbone",
        action="append",
        default=[],
        metavar="MODEL=DIR",
        help="a model's backbone directory (save_pretrained), e.g. the attached Kaggle model",
    )
    parser.add_argument("--workdir", default="/kaggle/working/arena-pref", help="the run's working directory")
    parser.add_argument("--jobs", type=int, default=None, help="parallel jobs (default: the GPUs here, at least 1)")
    parser.add_argument(
        "--time-limit-h",
        type=float,
        default=None,
        help="stop before the test passes unless the estimate fits this (default: the bundle's)",
    )
    parser.add_argument("--no-estimate", action="store_true", help="skip the time estimate")
    parser.add_argument(
        "--average-if-needed",
        action="store_true",
        help="where the estimate does not fit, average each model's fold adapters into one test "
        "pass (a full-data adapter's pass is kept) if that fits, instead of stopping",
    )
    parser.add_argument("--no-install", action="store_true", help="the wheels are installed already")
    parser.add_argument(
        "--dry-run", action="store_true", help="check the arguments and plan the run (snakemake -n); run nothing"
    )
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
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--no-index",
        "--find-links",
        str(wheels),
        "-r",
        str(requirements),
        "--quiet",
        "--disable-pip-version-check",
    ]
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
        return new + value[len(old) :]
    return value


def run_config(args, workdir):
    """The bundle's config with its own paths moved to where the bundle is, and the test CSV and
    backbones given on the command line."""
    config = yaml_load(BUNDLE / "config.yaml")
    meta = json.loads((BUNDLE / "bundle.json").read_text())
    moved = moved_paths(config, meta["input_dir"], str(BUNDLE))
    moved["data"]["test_csv"] = str(Path(args.test_csv).resolve())
    if args.time_limit_h is not None:
        moved.setdefault("kaggle", {})["time_limit_h"] = args.time_limit_h
    llm = sorted(m for m, spec in moved["models"].items() if spec.get("kind", "llm") == "llm")
    for item in args.backbone:
        model, _, directory = item.partition("=")
        if model not in llm or not directory:
            fail(f"--backbone {item}: expected MODEL=DIR with MODEL one of {', '.join(llm) or 'none (no LoRA models)'}")
        moved["models"][model]["backbone"] = {"kind": "path", "path": str(Path(directory).resolve())}
    for name in llm:
        check_backbone(name, moved["models"][name]["backbone"], meta.get("backbones", {}).get(name))
    gpus = count_gpus()
    if max(gpus, 1) < moved["compute"]["predict_gpus"]:
        say(
            f"{gpus or 'no'} GPU(s) here: each prediction job uses {max(gpus, 1)} (the bundle was set for "
            f"{moved['compute']['predict_gpus']})"
        )
        moved["compute"]["predict_gpus"] = max(gpus, 1)
    path = workdir / "config.yaml"
    write_yaml(moved, path)
    return path, resource_gpus(moved, gpus)


def resource_gpus(config, gpus):
    """The ``--resources gpu=`` to run with: the notebook's GPUs (at least 1), or the most a model
    split over several asks for (compute.model_parallel.gpus), so Snakemake schedules its jobs: on
    fewer GPUs the job itself then says what is short, and without any it loads the model whole."""
    split = [m.get("compute", {}).get("model_parallel", {}).get("gpus", 1) for m in config["models"].values()]
    return max([gpus, 1, *split])


def check_backbone(name, backbone, trained_on):
    """The backbone directory is there and of the architecture and shape the adapters were trained
    on (``bundle.json`` records them): a Gemma adapter on a Llama would load, and predict nonsense."""
    if backbone.get("kind") != "path":
        return
    config_json = Path(backbone["path"]) / "config.json"
    if not config_json.exists():
        below = sorted(str(p.parent) for p in Path(backbone["path"]).glob("*/config.json"))
        hint = f" (a directory below has one: {below[0]})" if below else ""
        fail(
            f"model '{name}': no backbone at {backbone['path']}: no config.json there{hint}. Attach the model to "
            f"the notebook and pass --backbone {name}=DIR, DIR holding its config.json"
        )
    found = json.loads(config_json.read_text())
    differ = [f"{k} {found.get(k)!r} (trained on {v!r})" for k, v in (trained_on or {}).items() if found.get(k) != v]
    if differ:
        fail(
            f"model '{name}': the backbone at {backbone['path']} is not the one its adapters were trained on: "
            + "; ".join(differ)
        )


def count_gpus():
    """The GPUs this notebook has (nvidia-smi; none where it is absent)."""
    try:
        proc = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return sum(line.startswith("GPU ") for line in proc.stdout.splitlines()) if proc.returncode == 0 else 0


def snakemake(workdir, config, jobs, gpus, *extra, target="results/submission.csv"):
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        str(BUNDLE / "Snakefile"),
        "-d",
        str(workdir),
        "--configfile",
        str(config),
        "-j",
        str(jobs),
        "--resources",
        f"gpu={gpus}",
        "--rerun-incomplete",
        *extra,
        target,
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run(cmd, env=env).returncode


def check_time(workdir, config, jobs, gpus, average_if_needed=False):
    """The workflow's time_estimate (each LoRA model timed on a sample of its test rows) against the
    time left (the limit less its margin and what this run has spent so far): stop here, before the
    test passes, when the run cannot fit; with ``average_if_needed``, first try one pass per model
    (its fold adapters averaged: the fitted blender is indifferent to how a member's test
    predictions were made)."""
    if snakemake(workdir, config, jobs, gpus, target="results/time_estimate.json") != 0:
        fail(
            f"the workflow stopped before the test passes: the error is above, and the log file it names is "
            f"under {workdir}/results/logs"
        )
    estimate = json.loads((workdir / "results" / "time_estimate.json").read_text())
    for name, m in estimate["models"].items():
        say(
            f"  {name}: {m['passes']} passes x {m['test_tokens']} tokens{' x 2 orders' if m['tta'] else ''} at "
            f"{m['tokens_per_s']:.0f} tokens/s on {m['copies']} x {m['device']}, load {m['load_s']:.0f} s: "
            f"{m['seconds']:.0f} s ({m['seconds'] / 3600:.2f} h)"
        )
    spent_h = (time.time() - STARTED) / 3600
    left_h = estimate["limit_h"] - estimate["margin_h"] - spent_h
    say(
        f"estimated {hours(estimate['estimate_h'])} for the test passes; {hours(left_h)} left (limit "
        f"{estimate['limit_h']:.2f} h, margin {estimate['margin_h']:.2f} h, spent {hours(spent_h)})"
    )
    if estimate["estimate_h"] <= left_h:
        return
    averaged = averaged_hours(estimate)
    if not average_if_needed or averaged is None or averaged > left_h:
        why = f"; averaging every model's fold adapters would take {hours(averaged)}" if averaged is not None else ""
        fail(f"the run would not fit the time limit{why}: {estimate['advice']} (or rerun with --no-estimate)")
    models = [m for m, v in estimate["models"].items() if fold_passes(v) > 1]
    say(
        f"--average-if-needed: averaging the fold adapters of {', '.join(models)} (one fold pass each): "
        f"{hours(averaged)} estimated"
    )
    run = yaml_load(config)
    for m in models:
        run["models"][m].setdefault("predict", {})["average_adapters"] = True
    write_yaml(run, config)


def hours(h):
    return f"{h:.2f} h" if abs(h) >= 0.1 else f"{h * 3600:.0f} s"


def fold_passes(model):
    """A model's test passes of fold adapters (its estimate's passes less a full-data adapter's)."""
    return model["passes"] - model["full_pass"]


def averaged_hours(estimate):
    """The estimate with each model's fold adapters averaged into one pass (a full-data adapter's
    pass kept), from the per-pass time each model measured; None where no model has two fold passes."""
    if all(fold_passes(m) <= 1 for m in estimate["models"].values()):
        return None
    return (
        sum(m["seconds"] / m["passes"] * min(m["passes"], 1 + m["full_pass"]) for m in estimate["models"].values())
        / 3600
    )


def write_yaml(value, path):
    import yaml

    tmp = path.parent / f".{path.name}.tmp"
    tmp.write_text(yaml.safe_dump(value, sort_keys=False))
    os.replace(tmp, path)


def yaml_load(path):
    import yaml  # the image has PyYAML

    return yaml.safe_load(Path(path).read_text())


def output_path(out):
    """Where submission.csv goes: ``out``, or ``out``/submission.csv when it is a directory; its
    directory made and checked writable at the start, not after hours of prediction."""
    out, is_dir = Path(out), str(out).endswith("/")
    if is_dir or out.is_dir():
        out = out / "submission.csv"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        fail(f"--out {out}: cannot create its directory ({err})")
    if not os.access(out.parent, os.W_OK):
        fail(f"--out {out}: its directory is not writable")
    return out


def main(argv=None):
    args = parse_args(argv)
    if not Path(args.test_csv).exists():
        fail(f"--test-csv {args.test_csv}: no such file")
    output_path(args.out)
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    # the config first: a missing backbone is named before minutes of installing
    config, gpus = run_config(args, workdir)
    if not args.no_install:
        install_wheels()
    jobs = args.jobs or gpus
    if args.dry_run:
        sys.exit(snakemake(workdir, config, jobs, gpus, "-n"))
    if not args.no_estimate:
        check_time(workdir, config, jobs, gpus, args.average_if_needed)
    if snakemake(workdir, config, jobs, gpus) != 0:
        fail(f"the workflow failed: the error is above, and the log file it names is under {workdir}/results/logs")
    out = output_path(args.out)
    with tempfile.NamedTemporaryFile(dir=out.parent, prefix=f".{out.name}.", delete=False) as tmp:
        shutil.copyfile(workdir / "results" / "submission.csv", tmp.name)
    os.replace(tmp.name, out)
    say(f"wrote {out}, {time.time() - STARTED:.0f} s after the start")


if __name__ == "__main__":
    main()
