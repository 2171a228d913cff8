"""Our host families against Debian's real node_exporter on the same machine, family by family.

Both are scraped within milliseconds of each other; each family is compared
on type, label names, label values and values, with a tolerance fitted to how
fast that metric can move between the two reads.
"""

from __future__ import annotations

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from fleetwatch.testing import services

pytestmark = pytest.mark.integration

MiB = 1024 * 1024


def exact(ours: float, ref: float) -> bool:
    return ours == ref


def within(abs_tol: float, rel_tol: float = 0.0):
    def close(ours: float, ref: float) -> bool:
        return abs(ours - ref) <= abs_tol + rel_tol * abs(ref)

    return close


# family (as the parser names it: counters without _total) -> value check
FAMILIES = {
    "node_cpu_seconds": within(2.0, 0.01),
    "node_cpu_guest_seconds": within(2.0, 0.01),
    "node_load1": within(0.2),
    "node_load5": within(0.1),
    "node_load15": within(0.1),
    "node_memory_MemTotal_bytes": exact,
    "node_memory_MemAvailable_bytes": within(256 * MiB, 0.02),
    "node_memory_MemFree_bytes": within(256 * MiB, 0.02),
    "node_memory_Cached_bytes": within(256 * MiB, 0.02),
    "node_memory_Buffers_bytes": within(64 * MiB, 0.02),
    "node_memory_SReclaimable_bytes": within(64 * MiB, 0.02),
    "node_memory_SwapTotal_bytes": exact,
    "node_memory_SwapFree_bytes": within(64 * MiB),
    "node_memory_HugePages_Total": exact,
    "node_filesystem_size_bytes": exact,
    "node_filesystem_avail_bytes": within(256 * MiB),
    "node_filesystem_free_bytes": within(256 * MiB),
    "node_filesystem_files": exact,
    "node_filesystem_files_free": within(10_000),
    "node_filesystem_readonly": exact,
    "node_filesystem_device_error": exact,
    "node_disk_reads_completed": within(1000, 0.01),
    "node_disk_writes_completed": within(1000, 0.01),
    "node_disk_read_bytes": within(64 * MiB, 0.01),
    "node_disk_written_bytes": within(64 * MiB, 0.01),
    "node_disk_io_time_seconds": within(5.0, 0.01),
    "node_network_receive_bytes": within(4 * MiB, 0.01),
    "node_network_transmit_bytes": within(4 * MiB, 0.01),
    "node_network_receive_packets": within(5000, 0.01),
    "node_network_transmit_packets": within(5000, 0.01),
    "node_network_receive_errs": within(10),
    "node_network_transmit_errs": within(10),
    "node_network_receive_drop": within(10),
    "node_network_transmit_drop": within(10),
    "node_sockstat_TCP_inuse": within(20),
    "node_sockstat_sockets_used": within(50),
    "node_boot_time_seconds": within(1.0),
    "node_time_seconds": within(5.0),
    "node_uname_info": exact,
    "node_pressure_cpu_waiting_seconds": within(2.0, 0.01),
    "node_pressure_io_waiting_seconds": within(2.0, 0.01),
    "node_pressure_memory_waiting_seconds": within(2.0, 0.01),
    # exporter.node: kernel counters (stat, vmstat, filefd, entropy)
    "node_context_switches": within(50_000, 0.01),
    "node_intr": within(50_000, 0.01),
    "node_forks": within(500),
    "node_procs_running": within(20),
    "node_procs_blocked": within(20),
    "node_vmstat_pgfault": within(500_000, 0.01),
    "node_vmstat_pgmajfault": within(1000),
    "node_vmstat_pgpgin": within(500_000, 0.01),
    "node_vmstat_pgpgout": within(500_000, 0.01),
    "node_vmstat_pswpin": within(10_000),
    "node_vmstat_pswpout": within(10_000),
    "node_vmstat_oom_kill": exact,
    "node_filefd_allocated": within(1000),
    "node_filefd_maximum": exact,
    "node_entropy_available_bits": within(4096),
    "node_entropy_pool_size_bits": exact,
    # timex: the clock's discipline moves slowly; the PPS counters not at all without a PPS source
    "node_timex_sync_status": exact,
    "node_timex_offset_seconds": within(0.05),
    "node_timex_frequency_adjustment_ratio": within(1e-5),
    "node_timex_maxerror_seconds": within(1.0),
    "node_timex_estimated_error_seconds": within(0.05),
    "node_timex_status": exact,
    "node_timex_loop_time_constant": exact,
    "node_timex_tick_seconds": exact,
    "node_timex_tai_offset_seconds": exact,
    "node_timex_pps_frequency_hertz": exact,
    "node_timex_pps_jitter_seconds": exact,
    "node_timex_pps_shift_seconds": exact,
    "node_timex_pps_stability_hertz": exact,
    "node_timex_pps_jitter": exact,
    "node_timex_pps_calibration": exact,
    "node_timex_pps_error": exact,
    "node_timex_pps_stability_exceeded": exact,
    # diskstats beyond the first rows
    "node_disk_reads_merged": within(1000, 0.01),
    "node_disk_writes_merged": within(1000, 0.01),
    "node_disk_read_time_seconds": within(5.0, 0.01),
    "node_disk_write_time_seconds": within(5.0, 0.01),
    "node_disk_io_now": within(64),
    "node_disk_io_time_weighted_seconds": within(10.0, 0.01),
    "node_disk_discards_completed": within(1000, 0.01),
    "node_disk_discards_merged": within(1000, 0.01),
    "node_disk_discarded_sectors": within(1_000_000, 0.01),
    "node_disk_discard_time_seconds": within(5.0, 0.01),
    "node_disk_flush_requests": within(1000, 0.01),
    "node_disk_flush_requests_time_seconds": within(5.0, 0.01),
    "node_disk_info": exact,
    # netdev beyond the first rows, netclass
    "node_network_receive_fifo": within(10),
    "node_network_receive_frame": within(10),
    "node_network_receive_compressed": within(10),
    "node_network_receive_multicast": within(1000, 0.01),
    "node_network_receive_nohandler": within(10),
    "node_network_transmit_fifo": within(10),
    "node_network_transmit_colls": within(10),
    "node_network_transmit_carrier": within(10),
    "node_network_transmit_compressed": within(10),
    "node_network_up": exact,
    "node_network_info": exact,
    "node_network_carrier": exact,
    "node_network_carrier_changes": exact,
    "node_network_carrier_up_changes": exact,
    "node_network_carrier_down_changes": exact,
    "node_network_mtu_bytes": exact,
    "node_network_speed_bytes": exact,
    "node_network_flags": exact,
    "node_network_iface_id": exact,
    "node_network_protocol_type": exact,
    "node_network_transmit_queue_length": exact,
    "node_network_address_assign_type": exact,
    "node_network_name_assign_type": exact,
    "node_network_dormant": exact,
    # netstat (the fields the dashboard reads), udp_queues, softnet, arp, conntrack
    "node_netstat_Tcp_CurrEstab": within(50),
    "node_netstat_Tcp_InSegs": within(20_000, 0.01),
    "node_netstat_Tcp_OutSegs": within(20_000, 0.01),
    "node_netstat_Tcp_ActiveOpens": within(500),
    "node_netstat_Tcp_PassiveOpens": within(500),
    "node_netstat_Tcp_RetransSegs": within(500),
    "node_netstat_Tcp_InErrs": within(10),
    "node_netstat_Tcp_OutRsts": within(500),
    "node_netstat_TcpExt_ListenDrops": within(10),
    "node_netstat_TcpExt_ListenOverflows": within(10),
    "node_netstat_TcpExt_SyncookiesSent": within(10),
    "node_netstat_TcpExt_TCPSynRetrans": within(100),
    "node_netstat_TcpExt_TCPTimeouts": within(100),
    "node_netstat_IpExt_InOctets": within(16 * MiB, 0.01),
    "node_netstat_IpExt_OutOctets": within(16 * MiB, 0.01),
    "node_netstat_Ip_Forwarding": exact,
    "node_netstat_Udp_InDatagrams": within(1000, 0.01),
    "node_netstat_Udp_OutDatagrams": within(1000, 0.01),
    "node_netstat_Udp_NoPorts": within(100),
    "node_netstat_Udp6_InDatagrams": within(1000, 0.01),
    "node_netstat_Icmp_InMsgs": within(100),
    "node_netstat_Icmp6_OutMsgs": within(100),
    "node_udp_queues": within(4 * MiB),
    "node_softnet_processed": within(20_000, 0.01),
    "node_softnet_dropped": within(100),
    "node_softnet_times_squeezed": within(100),
    "node_arp_entries": within(5),
    "node_nf_conntrack_entries": within(500),
    "node_nf_conntrack_entries_limit": exact,
    "node_nf_conntrack_stat_found": within(1000, 0.01),
    "node_nf_conntrack_stat_insert": within(1000, 0.01),
    "node_nf_conntrack_stat_drop": within(100),
    # os, selinux, time, textfile
    "node_os_info": exact,
    "node_os_version": exact,
    "node_selinux_enabled": exact,
    "node_time_zone_offset_seconds": exact,
    "node_time_clocksource_available_info": exact,
    "node_time_clocksource_current_info": exact,
    "node_textfile_scrape_error": exact,
    "process_virtual_memory_max_bytes": exact,
}


