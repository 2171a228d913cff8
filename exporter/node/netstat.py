"""Protocol counters of the IP stack: node_exporter's netstat and udp_queues collectors.

netstat reads /proc/net/netstat, /proc/net/snmp and /proc/net/snmp6 and keeps
the fields node_exporter 1.5 keeps by default, untyped as it exports them.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from pathlib import Path

from prometheus_client.core import GaugeMetricFamily, Metric, UnknownMetricFamily

# node_exporter 1.5's --collector.netstat.fields default.
NETSTAT_FIELDS = re.compile(
    r"^(.*_(InErrors|InErrs)|Ip_Forwarding|Ip(6|Ext)_(InOctets|OutOctets)|Icmp6?_(InMsgs|OutMsgs)"
    r"|TcpExt_(Listen.*|Syncookies.*|TCPSynRetrans|TCPTimeouts)"
    r"|Tcp_(ActiveOpens|InSegs|OutSegs|OutRsts|PassiveOpens|RetransSegs|CurrEstab)"
    r"|Udp6?_(InDatagrams|OutDatagrams|NoPorts|RcvbufErrors|SndbufErrors))$"
)


class NetstatCollector:
    """TCP, UDP, IP and ICMP counters by protocol and field, as ``node_netstat_<Protocol>_<Field>``.

    Check by hand: ``curl -s localhost:9101/metrics | grep ^node_netstat_Tcp_CurrEstab``::

        # TYPE node_netstat_Tcp_CurrEstab untyped
        node_netstat_Tcp_CurrEstab 4.0
    """

    def __init__(self, proc_root: str = "/proc", fields: re.Pattern = NETSTAT_FIELDS):
        self._net = Path(proc_root) / "net"
        self._fields = fields

    def collect(self) -> Iterator[Metric]:
        stats: dict[str, list[tuple[str, str, str]]] = {}  # protocol -> [(key, help, value)]
        for filename in ("netstat", "snmp"):
            lines = (self._net / filename).read_text().splitlines()
            for header, numbers in zip(lines[::2], lines[1::2], strict=False):
                protocol, kept = self._kept(header)
                values = numbers.split()
                stats[protocol] = [(key, doc, values[i]) for i, key, doc in kept]
        try:
            snmp6 = parse_snmp6((self._net / "snmp6").read_text())
        except FileNotFoundError:
            snmp6 = {}  # a kernel without IPv6: node_exporter goes on without it
        for protocol, fields in snmp6.items():
            keys = ((f"{protocol}_{field}", f"Statistic {protocol}{field}.", value) for field, value in fields.items())
            stats[protocol] = [k for k in keys if self._fields.match(k[0])]
        for fields in stats.values():
            for key, doc, value in fields:
                yield UnknownMetricFamily(f"node_netstat_{key}", doc, value=float(value))

    @functools.lru_cache(maxsize=64)  # noqa: B019 - one collector per exporter; the headers never change
    def _kept(self, header: str) -> tuple[str, list[tuple[int, str, str]]]:
        """(protocol, [(column, key, help)] of the fields to export) for a header line of netstat or snmp."""
        names = header.split()
        protocol = names[0].rstrip(":")
        kept = []
        for i, field in enumerate(names[1:], start=1):
            key = f"{protocol}_{field}"
            if self._fields.match(key):
                kept.append((i, key, f"Statistic {protocol}{field}."))
        return protocol, kept


class UdpQueuesCollector:
    """Bytes queued in UDP sockets' send and receive buffers, summed over sockets, for IPv4 and IPv6."""

    def __init__(self, proc_root: str = "/proc"):
        self._net = Path(proc_root) / "net"

    def collect(self) -> Iterator[Metric]:
        fam = GaugeMetricFamily(
            "node_udp_queues",
            "Number of allocated memory in the kernel for UDP datagrams in bytes.",
            labels=["queue", "ip"],
        )
        found = False
        for ip, filename in (("v4", "udp"), ("v6", "udp6")):
            try:
                tx, rx = udp_queue_totals((self._net / filename).read_text())
            except FileNotFoundError:
                continue
            found = True
            fam.add_metric(["tx", ip], tx)
            fam.add_metric(["rx", ip], rx)
        if not found:
            raise FileNotFoundError(f"neither {self._net}/udp nor udp6")
        yield fam


def parse_snmp6(text: str) -> dict[str, dict[str, str]]:
    """{protocol: {field: value}} from /proc/net/snmp6, split after the first "6" ("Icmp6InMsgs")."""
    stats: dict[str, dict[str, str]] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 2 or "6" not in parts[0]:
            continue
        protocol, _, field = parts[0].partition("6")
        stats.setdefault(protocol + "6", {})[field] = parts[1]
    return stats


def udp_queue_totals(text: str) -> tuple[int, int]:
    """(tx, rx) bytes summed over the sockets of /proc/net/udp or udp6, whose queues are hex."""
    tx = rx = 0
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 5:
            continue
        tx_queue, _, rx_queue = fields[4].partition(":")
        tx += int(tx_queue, 16)
        rx += int(rx_queue, 16)
    return tx, rx
