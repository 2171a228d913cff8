"""Per-job accounting on a compute node, in the names of jobstats' exporters.

CPU and memory come from each job's cgroup (`exporter.cgroups`) as
plazonic/cgroup_exporter names them (``cgroup_*{jobid,step,task}``); a GPU
belongs to the jobs whose processes NVML lists on it (pid → /proc/PID/cgroup
→ ``job_N``), served as plazonic/nvidia_gpu_prometheus_exporter names it
(``nvidia_gpu_jobId``, ``nvidia_gpu_duty_cycle``, … with its labels), so
jobstats' own queries run unchanged on our data. Reading a thousand jobs'
cgroups takes tens of milliseconds: a `Sampler` reads them and builds the
families in the background; a scrape only serves them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

from prometheus_client.core import GaugeMetricFamily, Metric

from exporter.cgroups import JobCgroups, JobUsage
from exporter.exposition import PreRenderedCollector, Rendered
from exporter.nvml import MIB, GpuDevice
from exporter.processes import SLURM_JOB
from exporter.sampling import Sampler

CGROUP_LABELS = ["jobid", "step", "task"]  # job-level series: step="" and task="", as jobstats queries them
GPU_LABELS = ["ordinal", "minor_number", "uuid", "name", "GPU_I_ID", "jobid", "userid"]
# cgroup_exporter's families: name -> (help, JobUsage field); all gauges there, so here too.
CGROUP_FAMILIES = {
    "cgroup_cpu_total_seconds": ("Cumulative CPU usage of a job, user + system", "cpu_seconds"),
    "cgroup_cpu_user_seconds": ("Cumulative CPU user seconds of a job", "cpu_user_seconds"),
    "cgroup_cpu_system_seconds": ("Cumulative CPU system seconds of a job", "cpu_system_seconds"),
    "cgroup_cpus": ("Number of CPUs allocated to a job on this node", "cpus"),
    "cgroup_memory_rss_bytes": ("Memory RSS of a job", "memory_rss_bytes"),
    "cgroup_memory_cache_bytes": ("Memory cache of a job", "memory_cache_bytes"),
    "cgroup_memory_shmem_bytes": ("Memory shared (shmem) of a job", "memory_shmem_bytes"),
    "cgroup_memory_used_bytes": ("Memory used by a job (rss + cache, as the kernel charges it)", "memory_used_bytes"),
    "cgroup_memory_total_bytes": ("Memory limit of a job (the node's memory if it has none)", "memory_limit_bytes"),
    "cgroup_memory_fail_count": ("Times a job hit its memory limit (v2: OOM kills)", "memory_fail_count"),
}

# nvidia_gpu_prometheus_exporter's families and their help, for the GPUs jobs use.
GPU_FAMILIES = {
    "nvidia_gpu_jobId": "JobId number of a job currently using this GPU",
    "nvidia_gpu_jobUid": "Uid number of user running jobs on this GPU",
    "nvidia_gpu_duty_cycle": "Percent of time over the past sample period during which kernels ran on the GPU",
    "nvidia_gpu_memory_used_bytes": "Memory used by the GPU device in bytes",
    "nvidia_gpu_memory_total_bytes": "Total memory of the GPU device in bytes",
}


class JobsReading(NamedTuple):
    families: list[Metric]
    rendered: Rendered  # the same, formatted once


class GpuJob(NamedTuple):
    """One GPU (or MIG instance) used by one job at one moment."""

    device: GpuDevice
    gpu_instance_id: str  # "" for a whole GPU
    jobid: str
    uid: int
    used_bytes: int  # GPU memory of the GPU (or instance), all its processes
    total_bytes: int | None
    job_used_bytes: int  # GPU memory of this job's own processes


class JobCollector(PreRenderedCollector):
    """Serves the newest per-job cgroup and GPU reading.

    Sample output (check by hand with ``curl -s localhost:9101/metrics | grep -E '^(cgroup|nvidia_gpu)_'``)::

        # HELP cgroup_cpu_total_seconds Cumulative CPU usage of a job, user + system
        # TYPE cgroup_cpu_total_seconds gauge
        cgroup_cpu_total_seconds{jobid="4",step="",task=""} 93.1
        nvidia_gpu_jobId{GPU_I_ID="",jobid="4",minor_number="0",name="NVIDIA H100 80GB HBM3",ordinal="0",…} 4.0
    """

    def __init__(
        self,
        cgroups: JobCgroups,
        gpu_devices: Callable[[], list[GpuDevice]] = list,
        proc_root: str | Path = "/proc",
        interval: float = 5.0,
        clock: Callable[[], float] = time.time,
    ):
        self._cgroups = cgroups
        self._gpu_devices = gpu_devices
        self._proc = Path(proc_root)
        self._minors: dict[str, str] = {}
        self._clock = clock
        self._sampler: Sampler[JobsReading] = Sampler("jobs", self._read, interval, clock=clock)

    def _read(self) -> JobsReading:
        taken_at = self._clock()
        jobs = self._cgroups.read()
        families = list(cgroup_families(jobs))
        families.extend(gpu_families(self.gpu_jobs({j.jobid: j for j in jobs}), self._minor))
        families.append(
            GaugeMetricFamily(
                "fleet_jobs_sample_timestamp_seconds",
                "When the per-job reading served was taken, in Unix time.",
                value=taken_at,
            )
        )
        return JobsReading(families, Rendered.of(families))

    def gpu_jobs(self, jobs: dict[str, JobUsage]) -> list[GpuJob]:
        """Each GPU (or MIG instance) with each job that has a process on it, from NVML's process lists."""
        found = []
        for dev in self._gpu_devices():
            if dev.mig_instances:
                slices = [
                    (str(gi.gpu_instance_id), gi.processes, gi.fb_used_mib, _total(gi)) for gi in dev.mig_instances
                ]
            else:
                slices = [("", dev.processes, dev.fb_used_mib, _total(dev))]
            # Slurm's binding (v1 devices cgroup) names a GPU's job even while its processes leave it idle.
            bound = [] if dev.mig_instances else [j for j in jobs.values() if self._bound(j, dev)]
            for gi_id, processes, used_mib, total_mib in slices:
                per_job: dict[str, int] = {j.jobid: 0 for j in bound}
                uids: dict[str, int] = {j.jobid: j.uid if j.uid is not None else -1 for j in bound}
                for p in processes:
                    jobid, uid = self._job_of(p.pid)
                    if jobid:
                        per_job[jobid] = per_job.get(jobid, 0) + p.used_gpu_memory_bytes
                        known = jobs.get(jobid)
                        uids[jobid] = known.uid if known is not None and known.uid is not None else uid
                for jobid, job_used in per_job.items():
                    found.append(
                        GpuJob(
                            dev,
                            gi_id,
                            jobid,
                            uids[jobid],
                            (used_mib or 0) * MIB,
                            None if total_mib is None else total_mib * MIB,
                            job_used,
                        )
                    )
        return found

    def _bound(self, job: JobUsage, dev: GpuDevice) -> bool:
        minor = self._minor(dev)
        return job.gpu_minors is not None and minor.isdigit() and int(minor) in job.gpu_minors

    def _job_of(self, pid: int) -> tuple[str, int]:
        """The Slurm job of a host pid ("" outside any) and the process's uid."""
        try:
            text = (self._proc / str(pid) / "cgroup").read_text()
            uid = (self._proc / str(pid)).stat().st_uid
        except OSError:
            return "", -1  # it exited since NVML listed it
        m = SLURM_JOB.search(text)
        return (m.group(1) if m else ""), uid

    def _minor(self, dev: GpuDevice) -> str:
        # The /dev/nvidiaN number jobstats keys GPUs by; NVML's index where the driver's procfs is absent.
        if dev.uuid not in self._minors:
            domain, _, rest = dev.pci_bus_id.lower().partition(":")
            info = self._proc / "driver" / "nvidia" / "gpus" / f"{domain[-4:]}:{rest}" / "information"
            minor = str(dev.index)
            try:
                for line in info.read_text().splitlines():
                    if line.startswith("Device Minor:"):
                        minor = line.split(":", 1)[1].strip()
            except OSError:
                pass
            self._minors[dev.uuid] = minor
        return self._minors[dev.uuid]


