"""A real one-node Slurm (Debian's slurm-wlm + munge) in a temp dir, for tests: no systemd, no /etc/slurm.

Laid out as ../shared/facts/slurm/ found works on these machines: munged with
its own socket, slurmctld and slurmd as root with free loopback ports, and
``task/cgroup`` with Constrain*=yes so that every job has cpuacct, memory and
cpuset cgroups of its own. The node gets a name of its own (slurmd -N), so
the cgroup tree (``slurm_<node>``, Debian builds with MULTIPLE_SLURMD) and the
ports cannot collide with another cluster on the same machine.
"""

from __future__ import annotations

import glob
import os
import random
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from fleetwatch.testing.waits import free_port

CGROUP_ROOT = Path("/sys/fs/cgroup")
V1_CONTROLLERS = ("cpuacct", "memory", "cpuset", "freezer", "devices")
SLURM_CONF = """\
ClusterName=fwtest
FirstJobId={first_job}
SlurmctldHost={host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={dir}/run/munge.socket
StateSaveLocation={dir}/state/ctld
SlurmdSpoolDir={dir}/state/d
SlurmctldPidFile={dir}/run/slurmctld.pid
SlurmdPidFile={dir}/run/slurmd.pid
SlurmctldLogFile={dir}/log/slurmctld.log
SlurmdLogFile={dir}/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/cgroup
TaskPlugin=task/cgroup,task/affinity
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/cgroup
JobAcctGatherFrequency=10
JobCompType=jobcomp/none
{jwt}SlurmctldTimeout=30
SlurmdTimeout=60
InactiveLimit=0
MinJobAge=300
KillWait=2
Waittime=0
NodeName={node} NodeHostname={host} NodeAddr=127.0.0.1 Port={d_port} CPUs={cpus} RealMemory={mem_mb} State=UNKNOWN
PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP
"""
CGROUP_CONF = """\
CgroupPlugin=autodetect
CgroupMountpoint={root}
ConstrainCores=yes
ConstrainRAMSpace=yes
ConstrainSwapSpace=no
ConstrainDevices=yes
"""


class SlurmUnavailable(RuntimeError):
    """Slurm cannot run here; the message says why (tests skip with it)."""


def why_not() -> str | None:
    """Why a one-node Slurm cannot start on this machine, or None if it can."""
    missing = [b for b in ("slurmctld", "slurmd", "sbatch", "munged") if not shutil.which(b)]
    if missing:
        return f"Slurm is not installed ({', '.join(missing)} missing: `make test` installs slurm-wlm and munge)"
    if os.geteuid() != 0:
        return "slurmd needs root to manage job cgroups"
    if not all((CGROUP_ROOT / c).is_dir() for c in ("cpuacct", "memory", "cpuset", "freezer")):
        return f"no cgroup v1 cpuacct/memory/cpuset/freezer under {CGROUP_ROOT}: Slurm's task/cgroup cannot run"
    if not Path("/etc/munge/munge.key").exists() and not shutil.which("mungekey"):
        return "no /etc/munge/munge.key and no mungekey to make one"
    return None


