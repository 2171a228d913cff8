"""Benchmark fleetwatch-exporter against node_exporter, side by side on loopback.

Both exporters are started on free 127.0.0.1 ports and measured in one run:

1. scrape latency p50/p95/p99 of GET /metrics (gzip and the Accept header Prometheus sends, over one
   http.client connection, kept alive where the server allows it; 10 warm-up scrapes, then --scrapes
   back-to-back, the two exporters taking turns), body size (uncompressed and on the wire) and number
   of sample lines;
2. steady state: for --duration seconds both are scraped every 5 s, interleaved, as Prometheus would;
   CPU is the process's utime+stime delta (all threads) as a percentage of one core, RSS is taken at
   the end and its maximum sampled once a second.

It prints a table with fleetwatch/node_exporter ratios and PASS/FAIL against the targets, and exits 0
whatever the verdict (1 only if an exporter does not start). Run it from the repository root:

    .venv/bin/python bench/exporter.py --duration 60
"""

from __future__ import annotations

import argparse
import gzip
import http.client
import json
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import psutil

from fleetwatch.testing.waits import free_port

NODE_EXPORTER = "/usr/bin/prometheus-node-exporter"
ACCEPT = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
HEADERS = {"Accept": ACCEPT, "Accept-Encoding": "gzip"}
WARMUP, INTERVAL_S, READY_TIMEOUT_S = 10, 5.0, 15.0
RSS_LIMIT_MB, CPU_LIMIT_PCT = 40.0, 0.5


@dataclass
class Exporter:
    """One running exporter: its process, persistent HTTP connection and figures."""

    name: str
    argv: list[str]
    port: int
    proc: subprocess.Popen | None = None
    log: IO[bytes] | None = None
    conn: http.client.HTTPConnection | None = None
    figures: dict[str, float | int | str] = field(default_factory=dict)
    max_rss: int = 0

    def start(self) -> None:
        """Start the process and wait until /metrics answers; raise RuntimeError if it does not."""
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(self.argv, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        began = time.perf_counter()
        while time.perf_counter() - began < READY_TIMEOUT_S:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                self.scrape()
                self.figures["startup_s"] = round(time.perf_counter() - began, 3)
                return
            except (OSError, http.client.HTTPException):
                self.conn = None
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not answer within {READY_TIMEOUT_S:.0f} s:\n{self.log_tail()}")

    def log_tail(self, limit: int = 2000) -> str:
        """The last characters the process wrote to stdout/stderr."""
        if self.log is None:
            return ""
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-limit:]

    def stop(self) -> None:
        """Terminate the process (kill it if it lingers) and close the connection."""
        if self.conn is not None:
            self.conn.close()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.log is not None:
            self.log.close()

    def scrape(self) -> tuple[float, bytes, bytes, str]:
        """One scrape: seconds taken, wire body, uncompressed body, Content-Type."""
        if self.conn is None:
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        began = time.perf_counter()
        self.conn.request("GET", "/metrics", headers=HEADERS)
        response = self.conn.getresponse()
        wire = response.read()
        elapsed = time.perf_counter() - began
        self.figures["keep_alive"] = "no" if response.will_close else "yes"
        if response.status != 200:
            raise http.client.HTTPException(f"{self.name}: /metrics answered {response.status}")
        body = gzip.decompress(wire) if response.getheader("Content-Encoding") == "gzip" else wire
        return elapsed, wire, body, response.getheader("Content-Type", "")

    def processes(self) -> list[psutil.Process]:
        """The exporter's process and any children it runs."""
        assert self.proc is not None
        main = psutil.Process(self.proc.pid)
        return [main, *main.children(recursive=True)]

    def cpu_seconds(self) -> float:
        """User plus system CPU seconds used so far, all threads and children."""
        return sum(t.user + t.system for t in (p.cpu_times() for p in self.processes()))

    def rss(self) -> int:
        """Resident set size in bytes, children included; also tracks the maximum."""
        value = sum(p.memory_info().rss for p in self.processes())
        self.max_rss = max(self.max_rss, value)
        return value


def percentile(values: list[float], pct: float) -> float:
    """Percentile by linear interpolation between closest ranks."""
    ordered = sorted(values)
    rank = (len(ordered) - 1) * pct / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def measure_latency(exporters: list[Exporter], scrapes: int) -> None:
    """Warm up, then time back-to-back scrapes, one of each exporter in turn; record size and sample count.

    Taking turns, rather than all of one exporter's scrapes then the other's,
    has both see the same load on a machine shared with other work.
    """
    for _ in range(WARMUP):
        for exporter in exporters:
            exporter.scrape()
    timings: dict[str, list[float]] = {e.name: [] for e in exporters}
    last: dict[str, tuple[bytes, bytes, str]] = {}
    for _ in range(scrapes):
        for exporter in exporters:
            elapsed, wire, body, content_type = exporter.scrape()
            timings[exporter.name].append(elapsed * 1000)
            last[exporter.name] = wire, body, content_type
    for exporter in exporters:
        wire, body, content_type = last[exporter.name]
        samples = sum(1 for line in body.decode().splitlines() if line and not line.startswith("#"))
        exporter.figures.update(
            {f"scrape_p{p}_ms": round(percentile(timings[exporter.name], p), 3) for p in (50, 95, 99)},
            scrape_mean_ms=round(statistics.fmean(timings[exporter.name]), 3),
            body_bytes=len(body),
            wire_bytes=len(wire),
            samples=samples,
            content_type=content_type,
        )


