"""The metric catalog: each friendly name of the spec (REQ-METRIC-002) and the PromQL that computes it.

Every entry is recorded as ``fleet:<name>`` with the label ``host_id`` (plus
the metric's own labels, e.g. ``gpu_index``); ``instance`` and ``job`` are
aggregated away so that scraped and pushed data share one shape. Everything
downstream (queries, alerts, downsampling, dashboards) reads that layer.
"""

from __future__ import annotations

import re
from typing import NamedTuple

MiB = 1024 * 1024


class CatalogMetric(NamedTuple):
    """One friendly metric of the spec and the PromQL that computes it from the exporter's families."""

    name: str  # "cpu.utilization"
    unit: str  # "%", "MiB" (2^20 bytes), "MB/s" (10^6 bytes/s), "Mbps" (10^6 bits/s), …
    description: str
    labels: tuple[str, ...]  # the metric's own labels beyond host_id
    expr: str  # PromQL over the exporter's families; "$W" stands for the rate window

    @property
    def record(self) -> str:
        """The recorded series: ``fleet:cpu_utilization``."""
        return "fleet:" + self.name.replace(".", "_")

    def promql(self, rate_window: str = "1m") -> str:
        """The source expression with its rate window filled in."""
        return self.expr.replace("$W", rate_window)


class UnknownMetric(ValueError):
    """A name that is not in the catalog; ``valid`` lists those that are."""

    def __init__(self, name: str, valid: list[str]):
        self.valid = valid
        super().__init__(f"unknown metric {name!r}; valid metrics: {', '.join(valid)}")


# Every aggregation keeps host_id (+ the metric's labels) and drops instance/job,
# so scraped and pushed points share one shape. `max`, not `sum`, where one host
# may be seen twice (node_exporter beside our exporter under one host_id): a
# duplicate then counts once.
def _gpu(family: str) -> str:
    # dcgm-exporter's `gpu` label becomes the spec's `gpu_index`; identity labels
    # (UUID, pci_bus_id, modelName, Hostname, …) go. Device-wide readings are
    # repeated on each MIG instance, so `max` also folds those.
    return f'max by (host_id, gpu_index) (label_replace({family}, "gpu_index", "$1", "gpu", "(.*)"))'


def _gpu_mem(family: str) -> str:
    # Memory is per GPU instance on a MIG GPU: sum the instances (a GPU without
    # MIG has no GPU_I_ID and is one group), after `max` folded duplicates.
    return (
        f"sum by (host_id, gpu_index) (max by (host_id, gpu_index, GPU_I_ID) "
        f'(label_replace({family}, "gpu_index", "$1", "gpu", "(.*)")))'
    )


def _node(family: str, by: str = "host_id") -> str:
    return f"max by ({by}) ({family})"


def _rate(family: str, by: str = "host_id, device") -> str:
    return f"max by ({by}) (rate({family}[$W]))"


_GPU_TOTAL = (
    f"({_gpu_mem('DCGM_FI_DEV_FB_USED')} + {_gpu_mem('DCGM_FI_DEV_FB_FREE')}"
    # FB_RESERVED is absent on drivers without the v2 memory call: count it as 0 there.
    f" + ({_gpu_mem('DCGM_FI_DEV_FB_RESERVED')} or {_gpu_mem('DCGM_FI_DEV_FB_USED')} * 0))"
)
_PROC = ("pid", "name", "user", "slurm_job_id")
# Per-job series (exporter/jobs.py, jobstats' names): the job-level ones have empty step and task.
_JOB_BY = "host_id, jobid"
_JOB_LEVEL = '{step="", task=""}'


def _job(family: str) -> str:
    return f"max by ({_JOB_BY}) ({family}{_JOB_LEVEL})"


_PROC_BY = "host_id, pid, name, user, slurm_job_id"
# iowait counts as idle, as psutil and top(1) count it: a CPU waiting on the
# disk could run other work, and "cpu.utilization > 90" should mean CPU-bound.
_IDLE = 'sum by (host_id, cpu) (max by (host_id, cpu, mode) (rate(node_cpu_seconds_total{mode=~"idle|iowait"}[$W])))'
# rate() of counters read a moment apart can come out a hair above 1 s/s of idle.
_BUSY = "clamp(100 * (1 - {idle}), 0, 100)"
# IPv4 + IPv6; a host without IPv6 has no sockstat6 and counts IPv4 alone.
_SOCKETS = (
    f"({_node('node_sockstat_TCP_inuse')} + {_node('node_sockstat_TCP6_inuse')}) or {_node('node_sockstat_TCP_inuse')}"
)

