"""The default workflow on a labelled real data set, scored on its held-out test labels.

    python -m arena_pref.tools.realdata --data ../shared/data/hh-harmless --workdir results/real/hh-harmless \
        --out results/real/hh-harmless.json        # or: make real-data DATA=../shared/data/hh-harmless

``--data`` is a directory in the Kaggle format with ``train.csv``, ``test.csv`` and
``test_labels.csv`` (id and the three one-hot winner columns). The workflow runs there with a
config (the shipped ``config.yaml`` unless ``--configfile``) whose data paths point at that
directory; then every test prediction is scored against the labels beside two references fitted
on the same training rows: the class prior, and a logistic regression on the log character
lengths of the two last answers. The JSON holds each figure (test and OOF log loss); the table
printed is docs/results.md's.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from arena_pref import LABELS, PROB_COLUMNS
from arena_pref.atomic import read_json, write_json
from arena_pref.data import kaggle_csv
from arena_pref.metrics import class_frequencies, log_loss, with_all_classes

REPO = Path(__file__).resolve().parents[3]


def run_workflow(data_dir, workdir, configfile, jobs):
    """Snakemake on ``data_dir``'s CSVs in ``workdir``; returns the wall seconds."""
    config = yaml.safe_load(Path(configfile).read_text())
    config["data"] = {
        "train_csv": str((data_dir / "train.csv").resolve()),
        "test_csv": str((data_dir / "test.csv").resolve()),
    }
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    t0 = time.monotonic()
    subprocess.run(
        [
            str(Path(sys.executable).parent / "snakemake"),
            "-s",
            str(REPO / "Snakefile"),
            "-d",
            str(workdir),
            "--configfile",
            str(workdir / "config.yaml"),
            f"-j{jobs}",
            "results/submission.csv",
        ],
        check=True,
    )
    return time.monotonic() - t0


def length_lr(train, test):
    """Test probabilities of a logistic regression on the log character lengths of the last answers."""
    from sklearn.linear_model import LogisticRegression

    def x(df):
        return np.column_stack(
            [np.log1p([len(t[-1] or "") if len(t) else 0 for t in df[c]]) for c in ("response_a", "response_b")]
        )

    model = LogisticRegression(max_iter=1000).fit(x(train), train["label"])
    return with_all_classes(model.classes_, model.predict_proba(x(test)))


def read_test_labels(path):
    labels = pd.read_csv(path).set_index("id")[list(LABELS)]
    return labels.to_numpy().argmax(axis=1), labels.index.to_numpy(dtype=np.int64)


def score(data_dir, workdir):
    """Test log loss of the references, each member and the submission; the OOF figures of the run."""
    train = kaggle_csv.read_kaggle_csv(data_dir / "train.csv", "train")
    test = kaggle_csv.read_kaggle_csv(data_dir / "test.csv", "test")
    y, ids = read_test_labels(data_dir / "test_labels.csv")
    test = test.set_index("id").loc[ids].reset_index()
    metrics = read_json(workdir / "results/metrics.json")
    rows = {
        "class prior": (log_loss(y, np.tile(class_frequencies(train["label"]), (len(y), 1))), None),
        "length logistic regression": (log_loss(y, length_lr(train, test)), None),
    }
    for m, scores in metrics["models"].items():
        pred = pd.read_parquet(workdir / f"results/test/{m}.parquet").set_index("id").loc[ids, PROB_COLUMNS]
        rows[m] = (log_loss(y, pred.to_numpy()), scores["log_loss_used"])
    sub = pd.read_csv(workdir / "results/submission.csv").set_index("id").loc[ids, list(LABELS)]
    rows[f"blend ({metrics['blend']['method']})"] = (log_loss(y, sub.to_numpy()), metrics["blend"]["log_loss"])
    return {
        "n_train": len(train),
        "n_test": len(y),
        "oof_prior": metrics["blend"]["guard"]["prior_oof_log_loss"],
        "rows": {name: {"test_log_loss": t, "oof_log_loss": o} for name, (t, o) in rows.items()},
    }


def table(result):
    lines = ["| | test log loss | OOF log loss |", "|---|---|---|"]
    for name, r in result["rows"].items():
        oof = "" if r["oof_log_loss"] is None else f"{r['oof_log_loss']:.4f}"
        lines.append(f"| {name} | {r['test_log_loss']:.4f} | {oof} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--configfile", type=Path, default=REPO / "config.yaml")
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args(argv)
    seconds = run_workflow(args.data, args.workdir, args.configfile, args.jobs)
    result = {
        "data": str(args.data),
        "config": str(args.configfile),
        "workflow_seconds": round(seconds, 1),
        **score(args.data, args.workdir),
    }
    write_json(result, args.out)
    print(table(result))


if __name__ == "__main__":
    main()