def families(url: str) -> dict:
    text = requests.get(url, timeout=10).text
    return {f.name: f for f in text_string_to_metric_families(text)}


@pytest.fixture(scope="module")
def scrapes(node_exporter, tmp_path_factory):
    with services.exporter(tmp_path_factory.mktemp("ours"), "--no-gpu", "--no-processes") as ours:
        yield families(ours.url), families(node_exporter)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_family_matches_node_exporter(scrapes, name):
    ours, ref = scrapes
    if name not in ref:
        # node_exporter lacks it on this kernel (e.g. no PSI): so must we.
        assert name not in ours, f"{name}: we export it, node_exporter does not"
        return
    assert name in ours, f"{name} missing from our exporter"
    fo, fr = ours[name], ref[name]
    assert fo.type == fr.type, f"{name}: type {fo.type}, node_exporter {fr.type}"
    assert {s.name for s in fo.samples} == {s.name for s in fr.samples}
    label_names = {frozenset(s.labels) for s in fo.samples}
    assert label_names == {frozenset(s.labels) for s in fr.samples}, f"{name}: label names differ"
    ours_by_labels = {(s.name, tuple(sorted(s.labels.items()))): s.value for s in fo.samples}
    ref_by_labels = {(s.name, tuple(sorted(s.labels.items()))): s.value for s in fr.samples}
    assert ours_by_labels.keys() == ref_by_labels.keys(), (
        f"{name}: series differ: ours only {ours_by_labels.keys() - ref_by_labels.keys()}, "
        f"node_exporter only {ref_by_labels.keys() - ours_by_labels.keys()}"
    )
    close = FAMILIES[name]
    far = {k: (ours_by_labels[k], v) for k, v in ref_by_labels.items() if not close(ours_by_labels[k], v)}
    assert not far, f"{name}: values differ beyond tolerance (ours, node_exporter): {far}"


def test_every_node_family_we_export_has_node_exporters_type(scrapes):
    ours, ref = scrapes
    for name, family in ours.items():
        if name.startswith("node_"):
            assert name in ref, f"{name} is not a node_exporter family"
            assert family.type == ref[name].type, name