CATALOG: dict[str, CatalogMetric] = {
    m.name: m
    for m in (
        CatalogMetric(
            "cpu.utilization",
            "%",
            "CPU busy (not idle, not iowait), all cores averaged",
            (),
            _BUSY.format(idle=f"avg by (host_id) ({_IDLE})"),
        ),
        CatalogMetric(
            "cpu.core",
            "%",
            "CPU busy (not idle, not iowait) of core N; ask for cpu.core.N",
            ("core",),
            f'max by (host_id, core) (label_replace({_BUSY.format(idle=_IDLE)}, "core", "$1", "cpu", "(.*)"))',
        ),
        CatalogMetric("cpu.load1", "", "load average over 1 minute", (), _node("node_load1")),
        CatalogMetric("cpu.load5", "", "load average over 5 minutes", (), _node("node_load5")),
        CatalogMetric("cpu.load15", "", "load average over 15 minutes", (), _node("node_load15")),
        CatalogMetric(
            "mem.used_pct",
            "%",
            "memory in use: 1 - MemAvailable / MemTotal",
            (),
            f"100 * (1 - {_node('node_memory_MemAvailable_bytes')} / {_node('node_memory_MemTotal_bytes')})",
        ),
        CatalogMetric(
            "mem.used_mb",
            "MiB",
            "memory in use: MemTotal - MemAvailable",
            (),
            f"({_node('node_memory_MemTotal_bytes')} - {_node('node_memory_MemAvailable_bytes')}) / {MiB}",
        ),
        CatalogMetric(
            "mem.available_mb",
            "MiB",
            "memory available to new work (MemAvailable)",
            (),
            f"{_node('node_memory_MemAvailable_bytes')} / {MiB}",
        ),
        CatalogMetric(
            "mem.cache_mb",
            "MiB",
            "page cache: Cached + SReclaimable, as free(1) and psutil count it",
            (),
            f"({_node('node_memory_Cached_bytes')} + {_node('node_memory_SReclaimable_bytes')}) / {MiB}",
        ),
        CatalogMetric(
            "mem.swap_pct",
            "%",
            "swap in use; 0 without swap",
            (),
            f"100 * ({_node('node_memory_SwapTotal_bytes')} - {_node('node_memory_SwapFree_bytes')})"
            f" / clamp_min({_node('node_memory_SwapTotal_bytes')}, 1)",
        ),
        CatalogMetric(
            "gpu.utilization", "%", "GPU busy (NVML utilization.gpu)", ("gpu_index",), _gpu("DCGM_FI_DEV_GPU_UTIL")
        ),
        CatalogMetric(
            "gpu.memory_used_mb",
            "MiB",
            "GPU framebuffer in use, without driver-reserved; MIG: its instances summed",
            ("gpu_index",),
            _gpu_mem("DCGM_FI_DEV_FB_USED"),
        ),
        CatalogMetric(
            "gpu.memory_total_mb",
            "MiB",
            "GPU framebuffer: used + free + reserved; MIG: its instances summed",
            ("gpu_index",),
            _GPU_TOTAL,
        ),
        CatalogMetric(
            "gpu.memory_used_pct",
            "%",
            "GPU framebuffer in use, of the total",
            ("gpu_index",),
            f"100 * {_gpu_mem('DCGM_FI_DEV_FB_USED')} / {_GPU_TOTAL}",
        ),
        CatalogMetric("gpu.temperature_c", "°C", "GPU die temperature", ("gpu_index",), _gpu("DCGM_FI_DEV_GPU_TEMP")),
        CatalogMetric("gpu.power_w", "W", "GPU board power draw", ("gpu_index",), _gpu("DCGM_FI_DEV_POWER_USAGE")),
        CatalogMetric(
            "disk.used_pct",
            "%",
            "filesystem space used, of what non-root users can have",
            ("mountpoint",),
            f"100 * (1 - {_node('node_filesystem_avail_bytes', 'host_id, mountpoint')}"
            f" / ({_node('node_filesystem_size_bytes', 'host_id, mountpoint')} > 0))",
        ),
        CatalogMetric(
            "disk.iops_read",
            "ops/s",
            "reads completed per second",
            ("device",),
            _rate("node_disk_reads_completed_total"),
        ),
        CatalogMetric(
            "disk.iops_write",
            "ops/s",
            "writes completed per second",
            ("device",),
            _rate("node_disk_writes_completed_total"),
        ),
        CatalogMetric(
            "disk.throughput_read_mbps",
            "MB/s",
            "megabytes (10^6 bytes) read per second",
            ("device",),
            f"{_rate('node_disk_read_bytes_total')} / 1e6",
        ),
        CatalogMetric(
            "disk.throughput_write_mbps",
            "MB/s",
            "megabytes (10^6 bytes) written per second",
            ("device",),
            f"{_rate('node_disk_written_bytes_total')} / 1e6",
        ),
        CatalogMetric(
            "net.tx_mbps",
            "Mbps",
            "megabits (10^6 bits) sent per second",
            ("device",),
            f"{_rate('node_network_transmit_bytes_total')} * 8 / 1e6",
        ),
        CatalogMetric(
            "net.rx_mbps",
            "Mbps",
            "megabits (10^6 bits) received per second",
            ("device",),
            f"{_rate('node_network_receive_bytes_total')} * 8 / 1e6",
        ),
        CatalogMetric(
            "net.errors",
            "errors/s",
            "receive + transmit errors per second",
            ("device",),
            f"{_rate('node_network_receive_errs_total')} + {_rate('node_network_transmit_errs_total')}",
        ),
        CatalogMetric(
            "net.drops",
            "drops/s",
            "receive + transmit drops per second",
            ("device",),
            f"{_rate('node_network_receive_drop_total')} + {_rate('node_network_transmit_drop_total')}",
        ),
        CatalogMetric("net.sockets_active", "", "TCP sockets in use (not TIME_WAIT), IPv4 + IPv6", (), _SOCKETS),
        CatalogMetric(
            "proc.top.cpu_pct",
            "%",
            "CPU of a top-N process, in % of one core",
            _PROC,
            f"max by ({_PROC_BY}) (fleet_top_process_cpu_percent)",
        ),
        CatalogMetric(
            "proc.top.mem_mb",
            "MiB",
            "resident memory of a top-N process",
            _PROC,
            f"max by ({_PROC_BY}) (fleet_top_process_resident_memory_bytes) / {MiB}",
        ),
        CatalogMetric(
            "proc.top.gpu_mem_mb",
            "MiB",
            "GPU memory of a top-N process on one GPU",
            (*_PROC, "gpu_index"),
            f"max by ({_PROC_BY}, gpu_index) (label_replace(fleet_top_process_gpu_memory_bytes, "
            f'"gpu_index", "$1", "gpu", "(.*)")) / {MiB}',
        ),
        # The spec's `gpu.process.pid` is an identifier, not a measurement: the
        # processes on a GPU are in proc.top.gpu_mem_mb (label pid) instead.
        CatalogMetric(
            "job.cpu_pct",
            "%",
            "CPU a Slurm job uses on a node, in % of the CPUs allocated to it there",
            ("jobid",),
            f"100 * {_rate(f'cgroup_cpu_total_seconds{_JOB_LEVEL}', _JOB_BY)} / {_job('cgroup_cpus')}",
        ),
        CatalogMetric("job.cpus", "", "CPUs allocated to a Slurm job on a node", ("jobid",), _job("cgroup_cpus")),
        CatalogMetric(
            "job.mem_used_mb",
            "MiB",
            "memory a Slurm job uses on a node (rss + page cache, as its cgroup is charged)",
            ("jobid",),
            f"{_job('cgroup_memory_used_bytes')} / {MiB}",
        ),
        CatalogMetric(
            "job.mem_rss_mb",
            "MiB",
            "resident memory of a Slurm job on a node",
            ("jobid",),
            f"{_job('cgroup_memory_rss_bytes')} / {MiB}",
        ),
        CatalogMetric(
            "job.mem_limit_mb",
            "MiB",
            "memory limit of a Slurm job on a node (the node's memory where it has none)",
            ("jobid",),
            f"{_job('cgroup_memory_total_bytes')} / {MiB}",
        ),
        CatalogMetric(
            "job.gpu.utilization",
            "%",
            "GPU busy (NVML utilization.gpu) of a GPU a Slurm job uses",
            ("jobid", "gpu_index"),
            f"max by ({_JOB_BY}, gpu_index) "
            '(label_replace(nvidia_gpu_duty_cycle, "gpu_index", "$1", "ordinal", "(.*)"))',
        ),
        CatalogMetric(
            "job.gpu.memory_used_mb",
            "MiB",
            "GPU memory held by a Slurm job's own processes on one GPU; MIG: its instances summed",
            ("jobid", "gpu_index"),
            f"sum by ({_JOB_BY}, gpu_index) (max by ({_JOB_BY}, gpu_index, GPU_I_ID) "
            f'(label_replace(fleet_job_gpu_memory_bytes, "gpu_index", "$1", "gpu", "(.*)"))) / {MiB}',
        ),
    )
}
_CORE = re.compile(r"^cpu\.core\.(\d{1,4})$")


def valid_names() -> list[str]:
    """Every name ``resolve`` accepts, ``cpu.core.N`` standing for the per-core family."""
    return sorted(n if n != "cpu.core" else "cpu.core.N" for n in CATALOG)


def resolve(name: str) -> tuple[CatalogMetric, dict[str, str]]:
    """The entry for a friendly name and the label matchers it implies (``cpu.core.3`` → core="3").

    Raises:
        UnknownMetric: the name is not in the catalog.
    """
    if name in CATALOG and name != "cpu.core":
        return CATALOG[name], {}
    m = _CORE.match(name)
    if m:
        return CATALOG["cpu.core"], {"core": m.group(1)}
    raise UnknownMetric(name, valid_names())


def catalog_listing() -> list[dict]:
    """Name, unit, description and labels of every metric, for GET /api/v1/metrics/catalog."""
    return [
        {
            "name": "cpu.core.N" if m.name == "cpu.core" else m.name,
            "unit": m.unit,
            "description": m.description,
            "labels": list(m.labels),
        }
        for m in sorted(CATALOG.values())
    ]
