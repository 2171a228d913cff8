"""Host collector on a fake /proc tree: meminfo, mounts, sockstat, pressure, hung mounts."""

from __future__ import annotations

import os
import threading
import time

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from exporter import host
from exporter.host import HostCollector, parse_meminfo, parse_mounts
from fleetwatch.testing.waits import wait_until

MEMINFO = """MemTotal:       24683656 kB
MemAvailable:   24362936 kB
Active(anon):       1512 kB
HugePages_Total:       0
Hugepagesize:       2048 kB
"""
SOCKSTAT = """sockets: used 8
TCP: inuse 3 orphan 0 tw 2 alloc 4 mem 243
UDP: inuse 1 mem 2
"""
PRESSURE_IO = """some avg10=0.00 avg60=0.00 avg300=0.00 total=3057645
full avg10=0.00 avg60=0.00 avg300=0.00 total=2918378
"""


def fake_proc(tmp_path, mounts: str):
    (tmp_path / "1").mkdir()
    (tmp_path / "1" / "mounts").write_text(mounts)
    (tmp_path / "meminfo").write_text(MEMINFO)
    (tmp_path / "net").mkdir()
    (tmp_path / "net" / "sockstat").write_text(SOCKSTAT)
    (tmp_path / "pressure").mkdir()
    (tmp_path / "pressure" / "io").write_text(PRESSURE_IO)  # no cpu/memory files: those families are absent
    return tmp_path


def scrape(collector) -> dict:
    registry = CollectorRegistry()
    registry.register(collector)
    text = generate_latest(registry).decode()
    return {s.name: s for f in text_string_to_metric_families(text) for s in f.samples if not s.labels} | {
        "_text": text
    }


def test_meminfo_keys_as_node_exporter_names_them():
    assert list(parse_meminfo(MEMINFO)) == [
        ("MemTotal", 24683656, "kB"),
        ("MemAvailable", 24362936, "kB"),
        ("Active_anon", 1512, "kB"),
        ("HugePages_Total", 0, ""),
        ("Hugepagesize", 2048, "kB"),
    ]


def test_mount_paths_with_blanks_are_unescaped():
    assert list(parse_mounts("/dev/sdb1 /data\\040set ext4 rw,relatime 0 0\n")) == [
        ("/dev/sdb1", "/data set", "ext4", "rw,relatime")
    ]


def test_files_from_proc(tmp_path):
    root = fake_proc(tmp_path, f"/dev/root {tmp_path} ext4 ro,relatime 0 0\nproc /proc proc rw 0 0\n")
    got = scrape(HostCollector(proc_root=str(root)))
    assert got["node_memory_MemTotal_bytes"].value == 24683656 * 1024
    assert got["node_memory_Active_anon_bytes"].value == 1512 * 1024
    assert got["node_memory_HugePages_Total"].value == 0
    assert got["node_sockstat_TCP_inuse"].value == 3
    assert got["node_sockstat_TCP_mem_bytes"].value == 243 * os.sysconf("SC_PAGE_SIZE")
    assert got["node_sockstat_sockets_used"].value == 8
    assert got["node_pressure_io_stalled_seconds_total"].value == 2.918378
    assert "node_pressure_cpu_waiting_seconds_total" not in got
    text = got["_text"]
    # The tmp filesystem is reported read-only as the mount options say; /proc is excluded by type.
    assert f'node_filesystem_readonly{{device="/dev/root",fstype="ext4",mountpoint="{tmp_path}"}} 1.0' in text
    assert 'mountpoint="/proc"' not in text


def test_a_hung_mount_is_skipped_not_waited_for(tmp_path, monkeypatch):
    root = fake_proc(tmp_path, "nfs:/export /hung nfs rw 0 0\n/dev/root / ext4 rw 0 0\n")
    release = threading.Event()
    real_statvfs = os.statvfs

    def statvfs(path):
        if path == "/hung":
            release.wait(10)
            return real_statvfs("/")
        return real_statvfs(path)

    monkeypatch.setattr(host.os, "statvfs", statvfs)
    monkeypatch.setattr(host, "STATFS_TIMEOUT_S", 0.2)
    collector = HostCollector(proc_root=str(root))
    t0 = time.monotonic()
    first = scrape(collector)["_text"]
    second = scrape(collector)["_text"]  # still hung: skipped at once
    elapsed = time.monotonic() - t0
    release.set()
    assert elapsed < 1.0
    for text in (first, second):
        assert 'node_filesystem_device_error{device="nfs:/export",fstype="nfs",mountpoint="/hung"} 1.0' in text
        assert 'node_filesystem_size_bytes{device="/dev/root",fstype="ext4",mountpoint="/"}' in text
    recovered = 'node_filesystem_device_error{device="nfs:/export",fstype="nfs",mountpoint="/hung"} 0.0'
    wait_until(lambda: recovered in scrape(collector)["_text"], 5, "the mount answering again", 0.02)
