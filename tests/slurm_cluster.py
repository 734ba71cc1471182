"""A one-node SLURM cluster on localhost for the tests: installed and started when missing.

CI runs as root on a fresh Debian machine: Debian's ``slurm-wlm`` and ``munge`` are installed if
absent, ``munged``, ``slurmctld`` and ``slurmd`` are started, and exactly the daemons started here
are stopped again, by pid. A cluster that already answers ``sinfo`` is used as it is.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from pathlib import Path

from debian import Unavailable, ensure_installed  # noqa: F401 (Unavailable: the tests' import)

SLURM_CONF = """\
ClusterName=local
SlurmctldHost=localhost
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SlurmUser=root
SlurmdUser=root
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
NodeName=localhost CPUs={cpus} RealMemory={mem_mb} State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""


def _run(*cmd, timeout=300):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def node_idle():
    try:
        out = _run("sinfo", "-h", "-o", "%t", timeout=20).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return False
    return bool(out) and all(state.rstrip("*") in ("idle", "mix", "alloc") for state in out)


def install():
    ensure_installed(("sbatch", "slurmctld", "munged"), ("slurm-wlm", "munge"))


class Cluster:
    def __init__(self):
        self.started = []  # Popen objects of the daemons started here
        # their output goes to files: an unread pipe fills (64 KiB) and blocks the daemon that writes
        # to it, and munged logs a line for every credential, so a long test session froze the cluster
        self.log_dir = Path(tempfile.mkdtemp(prefix="arena-pref-slurm-"))

    def start(self, timeout=90):
        if node_idle():
            return self
        install()
        conf = Path("/etc/slurm/slurm.conf")
        if not conf.exists():
            conf.parent.mkdir(parents=True, exist_ok=True)
            mem_mb = int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20 * 0.6)
            conf.write_text(SLURM_CONF.format(cpus=os.cpu_count(), mem_mb=mem_mb))
        for d in ("/var/spool/slurmctld", "/var/spool/slurmd", "/run/munge", "/var/log/munge"):
            Path(d).mkdir(parents=True, exist_ok=True)
        if not Path("/etc/munge/munge.key").exists():
            _run("mungekey", "-c", "-f")
        subprocess.run(
            ["chown", "-R", "munge:munge", "/etc/munge", "/run/munge", "/var/log/munge"], capture_output=True
        )
        if _run("pgrep", "-x", "munged").returncode != 0:
            self._spawn("setpriv", "--reuid", "munge", "--regid", "munge", "--init-groups", "/usr/sbin/munged", "-F")
            time.sleep(1)
        if _run("pgrep", "-x", "slurmctld").returncode != 0:
            self._spawn("slurmctld", "-D")
        if _run("pgrep", "-x", "slurmd").returncode != 0:
            self._spawn("slurmd", "-D", "-N", "localhost")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if node_idle():
                return self
            for p in self.started:
                if p.poll() is not None:
                    self.stop()
                    raise Unavailable(f"{p.args[0]} exited with {p.returncode}: {self._log_tail(p)}")
            time.sleep(1)
        self.stop()
        raise Unavailable(f"the SLURM node did not become idle within {timeout} s")

    def _spawn(self, *cmd):
        log = self._log_path(cmd)
        with open(log, "ab") as out:
            p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        p.log = log
        self.started.append(p)

    def _log_path(self, cmd):
        name = next(Path(c).name for c in cmd if Path(c).name in ("munged", "slurmctld", "slurmd"))
        return self.log_dir / f"{name}.log"

    @staticmethod
    def _log_tail(p, chars=2000):
        return p.log.read_text(errors="replace")[-chars:]

    def diagnostics(self):
        """What the cluster says about itself: queue, node, and the tails of the daemons' logs here."""
        parts = []
        for cmd in (("squeue", "--states=all"), ("sinfo", "-N", "-l"), ("scontrol", "show", "node")):
            try:
                proc = _run(*cmd, timeout=20)
                parts.append(f"$ {' '.join(cmd)} (exit {proc.returncode})\n{proc.stdout}{proc.stderr}")
            except (OSError, subprocess.SubprocessError) as err:
                parts.append(f"$ {' '.join(cmd)}: {err}")
        for p in self.started:
            parts.append(f"--- {p.log} ({p.log.stat().st_size} bytes)\n{self._log_tail(p)}")
        return "\n".join(parts)

    def stop(self):
        """Stop only the daemons started here, by pid (slurmd and slurmctld before munged)."""
        for p in reversed(self.started):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        self.started.clear()


def squeue_jobs():
    """{slurm job id: its comment} of jobs in the queue (Snakemake's SLURM plugin puts the rule and
    wildcards in the comment)."""
    out = _run("squeue", "-h", "-o", "%i %k", timeout=20).stdout
    return dict(line.split(maxsplit=1) for line in out.splitlines() if line.strip())
