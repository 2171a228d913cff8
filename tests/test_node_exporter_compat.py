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
