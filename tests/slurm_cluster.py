"""A one-node Slurm cluster in a folder: munged, slurmctld and slurmd started in the foreground as
children of this process, their config and state kept apart from the system's (SLURM_CONF), and
stopped, every one, when the cluster stops.

Needs Debian's packages `slurm-wlm` and `munge` (`.ci/run` installs them) and root, as CI has.
`python tests/slurm_cluster.py [cpus]` starts one and keeps it up until Ctrl-C or SIGTERM, for trying
commands by hand.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil

BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "sinfo")
INSTALL_HINT = "apt-get install slurm-wlm munge (Debian's packages; .ci/run installs them), as root"


def missing() -> str | None:
    """Why no cluster can start here, or None."""
    absent = [name for name in BINARIES if shutil.which(name) is None]
    if absent:
        return f"{', '.join(absent)} not found: {INSTALL_HINT}"
    if os.geteuid() != 0:
        return "a test Slurm cluster runs its daemons as root"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SlurmCluster:
    """slurmctld and one slurmd (this host, its CPUs) with munge, in `folder`; a context manager."""

    def __init__(self, folder: Path, cpus: int | None = None, memory_mb: int = 8000):
        self.folder = Path(folder)
        self.host = socket.gethostname().split(".")[0]
        self.cpus = cpus or os.cpu_count() or 1
        self.memory_mb = memory_mb
        self.conf = self.folder / "slurm.conf"
        self.processes: list[subprocess.Popen] = []

    @property
    def env(self) -> dict[str, str]:
        """The environment that points Slurm's commands at this cluster."""
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def start(self, timeout_s: float = 120.0) -> SlurmCluster:
        """Write the config, start the daemons, and wait until the node takes jobs."""
        f = self.folder
        for sub in ("state", "spool", "munge"):
            (f / sub).mkdir(parents=True, exist_ok=True)
        key = f / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        sock = f / "munge" / "munge.socket"
        self.conf.write_text(
            "\n".join(
                [
                    "ClusterName=loaderlab-test",
                    f"SlurmctldHost={self.host}(127.0.0.1)",  # an address: the host name may not resolve
                    f"SlurmctldPort={_free_port()}",
                    f"SlurmdPort={_free_port()}",
                    "AuthType=auth/munge",
                    "CredType=cred/munge",
                    f"AuthInfo=socket={sock}",
                    "SlurmUser=root",
                    "SlurmdUser=root",
                    f"StateSaveLocation={f / 'state'}",
                    f"SlurmdSpoolDir={f / 'spool'}",
                    f"SlurmctldPidFile={f / 'slurmctld.pid'}",
                    f"SlurmdPidFile={f / 'slurmd.pid'}",
                    f"SlurmctldLogFile={f / 'slurmctld.log'}",
                    f"SlurmdLogFile={f / 'slurmd.log'}",
                    "ProctrackType=proctrack/linuxproc",
                    "TaskPlugin=task/none",
                    "SelectType=select/cons_tres",
                    "SelectTypeParameters=CR_CPU_Memory",
                    "MpiDefault=none",
                    "ReturnToService=2",
                    "JobAcctGatherType=jobacct_gather/none",
                    "AccountingStorageType=accounting_storage/none",
                    "SchedulerType=sched/backfill",
                    "SchedulerParameters=sched_interval=1",  # new jobs start within a second or so
                    "KillWait=10",  # a stopped job's processes get this long after SIGTERM
                    "SlurmdParameters=config_overrides",  # the node may offer more CPUs than it has
                    f"NodeName={self.host} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={self.memory_mb} "
                    "State=UNKNOWN",
                    f"PartitionName=debug Nodes={self.host} Default=YES MaxTime=INFINITE State=UP",
                    "",
                ]
            )
        )
        munge = [
            "munged", "-F", "--force", f"--socket={sock}", f"--key-file={key}",
            f"--pid-file={f / 'munge' / 'munged.pid'}", f"--log-file={f / 'munge' / 'munged.log'}",
            f"--seed-file={f / 'munge' / 'munged.seed'}",
        ]  # fmt: skip
        try:
            self._spawn(munge, "munged.out")
            self._wait(lambda: sock.exists(), "munge's socket", timeout_s)
            self._spawn(["slurmctld", "-D", "-i", "-f", str(self.conf)], "slurmctld.out")
            self._spawn(["slurmd", "-D", "-f", str(self.conf)], "slurmd.out")
            self._wait(self._idle, f"node {self.host} idle in sinfo", timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def _spawn(self, command: list[str], out: str) -> None:
        log = open(self.folder / out, "wb")  # noqa: SIM115  closed with the process, in stop()
        self.processes.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=self.env))

    def _idle(self) -> bool:
        for process in self.processes:
            if process.poll() is not None:
                raise RuntimeError(f"{process.args[0]} exited with {process.returncode}: {self.logs()}")
        state = self.run("sinfo", "-h", "-N", "-o", "%t", check=False).stdout.strip()
        return state in ("idle", "mix", "alloc")

    def _wait(self, ready, what: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not ready():
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {what} after {timeout_s:.0f} s: {self.logs()}")
            time.sleep(0.5)

    def run(self, *command: str, check: bool = True) -> subprocess.CompletedProcess:
        """A Slurm command against this cluster."""
        return subprocess.run(command, env=self.env, capture_output=True, text=True, check=check, timeout=120)

    def jobs(self) -> list[str]:
        """Lines of squeue: job id, state, name."""
        return self.run("squeue", "-h", "-o", "%i %T %j").stdout.split("\n")[:-1]

    def logs(self) -> str:
        """The daemons' logs' last lines, for a failure's message."""
        parts = []
        for name in ("slurmctld.log", "slurmd.log", "slurmctld.out", "slurmd.out", "munge/munged.log"):
            path = self.folder / name
            if path.exists():
                parts.append(f"--- {name}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-15:]))
        return "\n".join(parts)

    def stop(self) -> None:
        """Cancel what runs, stop every daemon and any job process left, and wait for them."""
        if self.processes and self.processes[-1].poll() is None:
            self.run("scancel", "--full", "-u", "root", check=False)
        started = {p.pid for p in self.processes}
        leftovers = []
        for pid in started:  # slurmstepd and job processes the daemons started
            try:
                leftovers += psutil.Process(pid).children(recursive=True)
            except psutil.NoSuchProcess:
                continue
        for process in reversed(self.processes):  # slurmd, slurmctld, then munged
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        for child in leftovers:
            try:
                child.kill()
            except psutil.NoSuchProcess:
                continue
        psutil.wait_procs(leftovers, timeout=30)
        self.processes.clear()

    def __enter__(self) -> SlurmCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


if __name__ == "__main__":
    import signal
    import tempfile

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # stops the daemons on the way out, as Ctrl-C
    with SlurmCluster(
        Path(tempfile.mkdtemp(prefix="slurm-")), cpus=int(sys.argv[1]) if sys.argv[1:] else None
    ) as c:
        print(f"Slurm is up: export SLURM_CONF={c.conf}   (Ctrl-C stops it)", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
