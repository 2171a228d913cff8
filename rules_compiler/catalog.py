"""The metric catalog: each friendly name of the spec (REQ-METRIC-002) and the PromQL that computes it.

Every entry is recorded as ``fleet:<name>`` with the label ``host_id`` (plus
the metric's own labels, e.g. ``gpu_index``); ``instance`` and ``job`` are
aggregated away so that scraped and pushed data share one shape. Everything
downstream (queries, alerts, downsampling, dashboards) reads that layer.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from exporter import catalog_table as T

MiB = T.MiB


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
# duplicate then counts once. The families, rates and scales come from
# exporter/catalog_table.py, which the push agent evaluates too.
def _gpu_index(family: str) -> str:
    # dcgm-exporter's `gpu` label becomes the spec's `gpu_index`; identity labels
    # (UUID, pci_bus_id, modelName, Hostname, …) go.
    return f'label_replace({family}, "gpu_index", "$1", "{T.GPU_LABEL}", "(.*)")'


def _gpu(family: str) -> str:
    # Device-wide readings are repeated on each MIG instance, so `max` also folds those.
    return f"max by (host_id, gpu_index) ({_gpu_index(family)})"


def _gpu_mem(family: str) -> str:
    # A GPU without MIG has no GPU_I_ID and is one group; `max` folded duplicates first.
    return f"sum by (host_id, gpu_index) (max by (host_id, gpu_index, {T.GPU_INSTANCE_LABEL}) ({_gpu_index(family)}))"


def _gpu_instance(family: str) -> str:
    # A MIG instance's series (those with GPU_I_ID) under the spec's label style, beside its GPU's gpu_index.
    labels = _gpu_index(f'{family}{{{T.GPU_INSTANCE_LABEL}!=""}}')
    labels = f'label_replace({labels}, "gpu_instance", "$1", "{T.GPU_INSTANCE_LABEL}", "(.*)")'
    labels = f'label_replace({labels}, "mig_profile", "$1", "{T.GPU_INSTANCE_PROFILE_LABEL}", "(.*)")'
    return f"max by (host_id, gpu_index, gpu_instance, mig_profile) ({labels})"


def _node(family: str, by: str = "host_id") -> str:
    return f"max by ({by}) ({family})"


def _rate(family: str) -> str:
    return f"max by (host_id, {T.RATE_LABEL}) (rate({family}[$W]))"


def _scale(expr: str, scale: tuple, compound: bool) -> str:
    if not scale:
        return expr
    return (f"({expr})" if compound else expr) + "".join(f" {op} {literal}" for op, literal in scale)


def _host(name: str) -> str:
    families, scale = T.HOST_GAUGES[name]
    if len(families) == 1:
        return _scale(_node(families[0]), scale, False)
    return _scale(f"({' + '.join(map(_node, families))}) or {_node(families[0])}", scale, True)


def _rates(name: str) -> str:
    families, scale = T.RATES[name]
    return _scale(" + ".join(map(_rate, families)), scale, len(families) > 1)


def _process(name: str) -> str:
    family, scale, per_gpu = T.PROCESSES[name]
    if per_gpu:
        return _scale(f"max by ({_PROC_BY}, gpu_index) ({_gpu_index(family)})", scale, False)
    return _scale(f"max by ({_PROC_BY}) ({family})", scale, False)


def _instance(name: str) -> str:
    family, scale = T.GPU_INSTANCE[name]
    return _scale(_gpu_instance(family), scale, False)


_GPU_TOTAL = (
    f"({_gpu_mem(T.FB_USED)} + {_gpu_mem(T.FB_FREE)} + ({_gpu_mem(T.FB_RESERVED)} or {_gpu_mem(T.FB_USED)} * 0))"
)
_PROC = T.PROCESS_LABELS
_PROC_BY = "host_id, " + ", ".join(_PROC)
_IDLE = (
    "sum by (host_id, cpu) (max by (host_id, cpu, mode) "
    f'(rate({T.CPU_SECONDS}{{mode=~"{"|".join(T.IDLE_MODES)}"}}[$W])))'
)
XID_RECENT_S, THROTTLE_REASONS = T.XID_RECENT_S, T.THROTTLE_REASONS
_XID_RECENT = f"{T.XID_LAST} and ignoring(err_code, err_msg) (time() - {T.XID_LAST_TIME} < {XID_RECENT_S})"
_THROTTLING = T.CLOCKS_EVENT_REASON + '{reason=~"' + "|".join(THROTTLE_REASONS) + '"}'
_THROTTLED = f"max by (host_id, gpu_index, reason) ({_gpu_index(_THROTTLING)})"
_INSTANCE = ("gpu_index", "gpu_instance", "mig_profile")
_JOB_BY = f"host_id, {T.JOB_LABEL}"
_JOB_LEVEL = "{" + ", ".join(f'{k}="{v}"' for k, v in T.JOB_LEVEL) + "}"


def _job(family: str) -> str:
    return f"max by ({_JOB_BY}) ({family}{_JOB_LEVEL})"


def _job_gauge(name: str) -> str:
    family, scale = T.JOB_GAUGES[name]
    return _scale(_job(family), scale, False)


def _job_gpu(name: str) -> str:
    family, index, scale, summed = T.JOB_GPUS[name]
    indexed = f'label_replace({family}, "gpu_index", "$1", "{index}", "(.*)")'
    if summed:  # a GPU without MIG has no GPU_I_ID and is one group
        by_instance = f"max by ({_JOB_BY}, gpu_index, {T.GPU_INSTANCE_LABEL}) ({indexed})"
        return _scale(f"sum by ({_JOB_BY}, gpu_index) ({by_instance})", scale, False)
    return _scale(f"max by ({_JOB_BY}, gpu_index) ({indexed})", scale, False)


# rate() of counters read a moment apart can come out a hair above 1 s/s of idle.
_BUSY = "clamp(100 * (1 - {idle}), 0, 100)"

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
        CatalogMetric("cpu.load1", "", "load average over 1 minute", (), _host("cpu.load1")),
        CatalogMetric("cpu.load5", "", "load average over 5 minutes", (), _host("cpu.load5")),
        CatalogMetric("cpu.load15", "", "load average over 15 minutes", (), _host("cpu.load15")),
        CatalogMetric(
            "mem.used_pct",
            "%",
            "memory in use: 1 - MemAvailable / MemTotal",
            (),
            f"100 * (1 - {_node(T.MEM_AVAILABLE)} / {_node(T.MEM_TOTAL)})",
        ),
        CatalogMetric(
            "mem.used_mb",
            "MiB",
            "memory in use: MemTotal - MemAvailable",
            (),
            f"({_node(T.MEM_TOTAL)} - {_node(T.MEM_AVAILABLE)}) / {MiB}",
        ),
        CatalogMetric(
            "mem.available_mb",
            "MiB",
            "memory available to new work (MemAvailable)",
            (),
            _host("mem.available_mb"),
        ),
        CatalogMetric(
            "mem.cache_mb",
            "MiB",
            "page cache: Cached + SReclaimable, as free(1) and psutil count it",
            (),
            _host("mem.cache_mb"),
        ),
        CatalogMetric(
            "mem.swap_pct",
            "%",
            "swap in use; 0 without swap",
            (),
            f"100 * ({_node(T.SWAP_TOTAL)} - {_node(T.SWAP_FREE)}) / clamp_min({_node(T.SWAP_TOTAL)}, 1)",
        ),
        CatalogMetric(
            "gpu.utilization",
            "%",
            "GPU busy (NVML utilization.gpu)",
            ("gpu_index",),
            _gpu(T.GPU_GAUGES["gpu.utilization"]),
        ),
        CatalogMetric(
            "gpu.memory_used_mb",
            "MiB",
            "GPU framebuffer in use, without driver-reserved; MIG: its instances summed",
            ("gpu_index",),
            _gpu_mem(T.FB_USED),
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
            f"100 * {_gpu_mem(T.FB_USED)} / {_GPU_TOTAL}",
        ),
        CatalogMetric(
            "gpu.temperature_c", "°C", "GPU die temperature", ("gpu_index",), _gpu(T.GPU_GAUGES["gpu.temperature_c"])
        ),
        CatalogMetric("gpu.power_w", "W", "GPU board power draw", ("gpu_index",), _gpu(T.GPU_GAUGES["gpu.power_w"])),
        CatalogMetric(
            "gpu.xid_last",
            "",
            f"code of the GPU's last XID error in the past {XID_RECENT_S // 60} min (any MIG instance's); 0 if none",
            ("gpu_index",),
            f"{_gpu(_XID_RECENT)} or 0 * {_gpu(T.XID_LAST)}",
        ),
        CatalogMetric(
            "gpu.ecc_uncorrectable",
            "errors",
            "uncorrectable (double-bit) ECC errors since the driver loaded",
            ("gpu_index",),
            _gpu(T.GPU_GAUGES["gpu.ecc_uncorrectable"]),
        ),
        CatalogMetric(
            "gpu.remapped_rows_pending",
            "",
            "1 while a row remap (Ampere and newer) or a page retirement (older) waits for a GPU reset",
            ("gpu_index",),
            " or ".join(_gpu(f) for f in T.REMAP_PENDING),
        ),
        CatalogMetric(
            "gpu.row_remap_failed",
            "",
            "1 once remapping a row failed: the GPU needs service",
            ("gpu_index",),
            _gpu(T.GPU_GAUGES["gpu.row_remap_failed"]),
        ),
        CatalogMetric(
            "gpu.throttled",
            "",
            f"1 while the GPU's clocks are held down for the reason ({', '.join(THROTTLE_REASONS)}); "
            "ask for gpu.throttled.REASON",
            ("gpu_index", "reason"),
            _THROTTLED,
        ),
        CatalogMetric(
            "gpu.instance.utilization",
            "%",
            "MIG instance: graphics engine active (GPM, Hopper and newer); a sub-series of its GPU",
            _INSTANCE,
            _instance("gpu.instance.utilization"),
        ),
        CatalogMetric(
            "gpu.instance.tensor_active_pct",
            "%",
            "MIG instance: tensor pipes active (GPM, Hopper and newer)",
            _INSTANCE,
            _instance("gpu.instance.tensor_active_pct"),
        ),
        CatalogMetric(
            "gpu.instance.dram_active_pct",
            "%",
            "MIG instance: device memory interface active (GPM, Hopper and newer)",
            _INSTANCE,
            _instance("gpu.instance.dram_active_pct"),
        ),
        CatalogMetric(
            "gpu.instance.memory_used_mb",
            "MiB",
            "MIG instance: framebuffer in use, without driver-reserved",
            _INSTANCE,
            _instance("gpu.instance.memory_used_mb"),
        ),
        CatalogMetric(
            "disk.used_pct",
            "%",
            "filesystem space used, of what non-root users can have",
            ("mountpoint",),
            f"100 * (1 - {_node(T.FS_AVAIL, 'host_id, mountpoint')} / ({_node(T.FS_SIZE, 'host_id, mountpoint')} > 0))",
        ),
        CatalogMetric(
            "disk.iops_read",
            "ops/s",
            "reads completed per second",
            ("device",),
            _rates("disk.iops_read"),
        ),
        CatalogMetric(
            "disk.iops_write",
            "ops/s",
            "writes completed per second",
            ("device",),
            _rates("disk.iops_write"),
        ),
        CatalogMetric(
            "disk.throughput_read_mbps",
            "MB/s",
            "megabytes (10^6 bytes) read per second",
            ("device",),
            _rates("disk.throughput_read_mbps"),
        ),
        CatalogMetric(
            "disk.throughput_write_mbps",
            "MB/s",
            "megabytes (10^6 bytes) written per second",
            ("device",),
            _rates("disk.throughput_write_mbps"),
        ),
        CatalogMetric(
            "net.tx_mbps",
            "Mbps",
            "megabits (10^6 bits) sent per second",
            ("device",),
            _rates("net.tx_mbps"),
        ),
        CatalogMetric(
            "net.rx_mbps",
            "Mbps",
            "megabits (10^6 bits) received per second",
            ("device",),
            _rates("net.rx_mbps"),
        ),
        CatalogMetric(
            "net.errors",
            "errors/s",
            "receive + transmit errors per second",
            ("device",),
            _rates("net.errors"),
        ),
        CatalogMetric(
            "net.drops",
            "drops/s",
            "receive + transmit drops per second",
            ("device",),
            _rates("net.drops"),
        ),
        CatalogMetric(
            "net.sockets_active", "", "TCP sockets in use (not TIME_WAIT), IPv4 + IPv6", (), _host("net.sockets_active")
        ),
        CatalogMetric(
            "proc.top.cpu_pct",
            "%",
            "CPU of a top-N process, in % of one core",
            _PROC,
            _process("proc.top.cpu_pct"),
        ),
        CatalogMetric(
            "proc.top.mem_mb",
            "MiB",
            "resident memory of a top-N process",
            _PROC,
            _process("proc.top.mem_mb"),
        ),
        CatalogMetric(
            "proc.top.gpu_mem_mb",
            "MiB",
            "GPU memory of a top-N process on one GPU",
            (*_PROC, "gpu_index"),
            _process("proc.top.gpu_mem_mb"),
        ),
        # The spec's `gpu.process.pid` is an identifier, not a measurement: the
        # processes on a GPU are in proc.top.gpu_mem_mb (label pid) instead.
        CatalogMetric(
            "job.cpu_pct",
            "%",
            "CPU a Slurm job uses on a node, in % of the CPUs allocated to it there",
            (T.JOB_LABEL,),
            f"100 * max by ({_JOB_BY}) (rate({T.JOB_CPU_SECONDS}{_JOB_LEVEL}[$W])) / {_job(T.JOB_CPUS)}",
        ),
        CatalogMetric(
            "job.cpus", "", "CPUs allocated to a Slurm job on a node", (T.JOB_LABEL,), _job_gauge("job.cpus")
        ),
        CatalogMetric(
            "job.mem_used_mb",
            "MiB",
            "memory a Slurm job uses on a node (rss + page cache, as its cgroup is charged)",
            (T.JOB_LABEL,),
            _job_gauge("job.mem_used_mb"),
        ),
        CatalogMetric(
            "job.mem_rss_mb",
            "MiB",
            "resident memory of a Slurm job on a node",
            (T.JOB_LABEL,),
            _job_gauge("job.mem_rss_mb"),
        ),
        CatalogMetric(
            "job.mem_limit_mb",
            "MiB",
            "memory limit of a Slurm job on a node (the node's memory where it has none)",
            (T.JOB_LABEL,),
            _job_gauge("job.mem_limit_mb"),
        ),
        CatalogMetric(
            "job.gpu.utilization",
            "%",
            "GPU busy (NVML utilization.gpu) of a GPU a Slurm job uses",
            (T.JOB_LABEL, "gpu_index"),
            _job_gpu("job.gpu.utilization"),
        ),
        CatalogMetric(
            "job.gpu.memory_used_mb",
            "MiB",
            "GPU memory held by a Slurm job's own processes on one GPU; MIG: its instances summed",
            (T.JOB_LABEL, "gpu_index"),
            _job_gpu("job.gpu.memory_used_mb"),
        ),
    )
}
_CORE = re.compile(r"^cpu\.core\.(\d{1,4})$")
_THROTTLED_BY = re.compile(r"^gpu\.throttled\.([a-z_]+)$")


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
    m = _THROTTLED_BY.match(name)
    if m and m.group(1) in THROTTLE_REASONS:  # gpu.throttled.hw_thermal_slowdown → reason="hw_thermal_slowdown"
        return CATALOG["gpu.throttled"], {"reason": m.group(1)}
    raise UnknownMetric(name, valid_names())


def name_pattern() -> str:
    """Every name ``resolve`` accepts as one regex (JSON Schema's dialect too), for the API's document."""
    plain = (re.escape(n).replace(r"\_", "_") for n in sorted(CATALOG) if n not in ("cpu.core", "gpu.throttled"))
    families = (
        r"cpu\.core\.[0-9]{1,4}",
        r"gpu\.throttled(?:\.(?:" + "|".join(sorted(THROTTLE_REASONS)) + "))?",
    )
    return "^(?:" + "|".join((*families, *plain)) + ")$"


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
