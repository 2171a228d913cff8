"""Per-job usage from the cgroups Slurm makes for its jobs (v1 and v2), read as jobstats' cgroup_exporter reads them.

v1 (``task/cgroup`` with Constrain*=yes): one folder per controller,
``<root>/<controller>/slurm[_<node>]/uid_<uid>/job_<id>``; Debian's build
names the top ``slurm_<node>``. v2: ``<root>/system.slice/[<node>_]slurmstepd.scope/job_<id>``.
Only the job-level folder is read: it holds the sums of its steps and tasks.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

# What the kernel writes for "no limit" in v1 (PAGE_COUNTER_MAX pages, rounded): anything above is unlimited.
V1_UNLIMITED = 1 << 62
V1_CONTROLLERS = ("cpuacct", "memory", "cpuset", "freezer")
NVIDIA_MAJOR = 195  # /dev/nvidiaN; 255 is nvidiactl and 254 nvidia-modeset, not GPUs
NVIDIA_NOT_GPUS = frozenset({254, 255})
V1_JOBS = "slurm*/uid_*/job_*"
V2_JOBS = "system.slice/*slurmstepd.scope/job_*"


class JobUsage(NamedTuple):
    """One job's usage on this node; None where the cgroup (or this Slurm's set-up) does not say."""

    jobid: str
    uid: int | None
    cpu_seconds: float | None  # cumulative, user + system
    cpu_user_seconds: float | None
    cpu_system_seconds: float | None
    cpus: int | None  # CPUs of its cpuset: those allocated to it on this node
    memory_used_bytes: int | None  # rss + cache, as the kernel charges it
    memory_rss_bytes: int | None
    memory_cache_bytes: int | None
    memory_shmem_bytes: int | None
    memory_limit_bytes: int | None  # the node's memory when the cgroup has no limit
    memory_peak_bytes: int | None
    memory_fail_count: int | None  # v1: limit hits; v2: OOM kills
    gpu_minors: frozenset[int] | None = None  # /dev/nvidiaN the job may open (v1 ConstrainDevices); None: unknown


def cgroup_version(root: str | Path) -> str | None:
    """ "v2" if ``root`` is a unified hierarchy, "v1" if it holds v1 controllers, else None."""
    root = Path(root)
    if (root / "cgroup.controllers").exists():
        return "v2"
    if any((root / c).is_dir() for c in V1_CONTROLLERS):
        return "v1"
    return None


def slurm_cgroups_present(root: str | Path) -> bool:
    """Whether slurmd has made its cgroup folders under ``root`` (it does at start, before any job)."""
    root = str(root)
    if cgroup_version(root) == "v2":
        return bool(glob.glob(f"{root}/system.slice/*slurmstepd.scope"))
    return any(glob.glob(f"{root}/{c}/slurm*") for c in V1_CONTROLLERS)


class JobCgroups:
    """Reads every Slurm job's cgroup under ``root`` (default /sys/fs/cgroup; a fake tree in tests)."""

    def __init__(self, root: str | Path = "/sys/fs/cgroup", proc_root: str | Path = "/proc"):
        self._root = str(root)
        self._proc = Path(proc_root)
        self._mem_total = _mem_total(self._proc)
        self._hz = os.sysconf("SC_CLK_TCK")  # cpuacct.stat counts USER_HZ ticks
        self._uids: dict[str, int | None] = {}  # v2 paths carry no uid: found once per job

    def read(self) -> list[JobUsage]:
        """Every job with a cgroup on this node now, in job id order."""
        version = cgroup_version(self._root)
        found = list(self._v2() if version == "v2" else self._v1() if version == "v1" else ())
        self._uids = {j.jobid: j.uid for j in found if j.jobid in self._uids}
        found.sort(key=lambda j: (len(j.jobid), j.jobid))
        return found

    def _v1(self) -> Iterator[JobUsage]:
        dirs: dict[str, dict[str, str]] = {}
        uids: dict[str, int] = {}
        for controller in ("cpuacct", "cpu,cpuacct", "memory", "cpuset", "freezer", "devices"):
            for path in glob.iglob(f"{self._root}/{controller}/{V1_JOBS}"):
                jobid = path.rsplit("job_", 1)[1]
                if not jobid.isdigit():
                    continue
                dirs.setdefault(jobid, {}).setdefault(controller.removeprefix("cpu,"), path)
                uid = path.rsplit("/", 2)[-2].removeprefix("uid_")
                uids[jobid] = int(uid) if uid.isdigit() else None
        for jobid, paths in dirs.items():
            cpu = paths.get("cpuacct")
            mem = paths.get("memory")
            usage = _int(f"{cpu}/cpuacct.usage") if cpu else None
            ticks = _keyed(f"{cpu}/cpuacct.stat") if cpu else {}
            stat = _keyed(f"{mem}/memory.stat") if mem else {}
            limit = _int(f"{mem}/memory.limit_in_bytes") if mem else None
            cache = stat.get("total_cache")
            active = stat.get("total_active_file", 0) + stat.get("total_inactive_file", 0)
            yield JobUsage(
                jobid=jobid,
                uid=uids.get(jobid),
                cpu_seconds=None if usage is None else usage / 1e9,
                cpu_user_seconds=_ratio(ticks.get("user"), self._hz),
                cpu_system_seconds=_ratio(ticks.get("system"), self._hz),
                cpus=_cpuset_count(paths.get("cpuset"), "cpuset.cpus"),
                memory_used_bytes=_int(f"{mem}/memory.usage_in_bytes") if mem else None,
                memory_rss_bytes=stat.get("total_rss"),
                memory_cache_bytes=cache,
                memory_shmem_bytes=None if cache is None else max(0, cache - active),
                memory_limit_bytes=self._limit(limit if limit is None or limit < V1_UNLIMITED else None, mem),
                memory_peak_bytes=_int(f"{mem}/memory.max_usage_in_bytes") if mem else None,
                memory_fail_count=_int(f"{mem}/memory.failcnt") if mem else None,
                gpu_minors=_gpu_minors(paths.get("devices")),
            )

    def _v2(self) -> Iterator[JobUsage]:
        for path in glob.iglob(f"{self._root}/{V2_JOBS}"):
            jobid = path.rsplit("job_", 1)[1]
            if not jobid.isdigit():
                continue
            cpu = _keyed(f"{path}/cpu.stat")
            stat = _keyed(f"{path}/memory.stat")
            limit = _text(f"{path}/memory.max")
            anon = stat.get("anon")
            if jobid not in self._uids:
                self._uids[jobid] = self._uid_of_a_process(path)
            yield JobUsage(
                jobid=jobid,
                uid=self._uids[jobid],
                cpu_seconds=_ratio(cpu.get("usage_usec"), 1e6),
                cpu_user_seconds=_ratio(cpu.get("user_usec"), 1e6),
                cpu_system_seconds=_ratio(cpu.get("system_usec"), 1e6),
                cpus=_cpuset_count(path, "cpuset.cpus.effective"),
                memory_used_bytes=_int(f"{path}/memory.current"),
                memory_rss_bytes=None if anon is None else anon + stat.get("swapcached", 0),
                memory_cache_bytes=stat.get("file"),
                memory_shmem_bytes=stat.get("shmem"),
                memory_limit_bytes=self._limit(int(limit) if limit and limit.isdigit() else None, path),
                memory_peak_bytes=_int(f"{path}/memory.peak"),
                memory_fail_count=_keyed(f"{path}/memory.events").get("oom"),
            )

    def _limit(self, limit: int | None, path: str | None) -> int | None:
        # No limit of its own: the tightest of its parents' (v2 "max" climbs), else the node's memory.
        if path is None:
            return None
        while limit is None and path.startswith(self._root) and len(path) > len(self._root):
            path = os.path.dirname(path)
            v2 = _text(f"{path}/memory.max")
            v1 = _int(f"{path}/memory.limit_in_bytes")
            if v2 and v2.isdigit():
                limit = int(v2)
            elif v1 is not None and v1 < V1_UNLIMITED:
                limit = v1
        return limit if limit is not None else self._mem_total

    def _uid_of_a_process(self, path: str) -> int | None:
        for folder, _, files in os.walk(path):
            if "cgroup.procs" in files:
                for pid in (_text(f"{folder}/cgroup.procs") or "").split():
                    try:
                        return (self._proc / pid).stat().st_uid
                    except OSError:
                        continue
        return None


