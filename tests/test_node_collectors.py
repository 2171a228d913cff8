"""exporter.node's collectors on fake /proc and /sys trees: the cases this machine cannot show."""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry

from exporter.node import node_collectors
from exporter.node.diskstats import DiskstatsCollector
from exporter.node.netdev import NetclassCollector, NetdevCollector
from exporter.node.netstack import ConntrackCollector
from exporter.node.netstat import NetstatCollector
from exporter.node.textfile import TextfileCollector
from exporter.node.timex import STA_NANO, TIME_ERROR, Timex, TimexCollector
from exporter.registry import InstrumentedCollectors

NET_DEV = """Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo: 100 2 0 0 0 0 0 0 100 2 0 0 0 0 0 0
  eth0: 4000 30 1 2 3 4 5 6 7000 80 9 10 11 12 13 14
"""  # noqa: E501 - the kernel's own header
SNMP = """Ip: Forwarding DefaultTTL InReceives
Ip: 1 64 1000
Tcp: RtoMin ActiveOpens CurrEstab InErrs
Tcp: 200 7 3 1
"""
NETSTAT = """TcpExt: SyncookiesSent ListenDrops TCPSackMerged
TcpExt: 0 4 99
"""
SNMP6 = """Ip6InOctets                     	123
Icmp6InMsgs                     	5
Udp6InDatagrams                 	6
"""
CONNTRACK_STAT = """entries  clashres found new invalid ignore delete chainlength insert insert_failed drop early_drop icmp_error  expect_new expect_create expect_delete search_restart
00000004  00000000 0000000a 00000000 00000001 00000000 00000000 00000000 00000002 00000000 00000003 00000000 00000000  00000000 00000000 00000000 00000001
00000004  00000000 00000010 00000000 00000000 00000000 00000000 00000000 00000002 00000000 00000000 00000000 00000000  00000000 00000000 00000000 00000001
"""  # noqa: E501 - the kernel's own line


def registry_of(collector) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry


