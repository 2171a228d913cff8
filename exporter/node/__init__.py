"""node_exporter's default Linux collectors beyond exporter.host, one source each, under node_exporter's names."""

from __future__ import annotations

from exporter.node.diskstats import DiskstatsCollector
from exporter.node.kernel import EntropyCollector, FilefdCollector, StatCollector, VmstatCollector
from exporter.node.netdev import NetclassCollector, NetdevCollector
from exporter.node.netstack import ArpCollector, ConntrackCollector, SoftnetCollector
from exporter.node.netstat import NetstatCollector, UdpQueuesCollector
from exporter.node.system import OsReleaseCollector, SelinuxCollector, TimeCollector
from exporter.node.textfile import TextfileCollector
from exporter.node.timex import TimexCollector


def node_collectors(
    proc_root: str = "/proc", sys_root: str = "/sys", rootfs: str = "/", textfile_directory: str = ""
) -> dict:
    """{node_exporter collector name: collector} reading ``proc_root``, ``sys_root``, ``rootfs`` and textfiles."""
    return {
        "stat": StatCollector(proc_root),
        "vmstat": VmstatCollector(proc_root),
        "filefd": FilefdCollector(proc_root),
        "entropy": EntropyCollector(proc_root),
        "timex": TimexCollector(),
        "diskstats": DiskstatsCollector(proc_root),
        "netdev": NetdevCollector(proc_root, sys_root),
        "netclass": NetclassCollector(sys_root),
        "netstat": NetstatCollector(proc_root),
        "udp_queues": UdpQueuesCollector(proc_root),
        "softnet": SoftnetCollector(proc_root),
        "arp": ArpCollector(proc_root),
        "conntrack": ConntrackCollector(proc_root),
        "os": OsReleaseCollector(rootfs),
        "selinux": SelinuxCollector(sys_root, rootfs),
        "time": TimeCollector(sys_root),
        "textfile": TextfileCollector(textfile_directory),
    }
