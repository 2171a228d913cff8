"""The kernel's packet path and tables: node_exporter's softnet, arp and conntrack collectors."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

# Columns of /proc/net/stat/nf_conntrack summed over CPUs, by position as procfs reads them.
CONNTRACK_STATS = (
    (2, "found", "Number of searched entries which were successful."),
    (4, "invalid", "Number of packets seen which can not be tracked."),
    (5, "ignore", "Number of packets seen which are already connected to a conntrack entry."),
    (8, "insert", "Number of entries inserted into the list."),
    (9, "insert_failed", "Number of entries for which list insertion was attempted but failed."),
    (10, "drop", "Number of packets dropped due to conntrack failure."),
    (
        11,
        "early_drop",
        "Number of dropped conntrack entries to make room for new ones, if maximum table size was reached.",
    ),
    (16, "search_restart", "Number of conntrack table lookups which had to be restarted due to hashtable resizes."),
)


class SoftnetCollector:
    """Packets processed and dropped by each CPU's network softirq, and times it ran out of quota.

    Check by hand: ``curl -s localhost:9101/metrics | grep ^node_softnet_processed``::

        # TYPE node_softnet_processed_total counter
        node_softnet_processed_total{cpu="0"} 19507.0
    """

    def __init__(self, proc_root: str = "/proc"):
        self._path = Path(proc_root) / "net" / "softnet_stat"

    def collect(self) -> Iterator[Metric]:
        fams = [
            CounterMetricFamily("node_softnet_processed_total", "Number of processed packets", labels=["cpu"]),
            CounterMetricFamily("node_softnet_dropped_total", "Number of dropped packets", labels=["cpu"]),
            CounterMetricFamily(
                "node_softnet_times_squeezed_total",
                "Number of times processing packets ran out of quota",
                labels=["cpu"],
            ),
        ]
        # One line per online CPU, in order; node_exporter 1.5 labels them by line number.
        for cpu, line in enumerate(self._path.read_text().splitlines()):
            columns = line.split()
            if len(columns) < 9:
                raise ValueError(f"{len(columns)} columns in {self._path}, at least 9 expected")
            for fam, column in zip(fams, columns[:3], strict=True):
                fam.add_metric([str(cpu)], int(column, 16))
        yield from fams


class ArpCollector:
    """Neighbour (ARP) table entries per device, from /proc/net/arp."""

    def __init__(self, proc_root: str = "/proc"):
        self._path = Path(proc_root) / "net" / "arp"

    def collect(self) -> Iterator[Metric]:
        entries: Counter[str] = Counter()
        for line in self._path.read_text().splitlines():
            columns = line.split()
            if len(columns) < 6:
                raise ValueError(f"unexpected ARP table format in {self._path}")
            if columns[0] != "IP":  # the header
                entries[columns[-1]] += 1
        fam = GaugeMetricFamily("node_arp_entries", "ARP entries by device", labels=["device"])
        for device, count in entries.items():
            fam.add_metric([device], count)
        yield fam


class ConntrackCollector:
    """Connection-tracking table size, limit and per-CPU statistics summed; absent without nf_conntrack."""

    def __init__(self, proc_root: str = "/proc"):
        self._proc = Path(proc_root)

    def collect(self) -> Iterator[Metric]:
        netfilter = self._proc / "sys" / "net" / "netfilter"
        count = int((netfilter / "nf_conntrack_count").read_text())
        limit = int((netfilter / "nf_conntrack_max").read_text())
        yield GaugeMetricFamily(
            "node_nf_conntrack_entries",
            "Number of currently allocated flow entries for connection tracking.",
            value=count,
        )
        yield GaugeMetricFamily(
            "node_nf_conntrack_entries_limit", "Maximum size of connection tracking table.", value=limit
        )
        totals = [0] * 17
        lines = (self._proc / "net" / "stat" / "nf_conntrack").read_text().splitlines()
        for line in lines[1:]:  # a header, then one line per CPU
            fields = line.split()
            if len(fields) != 17:
                raise ValueError("invalid conntrack stat entry, missing fields")
            totals = [t + int(f, 16) for t, f in zip(totals, fields, strict=True)]
        for column, name, doc in CONNTRACK_STATS:
            yield GaugeMetricFamily(f"node_nf_conntrack_stat_{name}", doc, value=totals[column])
