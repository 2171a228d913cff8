"""Top-N processes by CPU, resident memory and GPU memory.

A full process scan costs about 15 µs a process, too much for the scrape path
on a busy node, so a `Sampler` scans /proc in the background and the collector
serves the newest ranking. Only the top N of each ranking become series, which
bounds the label cardinality (pid, name, user, slurm_job_id) to 3·N series.
"""

from __future__ import annotations

import os
import pwd
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

from prometheus_client.core import GaugeMetricFamily, Metric

from exporter.sampling import SampledCollector, Sampler

# cgroup v1 (".../slurm/uid_0/job_5/step_batch") and v2 (".../job_5/step_0").
SLURM_JOB = re.compile(r"/job_(\d+)(?:/|$)")
LABELS = ["pid", "name", "user", "slurm_job_id"]


class ProcessStat(NamedTuple):
    pid: int
    name: str
    uid: int
    cpu_ticks: int  # utime + stime, in clock ticks
    rss_bytes: int


class RankedProcess(NamedTuple):
    pid: int
    name: str
    user: str
    slurm_job_id: str  # "" when the process runs outside a Slurm job
    cpu_percent: float  # of one core, as top(1) shows it
    rss_bytes: int


class GpuProcess(NamedTuple):
    pid: int
    gpu: str  # NVML index
    uuid: str
    used_bytes: int


class Ranking(NamedTuple):
    by_cpu: list[RankedProcess]
    by_memory: list[RankedProcess]
    by_gpu_memory: list[tuple[RankedProcess, GpuProcess]]


