"""The catalog's arithmetic as data, read by both of its implementations.

``rules_compiler/catalog.py`` renders these entries as PromQL (the recording
rules of a scraped host) and ``exporter/catalog_points.py`` evaluates them in
Python (the points a pushing agent sends), so a pushed host and a scraped host
read alike in the ``fleet:`` layer. It lives in the exporter's distribution
because a host gets only that one; it imports nothing.

A scale is a sequence of (operator, literal) applied left to right, kept as
text so the PromQL reads ``/ 1e6`` rather than ``* 1e-06``.
"""

from __future__ import annotations

MiB = 1024 * 1024
TO_MIB = (("/", str(MiB)),)

# iowait counts as idle, as psutil and top(1) count it: a CPU waiting on the
# disk could run other work, and "cpu.utilization > 90" should mean CPU-bound.
CPU_SECONDS = "node_cpu_seconds_total"
IDLE_MODES = ("idle", "iowait")

MEM_TOTAL = "node_memory_MemTotal_bytes"
MEM_AVAILABLE = "node_memory_MemAvailable_bytes"
SWAP_TOTAL = "node_memory_SwapTotal_bytes"
SWAP_FREE = "node_memory_SwapFree_bytes"
FS_SIZE = "node_filesystem_size_bytes"
FS_AVAIL = "node_filesystem_avail_bytes"

# metric: (families summed, scale). The first family is required, the others are
# counted where present: a host without IPv6 has no sockstat6 and counts IPv4 alone.
HOST_GAUGES: dict[str, tuple[tuple[str, ...], tuple]] = {
    "cpu.load1": (("node_load1",), ()),
    "cpu.load5": (("node_load5",), ()),
    "cpu.load15": (("node_load15",), ()),
    "mem.available_mb": ((MEM_AVAILABLE,), TO_MIB),
    # Cached + SReclaimable, as free(1) and psutil count the page cache.
    "mem.cache_mb": (("node_memory_Cached_bytes", "node_memory_SReclaimable_bytes"), TO_MIB),
    "net.sockets_active": (("node_sockstat_TCP_inuse", "node_sockstat_TCP6_inuse"), ()),
}

# metric: (counters whose per-second rates are summed, per `device`, scale)
RATE_LABEL = "device"
RATES: dict[str, tuple[tuple[str, ...], tuple]] = {
    "disk.iops_read": (("node_disk_reads_completed_total",), ()),
    "disk.iops_write": (("node_disk_writes_completed_total",), ()),
    "disk.throughput_read_mbps": (("node_disk_read_bytes_total",), (("/", "1e6"),)),
    "disk.throughput_write_mbps": (("node_disk_written_bytes_total",), (("/", "1e6"),)),
    "net.tx_mbps": (("node_network_transmit_bytes_total",), (("*", "8"), ("/", "1e6"))),
    "net.rx_mbps": (("node_network_receive_bytes_total",), (("*", "8"), ("/", "1e6"))),
    "net.errors": (("node_network_receive_errs_total", "node_network_transmit_errs_total"), ()),
    "net.drops": (("node_network_receive_drop_total", "node_network_transmit_drop_total"), ()),
}

# dcgm-exporter's `gpu` label is the spec's `gpu_index`. Device-wide readings
# repeat on each MIG instance: the largest of a GPU's series is its value.
GPU_LABEL = "gpu"
GPU_GAUGES: dict[str, str] = {
    "gpu.utilization": "DCGM_FI_DEV_GPU_UTIL",
    "gpu.temperature_c": "DCGM_FI_DEV_GPU_TEMP",
    "gpu.power_w": "DCGM_FI_DEV_POWER_USAGE",
    "gpu.ecc_uncorrectable": "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL",
    "gpu.row_remap_failed": "DCGM_FI_DEV_ROW_REMAP_FAILURE",
}
# Framebuffer memory is per GPU instance on a MIG GPU: a GPU's instances are summed.
# RESERVED is absent on drivers without the v2 memory call: it counts as 0 there.
GPU_INSTANCE_LABEL = "GPU_I_ID"
FB_USED, FB_FREE, FB_RESERVED = "DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_FB_FREE", "DCGM_FI_DEV_FB_RESERVED"

