"""Logging for workflow scripts: to the rule's log file and to stderr, with clean user errors."""

from __future__ import annotations

import functools
import logging
import sys
import time

from .errors import InputError

log = logging.getLogger("arena_pref")


def setup_logging(log_path=None, level=logging.INFO):
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    root = logging.getLogger()
    root.setLevel(level)
    for h in list(root.handlers):
        root.removeHandler(h)
    handlers = [logging.StreamHandler(sys.stderr)]
    if log_path:
        handlers.append(logging.FileHandler(log_path, mode="w", encoding="utf-8"))
    for h in handlers:
        h.setFormatter(fmt)
        root.addHandler(h)
    return log


def run_main(func):
    """Run a script's main function; an :class:`InputError` ends it with its message only."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except InputError as err:
            log.error("%s", err)
            print(f"arena-pref: error: {err}", file=sys.stderr, flush=True)
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
            self.logger.info("%d/%d %s (%.1f %s/s)%s", self.done, self.total, self.what,
                             rate, self.what, f" {extra}" if extra else "")
