"""What the system is: node_exporter's os, selinux and time (zone, clocksources) collectors.

node_time_seconds itself comes with the host collector (exporter.host).
"""

from __future__ import annotations

import re
import shlex
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from prometheus_client.core import GaugeMetricFamily, Metric

OS_RELEASE_FILES = ("etc/os-release", "usr/lib/os-release")
# node_os_info's labels and the os-release keys they come from.
OS_INFO = (
    ("build_id", "BUILD_ID"),
    ("id", "ID"),
    ("id_like", "ID_LIKE"),
    ("image_id", "IMAGE_ID"),
    ("image_version", "IMAGE_VERSION"),
    ("name", "NAME"),
    ("pretty_name", "PRETTY_NAME"),
    ("variant", "VARIANT"),
    ("variant_id", "VARIANT_ID"),
    ("version", "VERSION"),
    ("version_codename", "VERSION_CODENAME"),
    ("version_id", "VERSION_ID"),
)
MAJOR_MINOR = re.compile(r"^[0-9]+\.?[0-9]*")


class OsReleaseCollector:
    """The distribution from os-release: node_os_info{id,name,version,...} and node_os_version (major.minor).

    Check by hand: ``curl -s localhost:9101/metrics | grep ^node_os_version``::

        # TYPE node_os_version gauge
        node_os_version{id="debian",id_like="",name="Debian GNU/Linux"} 12.0
    """

    def __init__(self, rootfs: str = "/"):
        self._files = [Path(rootfs) / name for name in OS_RELEASE_FILES]
        self._cached: tuple[tuple[Path, int], dict[str, str]] | None = None

    def collect(self) -> Iterator[Metric]:
        release = self._release()
        info = GaugeMetricFamily(
            "node_os_info",
            "A metric with a constant '1' value labeled by build_id, id, id_like, image_id, image_version, "
            "name, pretty_name, variant, variant_id, version, version_codename, version_id.",
            labels=[label for label, _ in OS_INFO],
        )
        info.add_metric([release.get(key, "") for _, key in OS_INFO], 1)
        yield info
        major_minor = MAJOR_MINOR.match(release.get("VERSION_ID", ""))
        if major_minor and float(major_minor.group(0)) > 0:
            version = GaugeMetricFamily(
                "node_os_version",
                "Metric containing the major.minor part of the OS version.",
                labels=["id", "id_like", "name"],
            )
            labels = [release.get("ID", ""), release.get("ID_LIKE", ""), release.get("NAME", "")]
            version.add_metric(labels, float(major_minor.group(0)))
            yield version

    def _release(self) -> dict[str, str]:
        # Parsed again only when the file changes (an upgrade), as node_exporter does.
        for path in self._files:
            try:
                key = (path, path.stat().st_mtime_ns)
            except FileNotFoundError:
                continue
            if self._cached is None or self._cached[0] != key:
                self._cached = (key, parse_os_release(path.read_text()))
            return self._cached[1]
        raise FileNotFoundError(f"no os-release file: {', '.join(map(str, self._files))}")


class SelinuxCollector:
    """Whether SELinux is enabled and, where it is, its configured and current enforcement modes."""

    def __init__(self, sys_root: str = "/sys", rootfs: str = "/"):
        self._enforce = Path(sys_root) / "fs" / "selinux" / "enforce"
        self._config = Path(rootfs) / "etc" / "selinux" / "config"

    def collect(self) -> Iterator[Metric]:
        try:
            current = int(self._enforce.read_text())
        except OSError:  # no selinuxfs: SELinux is off
            yield GaugeMetricFamily("node_selinux_enabled", "SELinux is enabled, 1 is true, 0 is false", value=0)
            return
        yield GaugeMetricFamily("node_selinux_enabled", "SELinux is enabled, 1 is true, 0 is false", value=1)
        modes = {"enforcing": 1, "permissive": 0, "disabled": -1}
        try:
            config = parse_os_release(self._config.read_text()).get("SELINUX", "disabled")
        except OSError:
            config = "disabled"
        yield GaugeMetricFamily(
            "node_selinux_config_mode", "Configured SELinux enforcement mode", value=modes.get(config, -1)
        )
        yield GaugeMetricFamily("node_selinux_current_mode", "Current SELinux enforcement mode", value=current)


class TimeCollector:
    """The local time zone's offset, and the kernel's available and current clocksources."""

    def __init__(self, sys_root: str = "/sys", localtime: Callable[[], time.struct_time] = time.localtime):
        self._clocksource = Path(sys_root) / "devices" / "system" / "clocksource"
        self._localtime = localtime

    def collect(self) -> Iterator[Metric]:
        now = self._localtime()
        zone = GaugeMetricFamily(
            "node_time_zone_offset_seconds", "System time zone offset in seconds.", labels=["time_zone"]
        )
        zone.add_metric([now.tm_zone], now.tm_gmtoff)
        yield zone
        available = GaugeMetricFamily(
            "node_time_clocksource_available_info",
            "Available clocksources read from '/sys/devices/system/clocksource'.",
            labels=["device", "clocksource"],
        )
        current = GaugeMetricFamily(
            "node_time_clocksource_current_info",
            "Current clocksource read from '/sys/devices/system/clocksource'.",
            labels=["device", "clocksource"],
        )
        # node_exporter labels each clocksourceN by its position in the listing.
        devices = sorted(self._clocksource.glob("clocksource[0-9]*"), key=lambda p: int(p.name[len("clocksource") :]))
        for i, device in enumerate(devices):
            for name in (device / "available_clocksource").read_text().split():
                available.add_metric([str(i), name], 1)
            current.add_metric([str(i), (device / "current_clocksource").read_text().strip()], 1)
        yield available
        yield current


def parse_os_release(text: str) -> dict[str, str]:
    """KEY=value pairs of an os-release (or shell-style config) file, quotes removed."""
    values = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        try:
            words = shlex.split(value)
        except ValueError:
            words = [value]
        values[key.strip()] = " ".join(words)
    return values