class ProcessScanner:
    """Reads /proc/PID/stat for every process and ranks them; CPU % is the change since the last scan."""

    def __init__(
        self,
        top_n: int,
        proc_root: str = "/proc",
        gpu_processes: Callable[[], list[GpuProcess]] = list,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._top_n = top_n
        self._proc = Path(proc_root)
        self._gpu_processes = gpu_processes
        self._clock = clock
        self._ticks_per_s = os.sysconf("SC_CLK_TCK")
        self._page_size = os.sysconf("SC_PAGE_SIZE")
        self._previous: dict[int, int] = {}
        self._previous_at: float | None = None
        self._users: dict[int, str] = {}
        self._jobs: dict[int, str] = {}

    def scan(self) -> Ranking:
        """One pass over /proc: the top N by CPU, memory and GPU memory."""
        now = self._clock()
        stats = {s.pid: s for s in self._read_all()}
        elapsed = None if self._previous_at is None else now - self._previous_at
        cpu: dict[int, float] = {}
        for pid, s in stats.items():
            before = self._previous.get(pid)
            if elapsed and before is not None:
                cpu[pid] = max(0.0, (s.cpu_ticks - before) / self._ticks_per_s / elapsed * 100.0)
            else:
                cpu[pid] = 0.0
        self._previous = {pid: s.cpu_ticks for pid, s in stats.items()}
        self._previous_at = now
        # Forget pids that are gone so the caches cannot grow without bound.
        self._jobs = {pid: job for pid, job in self._jobs.items() if pid in stats}

        def ranked(pid: int) -> RankedProcess:
            s = stats[pid]
            return RankedProcess(pid, self._name(s), self._user(s.uid), self._job(pid), cpu[pid], s.rss_bytes)

        n = self._top_n
        by_cpu = sorted(stats, key=lambda p: (-cpu[p], p))[:n]
        by_mem = sorted((p for p in stats if stats[p].rss_bytes), key=lambda p: (-stats[p].rss_bytes, p))[:n]
        gpu = sorted((g for g in self._gpu_processes() if g.pid in stats), key=lambda g: (-g.used_bytes, g.pid))[:n]
        return Ranking(
            [ranked(p) for p in by_cpu if cpu[p] > 0],
            [ranked(p) for p in by_mem],
            [(ranked(g.pid), g) for g in gpu],
        )

    def _read_all(self) -> Iterator[ProcessStat]:
        for entry in os.scandir(self._proc):
            if not entry.name.isdigit():
                continue
            try:
                with open(f"{entry.path}/stat", "rb") as f:
                    raw = f.read().decode(errors="replace")
                uid = entry.stat().st_uid
            except OSError:
                continue  # the process exited between listing and reading
            stat = parse_stat(raw, self._page_size)
            if stat is not None:
                yield stat._replace(uid=uid)

    def _name(self, s: ProcessStat) -> str:
        # The kernel cuts comm at 15 characters; like psutil, take the full name from argv[0].
        if len(s.name) < 15:
            return s.name
        try:
            argv0 = (self._proc / str(s.pid) / "cmdline").read_bytes().split(b"\0", 1)[0].decode(errors="replace")
        except OSError:
            return s.name
        base = os.path.basename(argv0)
        return base if base.startswith(s.name) else s.name

    def _user(self, uid: int) -> str:
        if uid not in self._users:
            try:
                self._users[uid] = pwd.getpwuid(uid).pw_name
            except KeyError:
                self._users[uid] = str(uid)
        return self._users[uid]

    def _job(self, pid: int) -> str:
        if pid not in self._jobs:
            try:
                text = (self._proc / str(pid) / "cgroup").read_text()
            except OSError:
                text = ""
            m = SLURM_JOB.search(text)
            self._jobs[pid] = m.group(1) if m else ""
        return self._jobs[pid]


def parse_stat(raw: str, page_size: int) -> ProcessStat | None:
    """Parse /proc/PID/stat; the name sits in parentheses and may itself hold spaces and ')'."""
    left, right = raw.find("("), raw.rfind(")")
    if left < 0 or right < 0:
        return None
    fields = raw[right + 2 :].split()
    # fields[0] is field 3 (state): utime=14, stime=15, rss=24 in proc(5) numbering.
    try:
        ticks = int(fields[11]) + int(fields[12])
        rss = int(fields[21]) * page_size
    except (IndexError, ValueError):
        return None
    return ProcessStat(int(raw[:left]), raw[left + 1 : right], -1, ticks, rss)


class TopProcessCollector(SampledCollector):
    """Serves the newest top-N ranking as gauges.

    Sample output (check by hand with ``curl -s localhost:9101/metrics | grep fleet_top_process``)::

        # HELP fleet_top_process_cpu_percent CPU use of a top-N process, in % of one core.
        # TYPE fleet_top_process_cpu_percent gauge
        fleet_top_process_cpu_percent{name="python3",pid="7151",slurm_job_id="5",user="root"} 98.2
    """

    def __init__(self, scanner: ProcessScanner, interval: float = 5.0):
        self._sampler = Sampler("processes", scanner.scan, interval)

    def start(self) -> TopProcessCollector:
        # Two scans: CPU % is a difference, so the first scrape already has one.
        self._sampler.sample_now()
        time.sleep(0.2)
        self._sampler.start()
        return self

    def collect(self) -> Iterator[Metric]:
        sample = self._sampler.latest()
        if sample is None:
            return
        ranking: Ranking = sample.value
        cpu = GaugeMetricFamily(
            "fleet_top_process_cpu_percent", "CPU use of a top-N process, in % of one core.", labels=LABELS
        )
        for p in ranking.by_cpu:
            cpu.add_metric(_labels(p), round(p.cpu_percent, 2))
        mem = GaugeMetricFamily(
            "fleet_top_process_resident_memory_bytes", "Resident memory of a top-N process.", labels=LABELS
        )
        for p in ranking.by_memory:
            mem.add_metric(_labels(p), p.rss_bytes)
        gpu = GaugeMetricFamily(
            "fleet_top_process_gpu_memory_bytes",
            "GPU memory used by a top-N process on one GPU.",
            labels=[*LABELS, "gpu", "UUID"],
        )
        for p, g in ranking.by_gpu_memory:
            gpu.add_metric([*_labels(p), g.gpu, g.uuid], g.used_bytes)
        yield cpu
        yield mem
        yield gpu
        yield GaugeMetricFamily(
            "fleet_top_process_sample_timestamp_seconds",
            "When the process ranking served was taken, in Unix time.",
            value=sample.taken_at,
        )


def _labels(p: RankedProcess) -> list[str]:
    return [str(p.pid), p.name, p.user, p.slurm_job_id]