# metric: (family, scale) of one MIG instance, a sub-series of its GPU (GPM, Hopper and newer).
GPU_INSTANCE_PROFILE_LABEL = "GPU_I_PROFILE"
GPU_INSTANCE: dict[str, tuple[str, tuple]] = {
    "gpu.instance.utilization": ("DCGM_FI_PROF_GR_ENGINE_ACTIVE", (("*", "100"),)),
    "gpu.instance.tensor_active_pct": ("DCGM_FI_PROF_PIPE_TENSOR_ACTIVE", (("*", "100"),)),
    "gpu.instance.dram_active_pct": ("DCGM_FI_PROF_DRAM_ACTIVE", (("*", "100"),)),
    "gpu.instance.memory_used_mb": (FB_USED, ()),
}

# Health. An XID is an event: the catalog shows the last one for this long, then 0 again.
XID_RECENT_S = 900
XID_LAST, XID_LAST_TIME = "DCGM_FI_DEV_XID_ERRORS", "fleet_gpu_xid_last_timestamp_seconds"
# A row remap waiting for a GPU reset (Ampere and newer), else a page retirement (older): the first found wins.
REMAP_PENDING = ("DCGM_FI_DEV_ROW_REMAP_PENDING", "DCGM_FI_DEV_RETIRED_PENDING")
CLOCKS_EVENT_REASON = "fleet_gpu_clocks_event_reason"
# Clocks event reasons that hold a GPU below the clocks it asked for (idle and settings are not throttling).
THROTTLE_REASONS = (
    "sw_power_cap",
    "hw_slowdown",
    "sync_boost",
    "sw_thermal_slowdown",
    "hw_thermal_slowdown",
    "hw_power_brake_slowdown",
)

# metric: (family, scale, whether it is per GPU); the process labels are kept.
PROCESS_LABELS = ("pid", "name", "user", "slurm_job_id")
PROCESSES: dict[str, tuple[str, tuple, bool]] = {
    "proc.top.cpu_pct": ("fleet_top_process_cpu_percent", (), False),
    "proc.top.mem_mb": ("fleet_top_process_resident_memory_bytes", TO_MIB, False),
    "proc.top.gpu_mem_mb": ("fleet_top_process_gpu_memory_bytes", TO_MIB, True),
}

# Slurm jobs (exporter/jobs.py, in jobstats' cgroup_exporter and GPU exporter names): the job-level
# series are those with an empty `step` and `task`; every job metric keeps the job's `jobid`.
JOB_LABEL = "jobid"
JOB_LEVEL = (("step", ""), ("task", ""))
JOB_CPU_SECONDS = "cgroup_cpu_total_seconds"  # cumulative, though typed gauge (as cgroup_exporter types it)
JOB_CPUS = "cgroup_cpus"
JOB_GAUGES: dict[str, tuple[str, tuple]] = {
    "job.cpus": (JOB_CPUS, ()),
    "job.mem_used_mb": ("cgroup_memory_used_bytes", TO_MIB),
    "job.mem_rss_mb": ("cgroup_memory_rss_bytes", TO_MIB),
    "job.mem_limit_mb": ("cgroup_memory_total_bytes", TO_MIB),
}
# metric: (family, the label holding the GPU's index, scale, whether MIG instances are summed)
JOB_GPUS: dict[str, tuple[str, str, tuple, bool]] = {
    "job.gpu.utilization": ("nvidia_gpu_duty_cycle", "ordinal", (), False),
    "job.gpu.memory_used_mb": ("fleet_job_gpu_memory_bytes", "gpu", TO_MIB, True),
}
# Gauges that only grow, whose rate a metric needs: counters for the push agent's arithmetic.
CUMULATIVE_GAUGES = frozenset({JOB_CPU_SECONDS})


def scaled(value: float, scale: tuple) -> float:
    """``value`` through a scale's operators, in the order PromQL applies them."""
    for op, literal in scale:
        value = value * float(literal) if op == "*" else value / float(literal)
    return value
