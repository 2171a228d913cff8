"""Benchmark the Slurm collectors: fleetwatch-exporter with 1,000 jobs beside the same exporter without them.

Ours runs ``--jobs`` on a fake cgroup v1 tree of --jobs-count jobs (as slurmd lays them out on Debian)
and ``--slurm`` on a ``sinfo``/``squeue`` pair that prints the JSON Slurm 22.05 prints for that many
jobs on --nodes nodes; the reference is the bare exporter (``--no-jobs``, no ``--slurm``) on the same
machine. Both are measured as bench/exporter_scrape.py measures (scrape latency over one kept-alive
connection, RSS, CPU at a 5 s scrape interval), and the cost of one background read of the job
cgroups and of one Slurm answer is timed in-process. Run it from the repository root:

    .venv/bin/python bench/slurm.py --duration 30
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from exporter_scrape import Exporter, measure_latency, measure_steady, percentile  # bench/ is on sys.path

from exporter.cgroups import JobCgroups
from exporter.jobs import JobCollector
from exporter.slurm import cluster_families
from exporter.slurm_state import parse
from fleetwatch.testing.cgroups import MiB, fake_proc, v1_job
from fleetwatch.testing.waits import free_port

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "slurm"
P95_LIMIT_MS, RSS_LIMIT_MB = 50.0, 60.0


def fake_tree(root: Path, jobs: int) -> None:
    """``jobs`` running jobs of 1-8 CPUs spread over 50 users, as cgroup v1 files."""
    for i in range(jobs):
        cpus = 1 + i % 8
        v1_job(root, 100_000 + i, 1000 + i % 50, usage_ns=i * 3_000_000_000, cpus=f"0-{cpus - 1}",
               rss=(64 + i % 512) * MiB, cache=8 * MiB, limit=cpus * 4096 * MiB)  # fmt: skip


def fake_slurm(folder: Path, jobs: int, nodes: int) -> None:
    """``sinfo`` and ``squeue`` commands printing Slurm 22.05's JSON for ``nodes`` nodes and ``jobs`` jobs."""
    node = json.loads((FIXTURES / "sinfo-allocated.json").read_text())["nodes"][0]
    queue = json.loads((FIXTURES / "squeue-running-pending.json").read_text())
    running, pending = queue["jobs"][0], queue["jobs"][2]
    named = [{**node, "name": f"n{i:04d}", "hostname": f"n{i:04d}"} for i in range(nodes)]
    sinfo = {"meta": {}, "errors": [], "nodes": named}
    squeue = {
        "meta": {},
        "errors": [],
        "jobs": [
            {**(running if i % 4 else pending), "job_id": 100_000 + i, "name": f"job-{i}", "user_name": f"user{i % 50}",
             "nodes": f"n{i % nodes:04d}" if i % 4 else ""}
            for i in range(jobs)
        ],
    }  # fmt: skip
    for name, body in (("sinfo", sinfo), ("squeue", squeue)):
        (folder / f"{name}.json").write_text(json.dumps(body))
        (folder / name).write_text(f"#!/bin/sh\nexec cat {folder}/{name}.json\n")
        (folder / name).chmod(0o755)


def timed(fn, runs: int = 20) -> tuple[float, float]:
    """p50 and p95 milliseconds of ``fn()``."""
    times = []
    for _ in range(runs):
        began = time.perf_counter()
        fn()
        times.append((time.perf_counter() - began) * 1000)
    return percentile(times, 50), percentile(times, 95)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jobs-count", type=int, default=1000)
    p.add_argument("--nodes", type=int, default=100)
    p.add_argument("--scrapes", type=int, default=200)
    p.add_argument("--duration", type=float, default=30.0)
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fleetwatch-bench-slurm-"))
    try:
        fake_tree(work / "cgroup", args.jobs_count)
        proc = fake_proc(work / "proc")
        (work / "bin").mkdir()
        fake_slurm(work / "bin", args.jobs_count, args.nodes)

        cgroups = JobCgroups(work / "cgroup", proc)
        read_ms = timed(cgroups.read)
        collector = JobCollector(cgroups, proc_root=proc)
        sample_ms = timed(collector._read)
        sinfo = json.loads((work / "bin" / "sinfo.json").read_text())["nodes"]
        squeue = json.loads((work / "bin" / "squeue.json").read_text())["jobs"]
        slurm_ms = timed(lambda: cluster_families(parse(sinfo, squeue), 2000))

        base = [sys.executable, "-m", "exporter.cli", "--no-gpu"]
        ours = Exporter("fleetwatch --jobs --slurm", [], free_port())
        ours.argv = [*base, f"--listen=127.0.0.1:{ours.port}", "--jobs", f"--cgroup-root={work / 'cgroup'}",
                     "--slurm", "--slurm-interval=5"]  # fmt: skip
        bare = Exporter("fleetwatch (bare)", [], free_port())
        bare.argv = [*base, f"--listen=127.0.0.1:{bare.port}", "--no-jobs", "--no-slurm"]
        os.environ["PATH"] = f"{work / 'bin'}:{os.environ['PATH']}"  # the children's sinfo and squeue
        exporters = [ours, bare]
        try:
            for e in exporters:
                e.start()
            time.sleep(2)  # the first background reads are done
            for e in exporters:
                measure_latency(e, args.scrapes)
            measure_steady(exporters, args.duration)
        finally:
            for e in exporters:
                e.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"{args.jobs_count} jobs (fake cgroup v1 tree), {args.nodes} nodes; background work, in-process:")
    print(f"  read every job cgroup            p50 {read_ms[0]:7.1f} ms   p95 {read_ms[1]:7.1f} ms")
    print(f"  + build the job families         p50 {sample_ms[0]:7.1f} ms   p95 {sample_ms[1]:7.1f} ms")
    print(f"  Slurm JSON -> cluster families   p50 {slurm_ms[0]:7.1f} ms   p95 {slurm_ms[1]:7.1f} ms\n")
    rows = ["startup_s", "scrape_p50_ms", "scrape_p95_ms", "scrape_p99_ms", "body_bytes", "samples"]
    rows += ["cpu_pct", "rss_mb", "max_rss_mb"]
    print(f"{'metric':<14} | {ours.name:>26} | {bare.name:>18} | {'ratio':>6}")
    print(f"{'-' * 14}-+-{'-' * 26}-+-{'-' * 18}-+-{'-' * 6}")
    for row in rows:
        a, b = ours.figures[row], bare.figures[row]
        print(f"{row:<14} | {a:>26} | {b:>18} | {a / b if b else 0:>6.2f}")
    p95, rss = ours.figures["scrape_p95_ms"], ours.figures["max_rss_mb"]
    print()
    print(f"{'PASS' if p95 <= P95_LIMIT_MS else 'FAIL'}  scrape p95 <= {P95_LIMIT_MS:.0f} ms (got {p95})")
    print(f"{'PASS' if rss <= RSS_LIMIT_MB else 'FAIL'}  exporter RSS <= {RSS_LIMIT_MB:.0f} MB (max got {rss})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
