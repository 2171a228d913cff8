"""Fake Slurm job cgroup trees (v1 as Debian's Slurm lays them out, v2 as slurmstepd.scope) and proc roots."""

from __future__ import annotations

import os
from pathlib import Path

MiB = 1024 * 1024
MEM_TOTAL_KB = 16 * 1024 * 1024  # the fake node: 16 GiB
V1_NO_LIMIT = 9223372036854771712


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def v1_job(root: Path, jobid: int, uid: int, *, usage_ns: int, cpus: str, rss: int, cache: int, limit: int,
           devices: str = "a *:* rwm\n", node: str = "vm") -> None:  # fmt: skip
    """A v1 job cgroup as slurmd makes it with Constrain*=yes (facts/slurm: slurm_<node>/uid_N/job_N)."""
    job = f"slurm_{node}/uid_{uid}/job_{jobid}"
    write(root / "cpuacct" / job / "cpuacct.usage", f"{usage_ns}\n")
    write(root / "cpuacct" / job / "cpuacct.stat", f"user {usage_ns // 10**7 - 50}\nsystem 50\n")
    write(root / "cpuset" / job / "cpuset.cpus", f"{cpus}\n")
    write(root / "cpuset" / f"slurm_{node}/uid_{uid}" / "cpuset.cpus", "0-15\n")
    mem = root / "memory" / job
    write(mem / "memory.usage_in_bytes", f"{rss + cache}\n")
    write(mem / "memory.limit_in_bytes", f"{limit}\n")
    write(mem / "memory.max_usage_in_bytes", f"{rss + cache + MiB}\n")
    write(mem / "memory.failcnt", "2\n")
    write(
        mem / "memory.stat",
        f"cache {cache}\nrss {rss}\ntotal_cache {cache}\ntotal_rss {rss}\n"
        f"total_active_file {cache // 4}\ntotal_inactive_file {cache // 4}\n",
    )
    write(root / "freezer" / job / "step_batch" / "cgroup.procs", "")
    write(root / "devices" / job / "devices.list", devices)


def fake_proc(p: Path) -> Path:
    """A proc root with meminfo and the driver's information on GPU 0 (PCI 00:06.0, /dev/nvidia3)."""
    write(p / "meminfo", f"MemTotal:       {MEM_TOTAL_KB} kB\nMemFree:        1 kB\n")
    write(p / "driver/nvidia/gpus/0000:00:06.0/information", "Model: \t H100\nDevice Minor: \t 3\n")
    return p


def process(proc: Path, pid: int, cgroup: str, uid: int) -> None:
    write(proc / str(pid) / "cgroup", cgroup)
    os.chown(proc / str(pid), uid, -1)


def v2_tree(root: Path, proc: Path) -> None:
    scope = root / "system.slice" / "vm_slurmstepd.scope"
    write(root / "cgroup.controllers", "cpuset cpu io memory pids\n")
    write(scope / "memory.max", f"{8192 * MiB}\n")
    job7 = scope / "job_7"
    write(job7 / "cpu.stat", "usage_usec 61000000\nuser_usec 60000000\nsystem_usec 1000000\nnr_periods 0\n")
    write(job7 / "cpuset.cpus.effective", "0-3\n")
    write(job7 / "memory.current", f"{300 * MiB}\n")
    write(job7 / "memory.max", "max\n")
    write(job7 / "memory.peak", f"{400 * MiB}\n")
    write(job7 / "memory.events", "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
    write(job7 / "memory.stat", f"anon {200 * MiB}\nfile {90 * MiB}\nshmem {10 * MiB}\nswapcached 0\n")
    write(job7 / "step_0/user/task_0/cgroup.procs", "6001\n")
    process(proc, 6001, "0::/system.slice/vm_slurmstepd.scope/job_7/step_0/user/task_0\n", 1234)
