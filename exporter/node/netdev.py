"""Network interfaces: node_exporter's netdev (traffic counters) and netclass (sysfs properties) collectors."""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Iterator
from pathlib import Path

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

# node_exporter 1.5's --collector.netdev.device-exclude default (Debian's build).
NETDEV_EXCLUDE = re.compile(r"^lo$")
# The 16 columns of /proc/net/dev, in order, named as node_exporter names them. The kernel
# already folds the detailed error counters into these as node_exporter's netlink path does.
NETDEV_COLUMNS = (
    "receive_bytes",
    "receive_packets",
    "receive_errs",
    "receive_drop",
    "receive_fifo",
    "receive_frame",
    "receive_compressed",
    "receive_multicast",
    "transmit_bytes",
    "transmit_packets",
    "transmit_errs",
    "transmit_drop",
    "transmit_fifo",
    "transmit_colls",
    "transmit_carrier",
    "transmit_compressed",
)
# (sysfs file, metric, counter?) read as integers for each interface; absent where unreadable.
NETCLASS_NUMBERS = (
    ("addr_assign_type", "address_assign_type", False),
    ("carrier", "carrier", False),
    ("carrier_changes", "carrier_changes_total", True),
    ("carrier_up_count", "carrier_up_changes_total", True),
    ("carrier_down_count", "carrier_down_changes_total", True),
    ("dev_id", "device_id", False),
    ("dormant", "dormant", False),
    ("flags", "flags", False),
    ("ifindex", "iface_id", False),
    ("iflink", "iface_link", False),
    ("link_mode", "iface_link_mode", False),
    ("mtu", "mtu_bytes", False),
    ("name_assign_type", "name_assign_type", False),
    ("netdev_group", "net_dev_group", False),
    ("speed", "speed_bytes", False),
    ("tx_queue_len", "transmit_queue_length", False),
    ("type", "protocol_type", False),
)
NETCLASS_INFO = ("address", "broadcast", "duplex", "operstate", "ifalias")
# What sysfs answers for an attribute a device does not have (speed of lo, carrier of a down link).
ABSENT = {errno.ENOENT, errno.EACCES, errno.EPERM, errno.EINVAL, errno.EOPNOTSUPP}


class NetdevCollector:
    """Bytes, packets, errors, drops, FIFO, frame, compressed, multicast, collisions and carrier per interface.

    Check by hand: ``curl -s localhost:9101/metrics | grep ^node_network_receive_bytes_total``::

        # TYPE node_network_receive_bytes_total counter
        node_network_receive_bytes_total{device="eth0"} 4.48795569e+08
    """

    def __init__(self, proc_root: str = "/proc", sys_root: str = "/sys", exclude: re.Pattern = NETDEV_EXCLUDE):
        self._path = Path(proc_root) / "net" / "dev"
        self._class = Path(sys_root) / "class" / "net"
        self._exclude = exclude

    def collect(self) -> Iterator[Metric]:
        devices = {d: v for d, v in parse_net_dev(self._path.read_text()).items() if not self._exclude.match(d)}
        for i, stat in enumerate(NETDEV_COLUMNS):
            fam = CounterMetricFamily(f"node_network_{stat}", f"Network device statistic {stat}.", labels=["device"])
            for device, values in devices.items():
                fam.add_metric([device], values[i])
            yield fam
        # Not in /proc/net/dev; node_exporter gets it from netlink, the same counter as this file.
        nohandler = CounterMetricFamily(
            "node_network_receive_nohandler", "Network device statistic receive_nohandler.", labels=["device"]
        )
        for device in devices:
            value = read_sysfs(self._class / device / "statistics" / "rx_nohandler")
            if value is not None:
                nohandler.add_metric([device], int(value))
        yield nohandler


class NetclassCollector:
    """Each interface's operational state, carrier, MTU, speed, flags and the like, from /sys/class/net."""

    def __init__(self, sys_root: str = "/sys"):
        self._class = Path(sys_root) / "class" / "net"

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("node_network_up", "Value is 1 if operstate is 'up', 0 otherwise.", labels=["device"])
        info = GaugeMetricFamily(
            "node_network_info",
            "Non-numeric data from /sys/class/net/<iface>, value is always 1.",
            labels=["device", *NETCLASS_INFO],
        )
        numbers = {
            metric: (CounterMetricFamily if counter else GaugeMetricFamily)(
                f"node_network_{metric}", f"Network device property: {metric}", labels=["device"]
            )
            for _, metric, counter in NETCLASS_NUMBERS
        }
        # Interfaces are directories (symlinks to them); bonding_masters is a plain file.
        for entry in sorted(self._class.iterdir()):
            if entry.is_file() and not entry.is_symlink():
                continue
            device = entry.name
            # Attributes are opened relative to the device's directory: resolving the
            # /sys/class/net/<iface> symlink once rather than ~20 times cuts the cost by 40 %.
            directory = os.open(entry, os.O_RDONLY | os.O_DIRECTORY)
            try:
                text = {name: read_sysfs(name, directory) or "" for name in NETCLASS_INFO}
                values = {filename: _int(read_sysfs(filename, directory)) for filename, _, _ in NETCLASS_NUMBERS}
            finally:
                os.close(directory)
            up.add_metric([device], 1 if text["operstate"] == "up" else 0)
            info.add_metric([device, *(text[name] for name in NETCLASS_INFO)], 1)
            for filename, metric, _ in NETCLASS_NUMBERS:
                value = values[filename]
                if value is None:
                    continue
                if filename == "speed":
                    value *= 125_000  # Mbit/s to bytes/s; -1 (unknown) stays negative, as in node_exporter
                numbers[metric].add_metric([device], value)
        yield up
        yield info
        yield from numbers.values()


def parse_net_dev(text: str) -> dict[str, list[int]]:
    """{interface: its 16 counters} from /proc/net/dev."""
    devices = {}
    for line in text.splitlines()[2:]:
        name, _, counters = line.partition(":")
        devices[name.strip()] = [int(v) for v in counters.split()]
    return devices


def read_sysfs(path: str | Path, dir_fd: int | None = None) -> str | None:
    """A sysfs attribute's text, stripped; None where the device does not have it."""
    # os.open/os.read: netclass reads ~20 attributes per interface at every scrape, and
    # Path.read_text's text-file layers double the cost of each.
    try:
        fd = os.open(path, os.O_RDONLY, dir_fd=dir_fd)
        try:
            return os.read(fd, 4096).decode(errors="replace").strip()
        finally:
            os.close(fd)
    except OSError as exc:
        if exc.errno in ABSENT:
            return None
        raise


def _int(text: str | None) -> int | None:
    # sysfs writes flags and dev_id in hex ("0x1003"); node_exporter parses with base 0.
    if text is None or text == "":
        return None
    try:
        return int(text, 0)
    except ValueError:
        return None
