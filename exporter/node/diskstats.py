"""Block device I/O counters from /proc/diskstats: node_exporter's diskstats collector."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

# node_exporter 1.5's --collector.diskstats.device-exclude default: partitions and pseudo devices.
DISK_EXCLUDE = re.compile(r"^(ram|loop|fd|(h|s|v|xv)d[a-z]|nvme\d+n\d+p)\d+$")
SECTOR_BYTES = 512.0  # /proc/diskstats counts 512-byte sectors whatever the device's own sector size
MS = 0.001
# The fields after major, minor and name, in the kernel's order: (metric, help, scale, counter?).
# Older kernels have 11 of them, 4.18+ 15 (discards), 5.5+ 17 (flushes): only those present are exported.
DISK_FIELDS = (
    ("reads_completed_total", "The total number of reads completed successfully.", 1, True),
    ("reads_merged_total", "The total number of reads merged.", 1, True),
    ("read_bytes_total", "The total number of bytes read successfully.", SECTOR_BYTES, True),
    ("read_time_seconds_total", "The total number of seconds spent by all reads.", MS, True),
    ("writes_completed_total", "The total number of writes completed successfully.", 1, True),
    ("writes_merged_total", "The number of writes merged.", 1, True),
    ("written_bytes_total", "The total number of bytes written successfully.", SECTOR_BYTES, True),
    ("write_time_seconds_total", "This is the total number of seconds spent by all writes.", MS, True),
    ("io_now", "The number of I/Os currently in progress.", 1, False),
    ("io_time_seconds_total", "Total seconds spent doing I/Os.", MS, True),
    ("io_time_weighted_seconds_total", "The weighted # of seconds spent doing I/Os.", MS, True),
    ("discards_completed_total", "The total number of discards completed successfully.", 1, True),
    ("discards_merged_total", "The total number of discards merged.", 1, True),
    ("discarded_sectors_total", "The total number of sectors discarded successfully.", 1, True),
    ("discard_time_seconds_total", "This is the total number of seconds spent by all discards.", MS, True),
    ("flush_requests_total", "The total number of flush requests completed successfully", 1, True),
    ("flush_requests_time_seconds_total", "This is the total number of seconds spent by all flush requests.", MS, True),
)
# node_disk_info's labels after device, major and minor, and the udev properties they come from.
UDEV_INFO = (("path", "ID_PATH"), ("wwn", "ID_WWN"), ("model", "ID_MODEL"), ("serial", "ID_SERIAL_SHORT"),
             ("revision", "ID_REVISION"))  # fmt: skip


class DiskstatsCollector:
    """Reads, writes, bytes, time, queue depth, discards and flushes per whole disk.

    Check by hand: ``curl -s localhost:9101/metrics | grep ^node_disk_io_now``::

        # TYPE node_disk_io_now gauge
        node_disk_io_now{device="vda"} 0.0
    """

    def __init__(self, proc_root: str = "/proc", udev_data: str = "/run/udev/data", exclude: re.Pattern = DISK_EXCLUDE):
        self._path = Path(proc_root) / "diskstats"
        self._udev = Path(udev_data)
        self._exclude = exclude

    def collect(self) -> Iterator[Metric]:
        info = GaugeMetricFamily(
            "node_disk_info",
            "Info of /sys/block/<block_device>.",
            labels=["device", "major", "minor", *(label for label, _ in UDEV_INFO)],
        )
        fams = [
            (CounterMetricFamily if counter else GaugeMetricFamily)(f"node_disk_{name}", doc, labels=["device"])
            for name, doc, _, counter in DISK_FIELDS
        ]
        for line in self._path.read_text().splitlines():
            major, minor, device, *values = line.split()
            if self._exclude.match(device):
                continue
            udev = self._udev_properties(major, minor)
            info.add_metric([device, major, minor, *(udev.get(key, "") for _, key in UDEV_INFO)], 1)
            for fam, (_, _, scale, _), value in zip(fams, DISK_FIELDS, values, strict=False):
                fam.add_metric([device], int(value) * scale)
        yield info
        yield from fams

    def _udev_properties(self, major: str, minor: str) -> dict[str, str]:
        try:
            text = (self._udev / f"b{major}:{minor}").read_text()
        except OSError:
            return {}  # no udev database (a container): the labels are empty, as in node_exporter
        return dict(line[2:].split("=", 1) for line in text.splitlines() if line.startswith("E:") and "=" in line)
