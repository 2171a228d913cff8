"""Kernel-wide counters from /proc: node_exporter's stat, vmstat, filefd and entropy collectors.

Each class is one source: when its file cannot be read only its families go
missing, and ``fleet_exporter_collector_success{collector}`` says which.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric, UnknownMetricFamily

# node_exporter 1.5's --collector.vmstat.fields default.
VMSTAT_FIELDS = re.compile(r"^(oom_kill|pgpg|pswp|pg.*fault).*")
# (/proc/stat key, family, help, counter?)
STAT_LINES = (
    ("intr", "node_intr_total", "Total number of interrupts serviced.", True),
    ("ctxt", "node_context_switches_total", "Total number of context switches.", True),
    ("processes", "node_forks_total", "Total number of forks.", True),
    ("procs_running", "node_procs_running", "Number of processes in runnable state.", False),
    ("procs_blocked", "node_procs_blocked", "Number of processes blocked waiting for I/O to complete.", False),
)


class StatCollector:
    """Interrupts, context switches, forks and runnable/blocked processes from /proc/stat.

    Check by hand: ``curl -s localhost:9101/metrics | grep ^node_context_switches_total``::

        # TYPE node_context_switches_total counter
        node_context_switches_total 7.09653e+05
    """

    def __init__(self, proc_root: str = "/proc"):
        self._path = Path(proc_root) / "stat"

    def collect(self) -> Iterator[Metric]:
        values = parse_stat(self._path.read_text())
        for key, name, doc, counter in STAT_LINES:
            if key in values:
                kind = CounterMetricFamily if counter else GaugeMetricFamily
                yield kind(name, doc, value=values[key])


class VmstatCollector:
    """Paging, swapping, page faults and OOM kills from /proc/vmstat, untyped as in node_exporter."""

    def __init__(self, proc_root: str = "/proc", fields: re.Pattern = VMSTAT_FIELDS):
        self._path = Path(proc_root) / "vmstat"
        self._fields = fields

    def collect(self) -> Iterator[Metric]:
        for line in self._path.read_text().splitlines():
            key, _, value = line.partition(" ")
            if self._fields.match(key):
                yield UnknownMetricFamily(
                    f"node_vmstat_{key}", f"/proc/vmstat information field {key}.", value=float(value)
                )


class FilefdCollector:
    """Allocated and maximum file handles of the whole system, from /proc/sys/fs/file-nr."""

    def __init__(self, proc_root: str = "/proc"):
        self._path = Path(proc_root) / "sys" / "fs" / "file-nr"

    def collect(self) -> Iterator[Metric]:
        fields = self._path.read_text().split()
        if len(fields) < 3:
            raise ValueError(f"unexpected number of file stats in {self._path}")
        # The middle field (free handles) has been 0 since Linux 2.6: node_exporter skips it.
        for name, value in (("allocated", fields[0]), ("maximum", fields[2])):
            yield GaugeMetricFamily(f"node_filefd_{name}", f"File descriptor statistics: {name}.", value=float(value))


class EntropyCollector:
    """Bits of entropy available and the pool size, from /proc/sys/kernel/random."""

    def __init__(self, proc_root: str = "/proc"):
        self._dir = Path(proc_root) / "sys" / "kernel" / "random"

    def collect(self) -> Iterator[Metric]:
        available = int((self._dir / "entropy_avail").read_text())
        pool = int((self._dir / "poolsize").read_text())
        yield GaugeMetricFamily("node_entropy_available_bits", "Bits of available entropy.", value=available)
        yield GaugeMetricFamily("node_entropy_pool_size_bits", "Bits of entropy pool.", value=pool)


def parse_stat(text: str) -> dict[str, int]:
    """The single-number lines of /proc/stat (``intr`` by its total), by key."""
    values = {}
    for line in text.splitlines():
        key, _, rest = line.partition(" ")
        if key.startswith("cpu") or not rest.strip():
            continue
        values[key] = int(rest.split(maxsplit=1)[0])
    return values