class SlurmCluster:
    """munged + slurmctld + slurmd for one node; ``env`` is what client commands need (SLURM_CONF)."""

    def __init__(self, cpus: int | None = None):
        self.host = socket.gethostname().split(".")[0]
        self.node = f"fw{uuid.uuid4().hex[:8]}"
        self.dir = Path(tempfile.mkdtemp(prefix="fleetwatch-slurm-"))
        self.dir.chmod(0o755)  # munged runs as user munge and must reach its socket folder
        self.cpus = cpus or os.cpu_count() or 1
        self.conf = self.dir / "etc" / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self._pids: dict[str, int] = {}
        self._rest: subprocess.Popen | None = None

    def start(self, timeout_s: float = 60.0) -> SlurmCluster:
        """Start the three daemons and wait until the node is idle.

        Raises:
            SlurmUnavailable: a daemon did not start; the message holds its log.
        """
        reason = why_not()
        if reason:
            raise SlurmUnavailable(reason)
        for sub in ("etc", "run", "log", "state/ctld", "state/d"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        mem_mb = int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20 * 0.9)
        self.conf.write_text(
            SLURM_CONF.format(
                host=self.host,
                node=self.node,
                dir=self.dir,
                ctld_port=free_port(),
                d_port=free_port(),
                cpus=self.cpus,
                mem_mb=mem_mb,
                # Job ids of their own: the job cgroups of clusters on one machine sit side by side.
                first_job=random.randrange(1000, 1_000_000, 1000),
                # slurmrestd's tokens, where Debian's slurm-wlm-jwt-plugin is installed.
                jwt=f"AuthAltTypes=auth/jwt\nAuthAltParameters=jwt_key={self.dir}/etc/jwt_hs256.key\n"
                if glob.glob("/usr/lib/*/slurm-wlm/auth_jwt.so")
                else "",
            )
        )
        (self.dir / "etc" / "cgroup.conf").write_text(CGROUP_CONF.format(root=CGROUP_ROOT))
        # The key slurmctld signs and checks slurmrestd's JWTs with (AuthAltTypes=auth/jwt).
        key = self.dir / "etc" / "jwt_hs256.key"
        key.write_bytes(os.urandom(32))
        key.chmod(0o600)
        self._start_munge()
        self._daemon("slurmctld", ["slurmctld", "-f", str(self.conf)])
        self._daemon("slurmd", ["slurmd", "-f", str(self.conf), "-N", self.node])
        deadline = time.monotonic() + timeout_s
        while self.node_state() != "idle":
            if time.monotonic() > deadline:
                logs = self.log_tail()
                self.stop()
                raise SlurmUnavailable(f"node {self.node} not idle within {timeout_s} s:\n{logs}")
            time.sleep(0.2)
        return self

    def run(self, *argv: str, timeout_s: float = 30.0) -> str:
        """A Slurm client command against this cluster; its stdout."""
        r = subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=timeout_s)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)}: rc={r.returncode}: {r.stderr.strip()}")
        return r.stdout

    def sbatch(self, script: str, *options: str) -> str:
        """Submit ``script`` (shell) as a batch job; its job id."""
        out = self.run("sbatch", "--parsable", f"--output={self.dir}/log/job-%j.out", *options, "--wrap", script)
        return out.strip().split(";")[0]

    def node_state(self) -> str:
        try:
            return self.run("sinfo", "-h", "-N", "-n", self.node, "-o", "%T", timeout_s=10).strip()
        except (RuntimeError, subprocess.TimeoutExpired):
            return ""

    def job_state(self, jobid: str) -> str:
        return self.run("squeue", "-h", "-j", jobid, "-o", "%T", "--states=all").strip()

    def wait_job_state(self, jobid: str, state: str, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while (got := self.job_state(jobid)) != state:
            assert time.monotonic() < deadline, f"job {jobid} is {got!r}, not {state} after {timeout_s} s"
            time.sleep(0.2)

    def job_cgroup(self, jobid: str, controller: str = "cpuacct") -> Path:
        """The v1 cgroup of a job (uid_<submitter>, as slurmd lays it out)."""
        found = list((CGROUP_ROOT / controller / f"slurm_{self.node}").glob(f"uid_*/job_{jobid}"))
        assert found, f"no {controller} cgroup for job {jobid} under slurm_{self.node}"
        return found[0]

    def token(self, user: str = "root", lifespan_s: int = 3600) -> str:
        """A JWT for ``user`` from ``scontrol token``, as slurmrestd's clients send it."""
        out = self.run("scontrol", "token", f"username={user}", f"lifespan={lifespan_s}")
        return out.strip().removeprefix("SLURM_JWT=")

    def start_slurmrestd(self, timeout_s: float = 30.0) -> str:
        """slurmrestd (JWT auth) on a free loopback port, run as user slurm since it refuses root; its URL."""
        if not shutil.which("slurmrestd") or "AuthAltTypes" not in self.conf.read_text():
            raise SlurmUnavailable("slurmrestd or its JWT plugin is not installed (`make test` installs both)")
        port = free_port()
        argv = ["runuser", "-u", "slurm", "--", "env", f"SLURM_CONF={self.conf}", "SLURM_JWT=daemon",
                "slurmrestd", "-a", "rest_auth/jwt", "-s", "openapi/v0.0.38", f"127.0.0.1:{port}"]  # fmt: skip
        log = open(self.dir / "log" / "slurmrestd.log", "wb")
        self._rest = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    return url
            except OSError:
                if self._rest.poll() is not None or time.monotonic() > deadline:
                    raise SlurmUnavailable(
                        f"slurmrestd did not start: {(self.dir / 'log' / 'slurmrestd.log').read_text()}"
                    ) from None
                time.sleep(0.1)

    def log_tail(self, lines: int = 20) -> str:
        parts = []
        for name in ("run/munged.log", "log/slurmctld.log", "log/slurmd.log"):
            path = self.dir / name
            if path.exists():
                parts.append(f"--- {name}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:]))
        return "\n".join(parts)

    def stop(self) -> None:
        """Cancel every job, stop the daemons by their pids, remove the node's cgroups and the temp dir."""
        if self._rest is not None:
            os.killpg(self._rest.pid, 15)  # runuser and slurmrestd, its child
            self._rest.wait(10)
        if "slurmctld" in self._pids:
            subprocess.run(["scancel", "--full", f"--nodelist={self.node}"], env=self.env, capture_output=True)
        for name in ("slurmd", "slurmctld", "munged"):
            pid = self._pids.pop(name, None)
            if pid is not None:
                _terminate(pid)
        for controller in V1_CONTROLLERS:
            top = CGROUP_ROOT / controller / f"slurm_{self.node}"
            # Deepest first: a cgroup directory is removed with rmdir once its children are.
            for path in sorted(top.glob("**/"), key=lambda p: -len(p.parts)) if top.exists() else ():
                try:
                    path.rmdir()
                except OSError:
                    pass
        shutil.rmtree(self.dir, ignore_errors=True)

    def _start_munge(self) -> None:
        run = self.dir / "run"
        key = Path("/etc/munge/munge.key")
        if not key.exists():
            subprocess.run(["runuser", "-u", "munge", "--", "mungekey", "--create"], check=True, capture_output=True)
        shutil.chown(run, "munge", "munge")
        self._daemon(
            "munged",
            [
                "runuser", "-u", "munge", "--", "munged",
                f"--socket={run}/munge.socket", f"--pid-file={run}/munged.pid",
                f"--log-file={run}/munged.log", f"--seed-file={run}/munged.seed",
            ],
            pid_file=run / "munged.pid",
        )  # fmt: skip

    def _daemon(self, name: str, argv: list[str], pid_file: Path | None = None) -> None:
        # Each daemon forks into the background and writes its pid file; that pid is what we stop.
        r = subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=30)
        pid_file = pid_file or self.dir / "run" / f"{name}.pid"
        deadline = time.monotonic() + 10
        while r.returncode == 0 and not (pid_file.exists() and pid_file.read_text().strip()):
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        if r.returncode != 0 or not pid_file.exists():
            logs = self.log_tail()
            self.stop()
            raise SlurmUnavailable(f"{name} did not start (rc={r.returncode}): {r.stderr.strip()}\n{logs}")
        self._pids[name] = int(pid_file.read_text().strip())


def _terminate(pid: int, timeout_s: float = 10.0) -> None:
    try:
        os.kill(pid, 15)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.kill(pid, 9)
