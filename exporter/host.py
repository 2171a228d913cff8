"""Host metrics in node_exporter's names, types, labels and units.

Counters and gauges come from psutil where it gives them in node_exporter's
shape, and straight from /proc where psutil has no equivalent (the whole of
meminfo, sockstat, pressure): dashboards and rules written for node_exporter
then work unchanged on our data.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path

import psutil
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

log = logging.getLogger(__name__)

# node_exporter 1.5's defaults (`prometheus-node-exporter --help`).
MOUNT_EXCLUDE = re.compile(r"^/(dev|proc|run|sys|mnt|media|var/lib/docker/.+|var/lib/containers/storage/.+)($|/)")
FSTYPE_EXCLUDE = re.compile(
    r"^(autofs|binfmt_misc|bpf|cgroup2?|configfs|debugfs|devpts|devtmpfs|fusectl|hugetlbfs"
    r"|iso9660|mqueue|nsfs|overlay|proc|procfs|pstore|rpc_pipefs|securityfs|selinuxfs|squashfs"
    r"|sysfs|tracefs)$"
)
CPU_MODES = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
PRESSURE = (  # (resource, line, metric, help)
    ("cpu", "some", "cpu_waiting", "Total time in seconds that processes have waited for CPU time"),
    ("io", "some", "io_waiting", "Total time in seconds that processes have waited due to IO congestion"),
    ("io", "full", "io_stalled", "Total time in seconds no process could make progress due to IO congestion"),
    ("memory", "some", "memory_waiting", "Total time in seconds that processes have waited for memory"),
    (
        "memory",
        "full",
        "memory_stalled",
        "Total time in seconds no process could make progress due to memory congestion",
    ),
)
FS_LABELS = ["device", "fstype", "mountpoint"]
STATFS_TIMEOUT_S = 1.0


class HostCollector:
    """CPU, load, memory, filesystems, sockets, pressure, boot time, uname (disks and NICs: exporter.node).

    Sample output (check by hand with ``curl -s localhost:9101/metrics | grep ^node_load``)::

        # HELP node_load1 1m load average.
        # TYPE node_load1 gauge
        node_load1 0.35
    """

    def __init__(self, ps=psutil, proc_root: str = "/proc", clock=time.time):
        self._ps = ps
        self._proc = Path(proc_root)
        self._clock = clock
        self._page_size = os.sysconf("SC_PAGE_SIZE")
        # statfs on a hung network mount blocks forever; like node_exporter we
        # give up on it after a timeout and skip it until the call returns.
        self._statfs_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="statfs")
        self._stuck: dict[str, Future] = {}

    def describe(self) -> list[Metric]:
        return []  # families depend on the host; nothing to pre-declare

    def collect(self) -> Iterator[Metric]:
        yield from self._cpu()
        yield from self._load()
        yield from self._meminfo()
        yield from self._filesystems()
        yield from self._sockstat()
        yield from self._pressure()
        yield from self._system()

    def _cpu(self) -> Iterator[Metric]:
        secs = CounterMetricFamily(
            "node_cpu_seconds_total", "Seconds the CPUs spent in each mode.", labels=["cpu", "mode"]
        )
        guest = CounterMetricFamily(
            "node_cpu_guest_seconds_total",
            "Seconds the CPUs spent in guests (VMs) for each mode.",
            labels=["cpu", "mode"],
        )
        for cpu, times in enumerate(self._ps.cpu_times(percpu=True)):
            for mode in CPU_MODES:
                if hasattr(times, mode):
                    secs.add_metric([str(cpu), mode], getattr(times, mode))
            if hasattr(times, "guest"):
                guest.add_metric([str(cpu), "user"], times.guest)
                guest.add_metric([str(cpu), "nice"], times.guest_nice)
        yield secs
        yield guest

    def _load(self) -> Iterator[Metric]:
        for minutes, value in zip((1, 5, 15), self._ps.getloadavg(), strict=True):
            yield GaugeMetricFamily(f"node_load{minutes}", f"{minutes}m load average.", value=value)

    def _meminfo(self) -> Iterator[Metric]:
        for key, value, unit in parse_meminfo((self._proc / "meminfo").read_text()):
            name = f"node_memory_{key}_bytes" if unit == "kB" else f"node_memory_{key}"
            scaled = value * 1024 if unit == "kB" else value
            help_key = f"{key}_bytes" if unit == "kB" else key
            yield GaugeMetricFamily(name, f"Memory information field {help_key}.", value=scaled)

    def _filesystems(self) -> Iterator[Metric]:
        fams = {
            "size": GaugeMetricFamily("node_filesystem_size_bytes", "Filesystem size in bytes.", labels=FS_LABELS),
            "free": GaugeMetricFamily(
                "node_filesystem_free_bytes", "Filesystem free space in bytes.", labels=FS_LABELS
            ),
            "avail": GaugeMetricFamily(
                "node_filesystem_avail_bytes",
                "Filesystem space available to non-root users in bytes.",
                labels=FS_LABELS,
            ),
            "files": GaugeMetricFamily("node_filesystem_files", "Filesystem total file nodes.", labels=FS_LABELS),
            "files_free": GaugeMetricFamily(
                "node_filesystem_files_free", "Filesystem total free file nodes.", labels=FS_LABELS
            ),
            "readonly": GaugeMetricFamily("node_filesystem_readonly", "Filesystem read-only status.", labels=FS_LABELS),
            "device_error": GaugeMetricFamily(
                "node_filesystem_device_error",
                "Whether an error occurred while getting statistics for the given device.",
                labels=FS_LABELS,
            ),
        }
        seen = set()
        for device, mountpoint, fstype, options in self._mounts():
            labels = [device, fstype, mountpoint]
            if tuple(labels) in seen:
                continue
            seen.add(tuple(labels))
            st = self._statfs(mountpoint)
            if st is None:
                fams["device_error"].add_metric(labels, 1)
                continue
            fams["device_error"].add_metric(labels, 0)
            fams["readonly"].add_metric(labels, 1 if "ro" in options.split(",") else 0)
            fams["size"].add_metric(labels, st.f_blocks * st.f_frsize)
            fams["free"].add_metric(labels, st.f_bfree * st.f_frsize)
            fams["avail"].add_metric(labels, st.f_bavail * st.f_frsize)
            fams["files"].add_metric(labels, st.f_files)
            fams["files_free"].add_metric(labels, st.f_ffree)
        yield from fams.values()

    def _mounts(self) -> Iterator[tuple[str, str, str, str]]:
        # node_exporter reads PID 1's mount table: the host's view, not ours.
        path = self._proc / "1" / "mounts"
        try:
            text = path.read_text()
        except OSError:
            text = (self._proc / "mounts").read_text()
        for device, mountpoint, fstype, options in parse_mounts(text):
            if MOUNT_EXCLUDE.match(mountpoint) or FSTYPE_EXCLUDE.match(fstype):
                continue
            yield device, mountpoint, fstype, options

    def _statfs(self, mountpoint: str):
        stuck = self._stuck.get(mountpoint)
        if stuck is not None:
            if not stuck.done():
                return None
            del self._stuck[mountpoint]
            log.info("filesystem %s answers again", mountpoint)
        future = self._statfs_pool.submit(os.statvfs, mountpoint)
        try:
            return future.result(timeout=STATFS_TIMEOUT_S)
        except FutureTimeout:
            log.warning("statfs of %s took over %.0f s: skipped until it returns", mountpoint, STATFS_TIMEOUT_S)
            self._stuck[mountpoint] = future
        except OSError as exc:
            log.debug("statfs of %s failed: %s", mountpoint, exc)
        return None

    def _sockstat(self) -> Iterator[Metric]:
        for filename in ("sockstat", "sockstat6"):
            try:
                text = (self._proc / "net" / filename).read_text()
            except OSError:
                continue
            for proto, key, value in parse_sockstat(text):
                if proto == "sockets":
                    yield GaugeMetricFamily("node_sockstat_sockets_used", "Number of IPv4 sockets in use.", value=value)
                    continue
                yield GaugeMetricFamily(
                    f"node_sockstat_{proto}_{key}", f"Number of {proto} sockets in state {key}.", value=value
                )
                if key == "mem":
                    yield GaugeMetricFamily(
                        f"node_sockstat_{proto}_mem_bytes",
                        f"Number of {proto} sockets in state mem_bytes.",
                        value=value * self._page_size,
                    )

    def _pressure(self) -> Iterator[Metric]:
        totals: dict[tuple[str, str], float] = {}
        for resource in ("cpu", "io", "memory"):
            try:
                text = (self._proc / "pressure" / resource).read_text()
            except OSError:
                continue  # kernel without PSI: the families are absent, as in node_exporter
            for line, total_us in parse_pressure(text):
                totals[(resource, line)] = total_us
        for resource, line, metric, doc in PRESSURE:
            if (resource, line) in totals:
                yield CounterMetricFamily(f"node_pressure_{metric}_seconds", doc, value=totals[(resource, line)] / 1e6)

    def _system(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("node_boot_time_seconds", "Node boot time, in unixtime.", value=self._ps.boot_time())
        yield GaugeMetricFamily("node_time_seconds", "System time in seconds since epoch (1970).", value=self._clock())
        u = os.uname()
        try:
            domain = (self._proc / "sys" / "kernel" / "domainname").read_text().strip()
        except OSError:
            domain = "(none)"
        info = GaugeMetricFamily(
            "node_uname_info",
            "Labeled system information as provided by the uname system call.",
            labels=["domainname", "machine", "nodename", "release", "sysname", "version"],
        )
        info.add_metric([domain, u.machine, u.nodename, u.release, u.sysname, u.version], 1)
        yield info


def parse_meminfo(text: str) -> Iterator[tuple[str, int, str]]:
    """Yield (node_exporter key, value, unit) from /proc/meminfo text; unit is "kB" or ""."""
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        parts = rest.split()
        if not parts:
            continue
        key = name.replace("(", "_").replace(")", "")
        yield key, int(parts[0]), parts[1] if len(parts) > 1 else ""


def parse_mounts(text: str) -> Iterator[tuple[str, str, str, str]]:
    """Yield (device, mountpoint, fstype, options) from a /proc mounts table."""
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 4:
            continue
        # The kernel escapes blanks in paths as octal (\040 for a space).
        device, mountpoint = (_unescape_octal(p) for p in parts[:2])
        yield device, mountpoint, parts[2], parts[3]


def _unescape_octal(path: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), path)


def parse_sockstat(text: str) -> Iterator[tuple[str, str, int]]:
    """Yield (protocol, key, value) from /proc/net/sockstat; "sockets: used N" as ("sockets", "used", N)."""
    for line in text.splitlines():
        proto, _, rest = line.partition(":")
        fields = rest.split()
        for key, value in zip(fields[::2], fields[1::2], strict=False):
            yield proto, key, int(value)


def parse_pressure(text: str) -> Iterator[tuple[str, float]]:
    """Yield ("some" | "full", total microseconds) from a /proc/pressure file."""
    for line in text.splitlines():
        kind, *fields = line.split()
        for field in fields:
            if field.startswith("total="):
                yield kind, float(field[len("total=") :])