def _total(reading) -> int | None:
    parts = (reading.fb_used_mib, reading.fb_free_mib)
    if None in parts:
        return None
    return sum(parts) + (reading.fb_reserved_mib or 0)


def cgroup_families(jobs: list[JobUsage]) -> Iterator[Metric]:
    """cgroup_exporter's job-level families, plus the job's uid and peak memory."""
    for name, (doc, field) in CGROUP_FAMILIES.items():
        family = GaugeMetricFamily(name, doc, labels=CGROUP_LABELS)
        for j in jobs:
            value = getattr(j, field)
            if value is not None:  # a controller Slurm does not manage here: no series, not a 0
                family.add_metric([j.jobid, "", ""], value)
        yield family
    uid = GaugeMetricFamily("cgroup_uid", "Uid of a job's owner", labels=["jobid"])
    peak = GaugeMetricFamily("fleet_job_memory_peak_bytes", "Highest memory use of a job so far", labels=["jobid"])
    for j in jobs:
        if j.uid is not None:
            uid.add_metric([j.jobid], j.uid)
        if j.memory_peak_bytes is not None:
            peak.add_metric([j.jobid], j.memory_peak_bytes)
    yield uid
    yield peak
    yield GaugeMetricFamily("fleet_jobs", "Slurm jobs with a cgroup on this node", value=len(jobs))


def gpu_families(gpu_jobs: list[GpuJob], minor: Callable[[GpuDevice], str]) -> Iterator[Metric]:
    """nvidia_gpu_prometheus_exporter's per-GPU families, for the GPUs that jobs use."""
    families = {name: GaugeMetricFamily(name, doc, labels=GPU_LABELS) for name, doc in GPU_FAMILIES.items()}
    mine = GaugeMetricFamily(
        "fleet_job_gpu_memory_bytes",
        "GPU memory held by a job's own processes on one GPU (or MIG instance)",
        labels=["jobid", "gpu", "UUID", "GPU_I_ID"],
    )
    for g in gpu_jobs:
        dev = g.device
        labels = [str(dev.index), minor(dev), dev.uuid, dev.name, g.gpu_instance_id, g.jobid, str(g.uid)]
        families["nvidia_gpu_jobId"].add_metric(labels, int(g.jobid))
        families["nvidia_gpu_jobUid"].add_metric(labels, g.uid)
        if dev.gpu_util_pct is not None and not g.gpu_instance_id:  # NVML has none for a MIG instance
            families["nvidia_gpu_duty_cycle"].add_metric(labels, dev.gpu_util_pct)
        families["nvidia_gpu_memory_used_bytes"].add_metric(labels, g.used_bytes)
        if g.total_bytes is not None:
            families["nvidia_gpu_memory_total_bytes"].add_metric(labels, g.total_bytes)
        mine.add_metric([g.jobid, str(dev.index), dev.uuid, g.gpu_instance_id], g.job_used_bytes)
    yield from families.values()
    yield mine