def _text(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _int(path: str) -> int | None:
    text = _text(path)
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def _keyed(path: str) -> dict[str, int]:
    """A "key value" per line file (cpu.stat, memory.stat, memory.events)."""
    found = {}
    for line in (_text(path) or "").splitlines():
        key, _, value = line.partition(" ")
        if value.strip().isdigit():
            found[key] = int(value)
    return found


def _gpu_minors(path: str | None) -> frozenset[int] | None:
    """The NVIDIA GPUs a v1 devices cgroup allows ("c 195:1 rwm"); None where it allows every device."""
    text = _text(f"{path}/devices.list") if path else None
    if text is None or "a *:* rwm" in text:
        return None
    minors = set()
    for line in text.splitlines():
        kind, _, rest = line.partition(" ")
        major, _, minor = rest.split(" ")[0].partition(":")
        if kind == "c" and major == str(NVIDIA_MAJOR) and minor.isdigit() and int(minor) not in NVIDIA_NOT_GPUS:
            minors.add(int(minor))
    return frozenset(minors)


def _ratio(value: int | None, per: float) -> float | None:
    return None if value is None else value / per


def _cpuset_count(path: str | None, name: str) -> int | None:
    # An empty cpuset means "as the parent's" (v1 before a CPU is pinned): climb until one says.
    while path:
        text = _text(f"{path}/{name}")
        if text is None:
            return None
        if text:
            return cpulist_count(text)
        path = os.path.dirname(path)
    return None


def cpulist_count(text: str) -> int:
    """CPUs in a kernel cpu list ("0-3,8,10-11" is 7)."""
    count = 0
    for part in text.split(","):
        low, _, high = part.partition("-")
        count += int(high) - int(low) + 1 if high else 1
    return count


def _mem_total(proc: Path) -> int | None:
    try:
        for line in (proc / "meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None
