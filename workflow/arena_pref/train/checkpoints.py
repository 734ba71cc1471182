"""Training checkpoints that resume exactly the same run, and never another one.

A training job checkpoints into ``results/checkpoints/{model}/{part}/`` (outside the rule's
outputs, so a failed or killed job keeps them) and a rerun resumes from the last one. Three
things make that safe:

- **A fingerprint of everything the result depends on**: the training settings, the rows (ids,
  labels and the token ids of the token cache) and the backbone's identity (its config and
  tokenizer files, and the size, head and tail of each weight file). Checkpoints made from
  anything else are removed and training starts afresh, and the log says what differed.
- **A checkpoint counts only once complete**: the Trainer writes ``checkpoint-N/`` in place, so a
  job killed while saving leaves a directory that looks like a checkpoint. A mark file
  (``arena_checkpoint.json``, with the fingerprint and the loss of every step so far) is written
  into it last, atomically; directories without one are removed on the next run, with a log line.
- **One trainer per directory**: a job holds an exclusive lock (``flock``) on
  ``{part}.lock`` beside the directory for as long as it trains; a second one (an orphan
  left running by a killed Snakemake, say) stops with a clear message. The kernel releases the
  lock when the process ends, however it ends. (On network file systems without working
  ``flock`` the lock does not protect.)
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np

from arena_pref import __version__
from arena_pref.atomic import read_json, write_json
from arena_pref.errors import InputError

log = logging.getLogger(__name__)

MARK = "arena_checkpoint.json"
PREFIX = "checkpoint-"
_SAMPLE = 4 * 2**20  # bytes read from each end of a weight file for its identity
_WEIGHTS = ("*.safetensors", "*.bin", "*.pt", "*.gguf")


def _sha(*parts):
    h = hashlib.sha256()
    for part in parts:
        h.update(part if isinstance(part, bytes) else json.dumps(part, sort_keys=True, default=str).encode())
    return h.hexdigest()


def backbone_identity(backbone):
    """A hash of a backbone directory that changes when its weights, config or tokenizer do:
    config and tokenizer files whole, each weight file by name, size and its first and last
    4 MiB (a 9B model is hashed in well under a second). A hub name stands for itself."""
    directory = Path(backbone)
    if not directory.is_dir():
        return _sha(str(backbone))
    h = hashlib.sha256()
    weights = sorted({p for pattern in _WEIGHTS for p in directory.glob(pattern)})
    for path in sorted(p for p in directory.iterdir() if p.is_file() and p not in weights):
        h.update(path.name.encode() + path.read_bytes())
    for path in weights:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(_SAMPLE)
            fh.seek(max(size - _SAMPLE, 0))
            tail = fh.read(_SAMPLE)
        h.update(f"{path.name}:{size}".encode() + head + tail)
    return h.hexdigest()


def fingerprint(*, settings, ids, targets, sequences, backbone, init=None):
    """Hashes of what a training result depends on, by part (so a mismatch can say which):
    ``targets`` (:class:`~arena_pref.train.targets.Targets`) with the teachers' probabilities;
    ``init``: the earlier stage's adapter directory training starts from, by its weights."""
    lengths = np.array([len(s) for s in sequences], dtype=np.int64)
    tokens = np.concatenate([np.asarray(s, dtype=np.int64) for s in sequences]) if sequences else lengths
    soft = (
        ()
        if targets.soft is None
        else (
            np.asarray(targets.soft, dtype=np.float64).tobytes(),
            np.asarray(targets.alpha, dtype=np.float64).tobytes(),
        )
    )
    return {
        "settings": _sha(settings, __version__),
        "rows": _sha(
            np.asarray(ids, dtype=np.int64).tobytes(), np.asarray(targets.labels, dtype=np.int64).tobytes(), *soft
        ),
        "tokens": _sha(lengths.tobytes(), tokens.tobytes()),
        "backbone": backbone_identity(backbone),
        **({"init": _sha((Path(init) / "adapter_model.safetensors").read_bytes())} if init else {}),
    }


def _step(path):
    return int(path.name[len(PREFIX) :])


def _checkpoints(ckpt_dir):
    return sorted((p for p in Path(ckpt_dir).glob(f"{PREFIX}*") if p.name[len(PREFIX) :].isdigit()), key=_step)


def prepare(ckpt_dir, fp):
    """Make ``ckpt_dir`` ready for a run with fingerprint ``fp``: checkpoints of another run are
    removed, incomplete ones too (each logged). Returns (the last complete checkpoint or None,
    the loss of every step up to it)."""
    ckpt_dir = Path(ckpt_dir)
    complete = []
    for path in _checkpoints(ckpt_dir):
        mark = path / MARK
        if not mark.is_file() or not (path / "trainer_state.json").is_file():
            log.warning("removing %s: incomplete (the job was stopped while saving it)", path)
            shutil.rmtree(path)
            continue
        old = read_json(mark)["fingerprint"]
        if old != fp:
            changed = sorted(k for k in fp if old.get(k) != fp[k])
            log.warning("checkpoints in %s were made from other %s: starting afresh", ckpt_dir, ", ".join(changed))
            shutil.rmtree(ckpt_dir)
            complete = []
            break
        complete.append(path)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    if not complete:
        return None, []
    last = complete[-1]
    losses = read_json(last / MARK)["step_losses"]
    log.info("resuming from %s (%d steps done)", last, len(losses))
    return str(last), losses


def mark_complete(checkpoint, fp, step_losses):
    """Written last into a saved checkpoint: from now on it counts."""
    write_json({"fingerprint": fp, "step": len(step_losses), "step_losses": step_losses}, Path(checkpoint) / MARK)


@contextlib.contextmanager
def exclusive(ckpt_dir):
    """Hold the training lock of ``ckpt_dir`` for the duration of the block, or stop at once
    when another process holds it."""
    lock = Path(f"{Path(ckpt_dir)}.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "unknown"
            raise InputError(
                f"another training job (pid {holder}) is writing checkpoints to {ckpt_dir}: wait for "
                "it to end or stop it (a killed snakemake can leave its jobs running)"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
