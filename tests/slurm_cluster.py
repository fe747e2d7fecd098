"""A real one-node SLURM cluster (Debian's slurm-wlm + munge) in a temporary directory, for the cluster tests.

`SlurmCluster.start(root)` writes munge.key, slurm.conf and gres.conf under `root`, starts munged, slurmctld and
slurmd as child processes (nothing system-wide is touched: the clients find the cluster through SLURM_CONF) and waits
until the node is idle. Partitions: `cpu` (default) and `gpu`, the same node in both; the node declares 4 GPUs as a
gres whose device files are empty placeholders, so `--gpus=N` is scheduled and accounted like on a GPU cluster, but
no CUDA device exists. A requeued job may start again after cred_expire: 10 s here instead of the default 120 s.
There is no slurmdbd: job records come from slurmctld (`scontrol show job`, kept MinJobAge = 1 h after a job ends),
and the executor plugin queries job states with squeue.

Needs root (slurmd starts jobs as their user) and the Debian packages slurm-wlm and munge; `missing_reason()` says
which of these is absent so the tests can skip with it.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
NODE = "starmd-node"
N_GPUS = 4
N_CPUS = 16  # declared (SlurmdParameters=config_overrides): enough for the profile's requests on a 2-core machine
MEMORY_MB = 128000
PR_SET_PDEATHSIG = 1  # <sys/prctl.h>

SLURM_CONF = """\
ClusterName=starmdtest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={munge_socket},cred_expire=10
CredType=cred/munge
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
ReturnToService=2
MpiDefault=none
MinJobAge=3600
KillWait=30
SchedulerParameters=bf_interval=1
GresTypes=gpu
NodeName={node} NodeHostname={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory} Gres=gpu:{gpus} State=UNKNOWN
PartitionName=cpu Nodes={node} Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes={node} MaxTime=INFINITE State=UP
"""


def missing_reason() -> str | None:
    """Why no test cluster can be started here (None when it can)."""
    absent = [d for d in DAEMONS + ("sbatch", "scontrol", "squeue") if shutil.which(d) is None]
    if absent:
        return (f"real-SLURM tests need Debian's slurm-wlm and munge (missing: {', '.join(absent)}); "
                "`apt-get install slurm-wlm munge` (.ci/run does this when run as root)")
    if os.geteuid() != 0:
        return "real-SLURM tests start slurmd, which must run as root"
    return None


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the test process dies, even by SIGKILL (no daemon outlives it)."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class SlurmCluster:
    """The running daemons and the environment (SLURM_CONF) that points clients at them."""

    root: Path
    env: dict[str, str]
    processes: list[subprocess.Popen] = field(default_factory=list)

    @classmethod
    def start(cls, root: Path, timeout_s: float = 60.0) -> "SlurmCluster":
        """Write the configuration under `root`, start munged, slurmctld, slurmd; wait until the node is idle."""
        root.mkdir(parents=True, exist_ok=True)
        for sub in ("state", "spool", "munge", "gpu"):
            (root / sub).mkdir(exist_ok=True)
        (root / "munge").chmod(0o700)
        key = root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        munge_socket = root / "munge" / "munge.socket"
        host = socket.gethostname()
        (root / "slurm.conf").write_text(SLURM_CONF.format(
            host=host, ctld_port=_free_port(), slurmd_port=_free_port(), munge_socket=munge_socket, root=root,
            node=NODE, cpus=N_CPUS, memory=MEMORY_MB, gpus=N_GPUS))
        # gres/gpu drops file-less GPUs ("Removing file-less GPU"), so each GPU is an empty placeholder file; with
        # task/none nothing opens or constrains them.
        for k in range(N_GPUS):
            (root / "gpu" / f"fake{k}").touch()
        (root / "gres.conf").write_text(f"NodeName={NODE} Name=gpu File={root}/gpu/fake[0-{N_GPUS - 1}]\n")
        env = {**os.environ, "SLURM_CONF": str(root / "slurm.conf")}
        # Snakemake's jobstep executor clears SLURM_* (SLURM_CONF too) before the nested `srun` inside a job; a real
        # cluster has /etc/slurm/slurm.conf there. This cluster lives in `root`, so `srun` on the jobs' PATH is the
        # real srun with SLURM_CONF set again.
        (root / "bin").mkdir(exist_ok=True)
        srun = root / "bin" / "srun"
        srun.write_text(f"#!/bin/sh\nSLURM_CONF={root}/slurm.conf exec {shutil.which('srun')} \"$@\"\n")
        srun.chmod(0o755)
        env["PATH"] = f"{root / 'bin'}{os.pathsep}{env['PATH']}"
        cluster = cls(root, env)
        try:
            cluster._spawn(["munged", "--foreground", "--force", f"--key-file={key}", f"--socket={munge_socket}",
                            f"--pid-file={root}/munge/munged.pid", f"--log-file={root}/munge/munged.log",
                            f"--seed-file={root}/munge/munged.seed"], "munged.out")
            cluster._wait(lambda: munge_socket.exists(), timeout_s, "munged did not create its socket")
            cluster._spawn(["slurmctld", "-D", "-i"], "slurmctld.out")
            cluster._spawn(["slurmd", "-D", "-N", NODE], "slurmd.out")
            cluster._wait(cluster._node_idle, timeout_s, "the node did not become idle")
        except BaseException:
            cluster.stop()
            raise
        return cluster

    def _spawn(self, argv: list[str], log_name: str) -> None:
        with open(self.root / log_name, "w") as log:
            self.processes.append(subprocess.Popen(argv, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                                   preexec_fn=_die_with_parent))

    def _wait(self, ready, timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not ready():
            for proc in self.processes:
                if proc.poll() is not None:
                    raise RuntimeError(f"{what}: {proc.args[0]} exited with {proc.returncode}; logs in {self.root}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} within {timeout_s:.0f} s; logs in {self.root}")
            time.sleep(0.5)

    def _node_idle(self) -> bool:
        out = self.run("sinfo", "-h", "-N", "-o", "%T", check=False).stdout
        return out.strip().split("\n")[0].startswith("idle") if out.strip() else False

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        """A SLURM client command against this cluster."""
        return subprocess.run(list(argv), env=self.env, capture_output=True, text=True, check=check, timeout=60)

    def job(self, job_id: str) -> dict[str, str]:
        """`scontrol show job -o` as a dict (JobState, Partition, TRES, ExitCode, Restarts, ...)."""
        out = self.run("scontrol", "-o", "show", "job", job_id).stdout.strip()
        fields: dict[str, str] = {}
        for token in out.split():
            key, sep, value = token.partition("=")
            if sep:
                fields[key] = value
        return fields

    def job_ids(self) -> list[str]:
        """Every job slurmctld still knows (all of this session's jobs, MinJobAge being 1 h)."""
        out = self.run("squeue", "-h", "-a", "-t", "all", "-o", "%i").stdout
        return sorted(out.split(), key=int)

    def stop(self) -> None:
        """Cancel every job still queued or running (slurmstepd would outlive slurmd), then terminate the daemons
        this object started, newest first."""
        if all(proc.poll() is None for proc in self.processes) and len(self.processes) == len(DAEMONS):
            active = ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED", "REQUEUED")
            self.run("scancel", "--full", *self.job_ids(), check=False)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and self.run(
                    "squeue", "-h", "-a", "-t", ",".join(active), "-o", "%i", check=False).stdout.strip():
                time.sleep(0.5)
        for proc in reversed(self.processes):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