def measure_steady(exporters: list[Exporter], duration: float) -> None:
    """Scrape every exporter every 5 s for `duration` seconds; record CPU % of one core and RSS."""
    cpu_start = [e.cpu_seconds() for e in exporters]
    began = time.perf_counter()
    next_scrape = began
    while (now := time.perf_counter()) < began + duration:
        if now >= next_scrape:
            for exporter in exporters:
                exporter.scrape()
            next_scrape += INTERVAL_S
        for exporter in exporters:
            exporter.rss()
        time.sleep(max(0.0, min(1.0, next_scrape - time.perf_counter(), began + duration - time.perf_counter())))
    window = time.perf_counter() - began
    for exporter, start in zip(exporters, cpu_start, strict=True):
        used = exporter.cpu_seconds() - start
        exporter.figures.update(
            cpu_pct=round(100 * used / window, 3),
            rss_mb=round(exporter.rss() / 2**20, 2),
            max_rss_mb=round(exporter.max_rss / 2**20, 2),
        )


def report(fw: Exporter, ne: Exporter) -> dict[str, bool]:
    """Print the comparison table and the PASS/FAIL verdicts; return the verdicts."""
    rows = ["startup_s", "scrape_p50_ms", "scrape_p95_ms", "scrape_p99_ms", "scrape_mean_ms", "body_bytes"]
    rows += ["wire_bytes", "samples", "cpu_pct", "rss_mb", "max_rss_mb"]
    print(f"{'metric':<16} | {'fleetwatch':>12} | {'node_exporter':>13} | {'ratio':>7}")
    print(f"{'-' * 16}-+-{'-' * 12}-+-{'-' * 13}-+-{'-' * 7}")
    for row in rows:
        a, b = fw.figures[row], ne.figures[row]
        ratio = f"{a / b:.2f}" if b else "-"
        print(f"{row:<16} | {a:>12} | {b:>13} | {ratio:>7}")
    p50 = fw.figures["scrape_p50_ms"] / ne.figures["scrape_p50_ms"]
    rss, cpu = fw.figures["rss_mb"], fw.figures["cpu_pct"]
    checks = {
        f"scrape p50 ratio <= 1.0 (got {p50:.2f})": p50 <= 1.0,
        f"fleetwatch RSS <= {RSS_LIMIT_MB:.0f} MB (got {rss})": rss <= RSS_LIMIT_MB,
        f"fleetwatch CPU <= {CPU_LIMIT_PCT} % of one core at 5 s (got {cpu})": cpu <= CPU_LIMIT_PCT,
    }
    print(f"\nHTTP keep-alive: fleetwatch {fw.figures['keep_alive']}, node_exporter {ne.figures['keep_alive']}")
    for name, ok in checks.items():
        print(f"{'PASS' if ok else 'FAIL'}  {name}")
    return checks


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 0 once measured, 1 if an exporter fails to start."""
    p = argparse.ArgumentParser(description="Compare fleetwatch-exporter with node_exporter.")
    p.add_argument("--duration", type=float, default=60.0, help="steady-state window in seconds (default 60)")
    p.add_argument("--scrapes", type=int, default=200, help="timed back-to-back scrapes (default 200)")
    p.add_argument("--exporter-args", default="", help='extra fleetwatch-exporter arguments, e.g. "--no-gpu"')
    p.add_argument("--fleetwatch-cmd", default=str(Path(sys.executable).with_name("fleetwatch-exporter")))
    p.add_argument("--json", type=Path, metavar="PATH", help="also write the figures here as JSON")
    args = p.parse_args(argv)

    fw_port, ne_port = free_port(), free_port()
    fw_argv = [*shlex.split(args.fleetwatch_cmd), "--listen", f"127.0.0.1:{fw_port}", *shlex.split(args.exporter_args)]
    fw = Exporter("fleetwatch", fw_argv, fw_port)
    ne = Exporter("node_exporter", [NODE_EXPORTER, f"--web.listen-address=127.0.0.1:{ne_port}"], ne_port)
    try:
        try:
            fw.start()
            ne.start()
        except (RuntimeError, OSError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(f"fleetwatch: {shlex.join(fw_argv)}\nnode_exporter: {shlex.join(ne.argv)}", file=sys.stderr)
        measure_latency([fw, ne], args.scrapes)
        print(f"latency done; steady state for {args.duration:.0f} s at {INTERVAL_S:.0f} s...", file=sys.stderr)
        measure_steady([fw, ne], args.duration)
        checks = report(fw, ne)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        fw.stop()
        ne.stop()
    if args.json:
        settings = {"duration_s": args.duration, "scrapes": args.scrapes, "fleetwatch_argv": fw_argv}
        result = {"settings": settings, "fleetwatch": fw.figures, "node_exporter": ne.figures, "checks": checks}
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