def write(path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_a_missing_source_costs_only_its_own_families(tmp_path):
    proc, sys = tmp_path / "proc", tmp_path / "sys"
    write(proc / "stat", "cpu  1 2 3 4\nintr 1234 5 6\nctxt 99\nbtime 1\nprocesses 42\nprocs_running 3\n")
    write(proc / "vmstat", "nr_free_pages 1\npgfault 100\npgmajfault 2\noom_kill 0\npgsteal_kswapd 9\n")
    write(proc / "net" / "dev", NET_DEV)
    # No conntrack module, no snmp, no diskstats: those collectors fail, the others answer.
    registry = registry_of(InstrumentedCollectors(node_collectors(str(proc), str(sys), str(tmp_path))))
    value = registry.get_sample_value
    assert value("node_context_switches_total") == 99
    assert value("node_intr_total") == 1234
    assert value("node_forks_total") == 42
    assert value("node_procs_running") == 3
    assert value("node_procs_blocked") is None  # a line the kernel did not write is absent, not 0
    assert value("node_vmstat_pgfault") == 100 and value("node_vmstat_oom_kill") == 0
    assert value("node_vmstat_nr_free_pages") is None  # outside node_exporter's default field regex
    assert value("node_network_receive_bytes_total", {"device": "eth0"}) == 4000
    assert value("node_nf_conntrack_entries") is None
    for name, ok in {"stat": 1, "vmstat": 1, "netdev": 1, "conntrack": 0, "netstat": 0, "diskstats": 0}.items():
        assert value("fleet_exporter_collector_success", {"collector": name}) == ok, name
        assert value("node_scrape_collector_success", {"collector": name}) == ok, name


def test_netdev_columns_and_nohandler(tmp_path):
    write(tmp_path / "proc" / "net" / "dev", NET_DEV)
    write(tmp_path / "sys" / "class" / "net" / "eth0" / "statistics" / "rx_nohandler", "17\n")
    value = registry_of(NetdevCollector(str(tmp_path / "proc"), str(tmp_path / "sys"))).get_sample_value
    eth0 = {"device": "eth0"}
    assert value("node_network_receive_frame_total", eth0) == 4
    assert value("node_network_receive_multicast_total", eth0) == 6
    assert value("node_network_transmit_colls_total", eth0) == 12
    assert value("node_network_transmit_carrier_total", eth0) == 13
    assert value("node_network_receive_nohandler_total", eth0) == 17
    assert value("node_network_receive_bytes_total", {"device": "lo"}) is None  # excluded as node_exporter does


def test_netclass_reads_hex_and_skips_what_a_device_lacks(tmp_path):
    net = tmp_path / "class" / "net"
    for name, text in {"flags": "0x1003", "mtu": "1400", "speed": "-1", "operstate": "up", "carrier": "1",
                       "address": "02:fc:00:00:00:01", "dev_id": "0x0", "carrier_changes": "2"}.items():  # fmt: skip
        write(net / "eth0" / name, text + "\n")
    write(net / "lo" / "mtu", "65536\n")
    write(net / "lo" / "operstate", "unknown\n")
    write(net / "bonding_masters", "bond0\n")  # a file, not an interface
    value = registry_of(NetclassCollector(str(tmp_path))).get_sample_value
    eth0, lo = {"device": "eth0"}, {"device": "lo"}
    assert value("node_network_flags", eth0) == 4099 and value("node_network_device_id", eth0) == 0
    assert value("node_network_speed_bytes", eth0) == -125000  # unknown speed, as node_exporter 1.5 reports it
    assert value("node_network_up", eth0) == 1 and value("node_network_up", lo) == 0
    assert value("node_network_carrier_changes_total", eth0) == 2
    assert value("node_network_mtu_bytes", lo) == 65536
    assert value("node_network_carrier", lo) is None
    assert value("node_network_up", {"device": "bonding_masters"}) is None
    info = {"device": "eth0", "address": "02:fc:00:00:00:01", "broadcast": "", "duplex": "", "operstate": "up"}
    assert value("node_network_info", {**info, "ifalias": ""}) == 1


def test_netstat_keeps_node_exporters_default_fields(tmp_path):
    for name, text in {"snmp": SNMP, "netstat": NETSTAT, "snmp6": SNMP6}.items():
        write(tmp_path / "net" / name, text)
    value = registry_of(NetstatCollector(str(tmp_path))).get_sample_value
    assert value("node_netstat_Tcp_CurrEstab") == 3 and value("node_netstat_Tcp_InErrs") == 1
    assert value("node_netstat_Ip_Forwarding") == 1 and value("node_netstat_TcpExt_ListenDrops") == 4
    assert value("node_netstat_Ip6_InOctets") == 123 and value("node_netstat_Udp6_InDatagrams") == 6
    assert value("node_netstat_Tcp_RtoMin") is None and value("node_netstat_TcpExt_TCPSackMerged") is None


def test_diskstats_of_an_old_kernel_export_only_its_fields(tmp_path):
    write(tmp_path / "diskstats", "   8 0 sda 10 1 64 5 20 2 128 7 0 12 12\n   8 1 sda1 1 0 8 1 0 0 0 0 0 1 1\n")
    write(tmp_path / "udev" / "b8:0", "S:disk/by-id/x\nE:ID_MODEL=QEMU_HARDDISK\nE:ID_SERIAL_SHORT=QM1\n")
    registry = registry_of(DiskstatsCollector(str(tmp_path), udev_data=str(tmp_path / "udev")))
    value, sda = registry.get_sample_value, {"device": "sda"}
    assert value("node_disk_read_bytes_total", sda) == 64 * 512
    assert value("node_disk_write_time_seconds_total", sda) == 0.007
    assert value("node_disk_io_time_weighted_seconds_total", sda) == 0.012
    assert value("node_disk_discards_completed_total", sda) is None  # 11 fields: a kernel before 4.18
    assert value("node_disk_reads_completed_total", {"device": "sda1"}) is None  # partitions are excluded
    labels = {"major": "8", "minor": "0", "path": "", "wwn": "", "model": "QEMU_HARDDISK", "serial": "QM1"}
    assert value("node_disk_info", {**sda, **labels, "revision": ""}) == 1
    # A family without a series is not written at all, as node_exporter writes none.
    text = "".join(f.name for f in InstrumentedCollectors({"d": DiskstatsCollector(str(tmp_path))}).collect())
    assert "node_disk_discards_completed" not in text


def test_conntrack_statistics_are_summed_over_cpus(tmp_path):
    write(tmp_path / "sys" / "net" / "netfilter" / "nf_conntrack_count", "8\n")
    write(tmp_path / "sys" / "net" / "netfilter" / "nf_conntrack_max", "262144\n")
    write(tmp_path / "net" / "stat" / "nf_conntrack", CONNTRACK_STAT)
    value = registry_of(ConntrackCollector(str(tmp_path))).get_sample_value
    assert value("node_nf_conntrack_entries") == 8 and value("node_nf_conntrack_entries_limit") == 262144
    assert value("node_nf_conntrack_stat_found") == 26 and value("node_nf_conntrack_stat_drop") == 3
    assert value("node_nf_conntrack_stat_insert") == 4 and value("node_nf_conntrack_stat_search_restart") == 2


def test_timex_units_follow_the_kernels_nano_flag():
    def unsynced_nano():
        return TIME_ERROR, Timex(offset=1500, status=STA_NANO | 0x40, freq=65536 * 10, maxerror=16_000_000, tick=10000)

    value = registry_of(TimexCollector(unsynced_nano)).get_sample_value
    assert value("node_timex_sync_status") == 0
    assert value("node_timex_offset_seconds") == 1.5e-6  # ns, since STA_NANO is set
    assert value("node_timex_frequency_adjustment_ratio") == 1.00001  # +10 ppm
    assert value("node_timex_maxerror_seconds") == 16.0 and value("node_timex_tick_seconds") == 0.01
    assert value("node_timex_pps_calibration_total") == 0


def test_textfile_exports_good_files_and_flags_bad_ones(tmp_path):
    write(tmp_path / "backup.prom", '# TYPE backup_ok gauge\nbackup_ok{job="db"} 1\nbackup_bytes_total 7\n')
    write(tmp_path / "more.prom", '# TYPE backup_ok gauge\nbackup_ok{job="web"} 0\n')
    write(tmp_path / "ignored.txt", "not_read 1\n")
    os.utime(tmp_path / "backup.prom", (1_700_000_000, 1_700_000_000))
    collector = TextfileCollector(str(tmp_path))
    value = registry_of(collector).get_sample_value
    assert value("backup_ok", {"job": "db"}) == 1 and value("backup_ok", {"job": "web"}) == 0
    assert value("backup_bytes_total") == 7 and value("not_read") is None
    assert value("node_textfile_mtime_seconds", {"file": str(tmp_path / "backup.prom")}) == 1_700_000_000
    assert value("node_textfile_scrape_error") == 0

    write(tmp_path / "broken.prom", "this is { not a metric\n")
    write(tmp_path / "stamped.prom", "stamped_total 3 1700000000000\n")
    value = registry_of(collector).get_sample_value
    assert value("node_textfile_scrape_error") == 1
    assert value("backup_ok", {"job": "db"}) == 1 and value("stamped_total") is None
    assert value("node_textfile_mtime_seconds", {"file": str(tmp_path / "broken.prom")}) is None

    assert registry_of(TextfileCollector("")).get_sample_value("node_textfile_scrape_error") == 0
    assert registry_of(TextfileCollector(str(tmp_path / "nope"))).get_sample_value("node_textfile_scrape_error") == 1
