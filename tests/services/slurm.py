"""A real one-node Slurm cluster for tests: Debian's slurm-wlm + munge, started as root in a temporary folder.

``slurm_cluster`` (session fixture) writes a munge key, a ``slurm.conf`` naming this host (``hostname -s``) with its
CPUs and memory and one partition ``debug``, starts ``munged``, ``slurmctld`` and ``slurmd`` in the foreground
(their own processes, so the fixture can stop exactly them), waits until ``sinfo`` shows the node idle and sets
``SLURM_CONF`` for clients (sbatch, squeue, submitit). Everything is stopped at the end. The fixture skips when
Slurm or munge is not installed or the tests do not run as root.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

DAEMONS = ("munged", "slurmctld", "slurmd", "sinfo", "sbatch", "squeue", "scancel")


@dataclass(frozen=True)
class SlurmCluster:
    root: Path
    conf: Path
    node: str
    partition: str
    cpus: int

    def run(self, *cmd: str) -> str:
        env = {**os.environ, "SLURM_CONF": str(self.conf)}
        return subprocess.run(list(cmd), capture_output=True, text=True, env=env, check=True, timeout=60).stdout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _sbin(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")


def _node_memory_mb() -> int:
    kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
              if line.startswith("MemTotal:"))
    return max(512, int(kb / 1024 * 0.9))


def _write_conf(root: Path, node: str, cpus: int) -> Path:
    conf = root / "slurm.conf"
    conf.write_text(f"""ClusterName=medpipetest
SlurmctldHost={node}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root}/munge/munge.socket
SlurmUser=root
SlurmdUser=root
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
MpiDefault=none
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
NodeName={node} CPUs={cpus} RealMemory={_node_memory_mb()} State=UNKNOWN
PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP
""")
    return conf


def _wait_idle(cluster: SlurmCluster, procs: list[subprocess.Popen[bytes]], timeout_s: float = 60) -> None:
    deadline = time.time() + timeout_s
    state = ""
    while time.time() < deadline:
        for p in procs:
            if p.poll() is not None:
                raise RuntimeError(f"{p.args[0]} exited with {p.returncode}; logs in {cluster.root}")
        try:
            state = cluster.run("sinfo", "--noheader", "--format=%T", f"--nodes={cluster.node}").strip()
        except subprocess.CalledProcessError:
            state = "(no answer)"
        if state == "idle":
            return
        time.sleep(0.5)
    raise RuntimeError(f"Slurm node not idle after {timeout_s:.0f} s (state {state!r}); logs in {cluster.root}")


def slurm_missing() -> str | None:
    """Why this machine cannot run the test cluster, or None."""
    missing = [d for d in DAEMONS if _sbin(d) is None]
    if missing:
        return f"Slurm/munge not installed (missing {', '.join(missing)})"
    if os.geteuid() != 0:
        return "the test Slurm cluster starts its daemons as root"
    return None


@contextlib.contextmanager
def running_cluster(root: Path) -> Iterator[SlurmCluster]:
    """Start munged, slurmctld and slurmd with their state under ``root``; stop them on exit."""
    for sub in ("munge", "state", "spool"):
        (root / sub).mkdir(mode=0o700, parents=True, exist_ok=True)
    key = root / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    node = socket.gethostname().split(".")[0]
    cpus = os.cpu_count() or 1
    conf = _write_conf(root, node, cpus)
    cluster = SlurmCluster(root, conf, node, "debug", cpus)
    env = {**os.environ, "SLURM_CONF": str(conf)}
    procs: list[subprocess.Popen[bytes]] = []
    log = (root / "daemons.log").open("ab")

    def start(*cmd: str) -> None:
        procs.append(subprocess.Popen(list(cmd), env=env, stdout=log, stderr=subprocess.STDOUT))

    try:
        start(str(_sbin("munged")), "--foreground", "--force", f"--socket={root}/munge/munge.socket",
              f"--key-file={key}", f"--pid-file={root}/munge/munged.pid", f"--log-file={root}/munge/munged.log",
              f"--seed-file={root}/munge/munged.seed")
        sock = root / "munge" / "munge.socket"
        deadline = time.time() + 15
        while not sock.exists() and time.time() < deadline:
            time.sleep(0.1)
        start(str(_sbin("slurmctld")), "-D", "-i", "-f", str(conf))
        start(str(_sbin("slurmd")), "-D", "-f", str(conf), "-N", node)
        _wait_idle(cluster, procs)
        yield cluster
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in reversed(procs):
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        log.close()


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    """A running one-node cluster for the whole session, with ``SLURM_CONF`` set for clients."""
    why = slurm_missing()
    if why:
        pytest.skip(why)
    with running_cluster(tmp_path_factory.mktemp("slurm")) as cluster, pytest.MonkeyPatch.context() as mp:
        mp.setenv("SLURM_CONF", str(cluster.conf))
        yield cluster
