"""Top-N processes: ranking, Slurm job ids, bounded series, real busy processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from exporter.processes import GpuProcess, ProcessScanner, TopProcessCollector, parse_stat

PAGE = os.sysconf("SC_PAGE_SIZE")
HZ = os.sysconf("SC_CLK_TCK")


def stat_line(pid: int, name: str, utime: int, stime: int, rss_pages: int) -> str:
    # proc(5): pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt
    #          utime stime cutime cstime priority nice threads itrealvalue starttime vsize rss ...
    return (
        f"{pid} ({name}) R 1 1 1 0 -1 0 0 0 0 0 {utime} {stime} 0 0 20 0 1 0 100 1000 {rss_pages} "
        + " ".join(["0"] * 25)
        + "\n"
    )


def make_proc(root, procs: dict[int, tuple[str, int, int, str]]):
    """A fake /proc: pid -> (comm, cpu ticks, rss pages, cgroup text)."""
    for pid, (name, ticks, rss, cgroup) in procs.items():
        d = root / str(pid)
        d.mkdir(exist_ok=True)
        (d / "stat").write_text(stat_line(pid, name, ticks, 0, rss))
        (d / "cgroup").write_text(cgroup)
        (d / "cmdline").write_bytes(f"/usr/bin/{name}\0--flag\0".encode())
    return root


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_parse_stat_handles_names_with_spaces_and_parens():
    s = parse_stat(stat_line(42, "evil) (name", 7, 0, 3), PAGE)
    assert (s.pid, s.name, s.cpu_ticks, s.rss_bytes) == (42, "evil) (name", 7, 3 * PAGE)


def test_ranking_cpu_memory_and_slurm_job(tmp_path):
    v1 = "6:freezer:/slurm_vm/uid_0/job_5/step_batch\n4:memory:/x\n0::/\n"
    v2 = "0::/system.slice/slurmstepd.scope/job_77/step_0/user/task_0\n"
    procs = {
        10: ("trainer", 0, 1000, v1),
        11: ("sim", 0, 10, v2),
        12: ("idle", 0, 5, "0::/\n"),
    }
    clock = FakeClock()
    scanner = ProcessScanner(2, proc_root=str(make_proc(tmp_path, procs)), clock=clock)
    scanner.scan()
    procs[10] = ("trainer", 2 * HZ, 1000, v1)  # 2 s of CPU in 2 s: 100 %
    procs[11] = ("sim", HZ // 2, 10, v2)  # 25 %
    make_proc(tmp_path, procs)
    clock.now += 2
    ranking = scanner.scan()
    assert [(p.pid, p.slurm_job_id, round(p.cpu_percent)) for p in ranking.by_cpu] == [(10, "5", 100), (11, "77", 25)]
    assert [p.pid for p in ranking.by_memory] == [10, 11]  # top 2 only
    assert ranking.by_memory[0].rss_bytes == 1000 * PAGE
    assert ranking.by_memory[0].user  # resolved from the directory's owner


def test_truncated_comm_takes_the_name_from_argv0(tmp_path):
    make_proc(tmp_path, {5: ("fleetwatch-expo", 0, 1, "")})
    (tmp_path / "5" / "cmdline").write_bytes(b"/opt/bin/fleetwatch-exporter\0--listen\0")
    ranking = ProcessScanner(5, proc_root=str(tmp_path)).scan()
    assert ranking.by_memory[0].name == "fleetwatch-exporter"


def test_gpu_memory_ranking_uses_the_gpu_source(tmp_path):
    make_proc(tmp_path, {20: ("python3", 0, 1, "0::/job_9/step_0\n"), 21: ("other", 0, 1, "")})
    gpu = [GpuProcess(20, "0", "GPU-abc", 13_801_357_312), GpuProcess(999, "1", "GPU-def", 5)]  # 999 has exited
    scanner = ProcessScanner(10, proc_root=str(tmp_path), gpu_processes=lambda: gpu)
    collector = TopProcessCollector(scanner)
    collector._sampler.sample_now()
    registry = CollectorRegistry()
    registry.register(collector)
    fams = {f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())}
    (sample,) = fams["fleet_top_process_gpu_memory_bytes"].samples
    assert sample.labels == {
        "pid": "20",
        "name": "python3",
        "user": sample.labels["user"],
        "slurm_job_id": "9",
        "gpu": "0",
        "UUID": "GPU-abc",
    }
    assert sample.value == 13_801_357_312


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def test_a_busy_process_is_ranked_by_its_real_cpu_use_on_the_real_proc():
    # Judged against the process's own counters, not "first place": on a loaded
    # machine (CI neighbours, other test processes) another process may burn more.
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        scanner, capped = ProcessScanner(1000), ProcessScanner(3)
        scanner.scan(), capped.scan()
        before, start = _cpu_seconds(busy.pid), time.monotonic()
        time.sleep(1.0)
        ranking, top3 = scanner.scan(), capped.scan()
        used_pct = 100 * (_cpu_seconds(busy.pid) - before) / (time.monotonic() - start)
    finally:
        busy.kill()
        busy.wait()
    ours = next(p for p in ranking.by_cpu if p.pid == busy.pid)
    assert ours.cpu_percent > 20
    assert ours.cpu_percent == pytest.approx(used_pct, abs=15)
    cpu = [p.cpu_percent for p in ranking.by_cpu]
    assert cpu == sorted(cpu, reverse=True)
    assert len(top3.by_cpu) <= 3 and len(top3.by_memory) == 3
