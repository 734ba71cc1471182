"""Logging for workflow scripts: to the rule's log file and to stderr, with clean user errors."""

from __future__ import annotations

import functools
import logging
import sys
import time

from arena_pref.errors import InputError

log = logging.getLogger("arena_pref")


_FILE_ONLY = {"console": False}  # ``extra=`` of records the console should not show


class _ConsoleFilter(logging.Filter):
    def filter(self, record):
        return getattr(record, "console", True)


_log_path = None


def current_log_path():
    """The log file this process writes to (None: stderr only)."""
    return _log_path


def setup_logging(log_path=None, level=logging.INFO, append=False, tag=None):
    """Log to stderr and, where given, to the rule's log file (the file Snakemake points to);
    ``append``: a worker process adding to its job's log, each line marked with its ``tag``."""
    global _log_path
    mark = f"[{tag}] " if tag else ""
    fmt = logging.Formatter(f"%(asctime)s %(levelname)s {mark}%(name)s: %(message)s", "%H:%M:%S")
    root = logging.getLogger()
    root.setLevel(level)
    for h in list(root.handlers):
        root.removeHandler(h)
    console = logging.StreamHandler(sys.stderr)
    console.addFilter(_ConsoleFilter())
    handlers = [console]
    if log_path:
        handlers.append(logging.FileHandler(log_path, mode="a" if append else "w", encoding="utf-8"))
    for h in handlers:
        h.setFormatter(fmt)
        root.addHandler(h)
    _log_path = log_path
    return log


def run_main(func):
    """Run a script's main function. However it fails, the log file holds the error (with the
    traceback when it is not the user's input) and the console one line: an :class:`InputError`
    its message, anything else its type and message and where the traceback is."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except InputError as err:
            log.error("%s", err, extra=_FILE_ONLY)
            print(f"arena-pref: error: {err}", file=sys.stderr, flush=True)
            sys.exit(1)
        except Exception as err:
            log.exception("unexpected error", extra=_FILE_ONLY)
            where = f" (traceback in {_log_path})" if _log_path else ""
            first = str(err).strip().splitlines()[0] if str(err).strip() else ""
            print(f"arena-pref: unexpected error: {type(err).__name__}: {first}{where}", file=sys.stderr, flush=True)
            sys.exit(1)

    return wrapper


class Rate:
    """Progress lines with rates for long loops (``log.info`` every ``every`` seconds)."""

    def __init__(self, total, what="rows", every=10.0, logger=log):
        self.total, self.what, self.every, self.logger = total, what, every, logger
        self.start = self.last = time.perf_counter()
        self.done = 0

    def update(self, n=1, extra=""):
        self.done += n
        now = time.perf_counter()
        if now - self.last >= self.every or self.done >= self.total:
            self.last = now
            rate = self.done / max(now - self.start, 1e-9)
            self.logger.info(
                "%d/%d %s (%.1f %s/s)%s",
                self.done,
                self.total,
                self.what,
                rate,
                self.what,
                f" {extra}" if extra else "",
            )
