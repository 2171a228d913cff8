"""Gateway query latency beside direct Prometheus, in one run.

Writes synthetic history for N hosts (default 500) into a fresh Prometheus with
``promtool tsdb create-blocks-from openmetrics``, starts it and the gateway
(gunicorn, 2 workers, rate limits lifted), then measures:

1. 1 h of one metric at 5 s (720 points): gateway vs the same query_range direct,
   request by request in turn;
2. the host list of all N hosts with status and summary;
3. C concurrent clients (default 100) for D seconds on a mix of 1 h queries and
   host-list pages of 50.

1 and 2 run with the query cache off, so every request reaches Prometheus;
3 runs the gateway as shipped (instant queries cached for 2 s, REQ-API-005).

    .venv/bin/python bench/query.py [--hosts 500] [--clients 100] [--duration 60]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

from fleetwatch.testing import services
from fleetwatch.testing.api import api_session
from fleetwatch.testing.waits import wait_until
from rules_compiler.recording import HOST_SUMMARY, JUDGED

STEP_S = 5
SUMMARY_SERIES = {
    "fleet:cpu_utilization": "",
    "fleet:mem_used_pct": "",
    "fleet:disk_used_pct": ',mountpoint="/"',
    "fleet:net_tx_mbps": ',device="eth0"',
}


def host_id(i: int) -> str:
    return f"bench-{i:04d}"


AHEAD_S = 600  # samples reach 10 min past "now": queries and rule evaluations then see a live-looking fleet


def write_history(path: Path, hosts: int, now: float) -> int:
    """OpenMetrics text, up to now + 10 min: 65 min of cpu for host 0, 3 min of the catalog and summary series
    and 16 min of up for all hosts.

    Queries at "now" ignore later samples; they are there so that the gateway
    sees fresh data for the whole run, as with scraping.
    """
    samples = 0
    with open(path, "w") as f:
        for series, labels in SUMMARY_SERIES.items():
            f.write(f"# TYPE {series} gauge\n")
            for i in range(hosts):
                minutes = 65 if (i == 0 and series == "fleet:cpu_utilization") else 3
                for k in range(minutes * 60 // STEP_S, -AHEAD_S // STEP_S, -1):
                    ts = now - k * STEP_S
                    value = 40 + 30 * ((i * 7 + k) % 13) / 13
                    f.write(f'{series}{{host_id="{host_id(i)}"{labels}}} {value:.2f} {ts:.0f}\n')
                    samples += 1
        # What the stack's summary rules record (rules_compiler/recording.py) for hosts without GPUs.
        for series, fields in (
            ("fleet:host_summary", [f for f in HOST_SUMMARY if f != "gpu_pct"]),
            ("fleet:host_summary_held", JUDGED),
        ):
            f.write(f"# TYPE {series} gauge\n")
            for i in range(hosts):
                for field in fields:
                    for k in range(3 * 60 // STEP_S, -AHEAD_S // STEP_S, -1):
                        value = 40 + 30 * ((i * 7 + k) % 13) / 13
                        ts = now - k * STEP_S
                        f.write(f'{series}{{host_id="{host_id(i)}",summary="{field}"}} {value:.2f} {ts:.0f}\n')
                        samples += 1
        f.write("# TYPE up gauge\n")
        for i in range(hosts):
            for k in range(16 * 4, -AHEAD_S // 15, -1):
                f.write(f'up{{job="fleetwatch",host_id="{host_id(i)}"}} 1 {now - k * 15:.0f}\n')
                samples += 1
        f.write("# EOF\n")
    return samples


def timed(session: requests.Session, url: str, n: int, **kw) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        r = session.get(url, timeout=30, **kw)
        out.append((time.perf_counter() - t0) * 1000)
        r.raise_for_status()
    return out


def side_by_side(session: requests.Session, *requests_: tuple[str, dict | None], n: int) -> list[list[float]]:
    """Latencies (ms) of each (url, params), taking turns request by request.

    Taking turns, both figures see the same moments of a machine whose speed
    drifts: measured one after the other, a slow minute landed on one side
    only and moved the ratio by more than the gateway's own cost.
    """
    out: list[list[float]] = [[] for _ in requests_]
    for _ in range(n):
        for (url, params), latencies in zip(requests_, out, strict=True):
            latencies.extend(timed(session, url, 1, params=params))
    return out


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] if len(values) > 1 else values[0]


def load(url: str, headers: dict, clients: int, duration_s: float, hosts: int) -> dict:
    """``clients`` threads, each with its own connection, on a mix of metric queries and host-list pages."""
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    stop = time.monotonic() + duration_s

    def client(n: int) -> None:
        s = requests.Session()
        i = n
        while time.monotonic() < stop:
            if i % 2:
                target = f"{url}/api/v1/metrics/query?host_id={host_id(i % hosts)}&metric=cpu.utilization&range=1h"
            else:
                target = f"{url}/api/v1/hosts?limit=50&offset={(i * 50) % hosts}"
            t0 = time.perf_counter()
            try:
                r = s.get(target, headers=headers, timeout=30)
                ok = r.status_code == 200
                why = f"{r.status_code}"
            except requests.RequestException as exc:
                ok, why = False, type(exc).__name__
            with lock:
                latencies.append((time.perf_counter() - t0) * 1000)
                if not ok:
                    errors.append(why)
            i += 1

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {
        "requests": len(latencies),
        "errors": len(errors),
        "error_kinds": sorted(set(errors)),
        "rps": round(len(latencies) / duration_s, 1),
        "p50_ms": round(pct(latencies, 50), 1),
        "p95_ms": round(pct(latencies, 95), 1),
        "p99_ms": round(pct(latencies, 99), 1),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hosts", type=int, default=500)
    p.add_argument("--clients", type=int, default=100)
    p.add_argument("--duration", type=float, default=60)
    p.add_argument("--repeat", type=int, default=400, help="sequential requests per latency figure")
    p.add_argument("--json", type=Path)
    args = p.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="fleetwatch-bench-query-"))
    now = time.time()
    samples = write_history(tmp / "history.om", args.hosts, now)
    subprocess.run(
        ["promtool", "tsdb", "create-blocks-from", "openmetrics", str(tmp / "history.om"), str(tmp / "data")],
        check=True,
        capture_output=True,
    )
    procs = []
    try:
        prom = services.prometheus(tmp / "data")
        procs.append(prom.up())
        prom_url = prom.url

        def gateway(name: str, cache_ttl_s: str) -> tuple[str, dict]:
            """A gateway on its own state dir, with the N hosts, logged in; rate limits lifted."""
            proc = services.gateway(
                tmp / name,
                prom_url,
                args=(),
                env={
                    "FLEETWATCH_RATE_LIMIT_READS_PER_MIN": "100000000",
                    "FLEETWATCH_RATE_LIMIT_WRITES_PER_MIN": "100000000",
                    "FLEETWATCH_QUERY_CACHE_TTL_S": cache_ttl_s,
                },
            )
            procs.append(proc.up())
            url = proc.url
            with api_session(url) as admin:
                for i in range(args.hosts):
                    admin.post(
                        f"{url}/api/v1/hosts",
                        json={
                            "id": host_id(i),
                            "hostname": f"{host_id(i)}.example.com",
                            "exporter": f"{host_id(i)}.invalid:9101",
                        },
                    ).raise_for_status()
                return url, dict(admin.headers)

        # Latency figures: every request reaches Prometheus. Load: the gateway as shipped (2 s cache).
        gw_url, headers = gateway("uncached", "0")
        shipped_url, shipped_headers = gateway("shipped", "2")
        s = requests.Session()
        s.headers.update(headers)

        query_url = f"{gw_url}/api/v1/metrics/query?host_id=bench-0000&metric=cpu.utilization&range=1h"
        points = len(s.get(query_url).json()["datapoints"])
        direct, via_gateway = side_by_side(
            s,
            (
                f"{prom_url}/api/v1/query_range",
                {
                    "query": 'fleet:cpu_utilization{host_id="bench-0000"}',
                    "start": f"{now - 3600:.0f}",
                    "end": f"{now:.0f}",
                    "step": STEP_S,
                },
            ),
            (query_url, None),
            n=args.repeat,
        )

        def summarised() -> dict | None:
            listing = s.get(f"{gw_url}/api/v1/hosts?limit={args.hosts}").json()
            return listing if all(h["metrics_summary"]["cpu_pct"] is not None for h in listing["hosts"]) else None

        listing = wait_until(summarised, 60, "the first evaluations of the summary rules", 1.0)
        assert len(listing["hosts"]) == args.hosts and listing["hosts"][-1]["metrics_summary"]["cpu_pct"] is not None
        host_list = timed(s, f"{gw_url}/api/v1/hosts?limit={args.hosts}", max(20, args.repeat // 4))
        concurrent = load(shipped_url, shipped_headers, args.clients, args.duration, args.hosts)
    finally:
        for proc in reversed(procs):
            proc.stop(20)

    figures = {
        "hosts": args.hosts,
        "synthetic_samples": samples,
        "points_in_1h": points,
        "query_1h_direct": {"p50_ms": round(pct(direct, 50), 1), "p95_ms": round(pct(direct, 95), 1)},
        "query_1h_gateway": {"p50_ms": round(pct(via_gateway, 50), 1), "p95_ms": round(pct(via_gateway, 95), 1)},
        "host_list": {"p50_ms": round(pct(host_list, 50), 1), "p95_ms": round(pct(host_list, 95), 1)},
        "concurrent": {"clients": args.clients, "duration_s": args.duration, **concurrent},
    }
    ratio = figures["query_1h_gateway"]["p95_ms"] / figures["query_1h_direct"]["p95_ms"]
    print(f"synthetic history: {samples} samples for {args.hosts} hosts; 1 h query answers {points} points")
    print(f"{'figure':<34}{'gateway':>12}{'direct':>12}{'ratio':>8}")
    print(
        f"{'1h of one metric p50 (ms)':<34}{figures['query_1h_gateway']['p50_ms']:>12}"
        f"{figures['query_1h_direct']['p50_ms']:>12}"
    )
    print(
        f"{'1h of one metric p95 (ms)':<34}{figures['query_1h_gateway']['p95_ms']:>12}"
        f"{figures['query_1h_direct']['p95_ms']:>12}{ratio:>8.2f}"
    )
    print(
        f"{f'host list of {args.hosts} p50 / p95 (ms)':<34}{figures['host_list']['p50_ms']:>6} / "
        f"{figures['host_list']['p95_ms']}"
    )
    c = figures["concurrent"]
    print(
        f"{args.clients} clients for {args.duration:.0f} s: {c['requests']} requests ({c['rps']}/s), "
        f"{c['errors']} errors {c['error_kinds'] or ''}, p50 {c['p50_ms']} ms, p95 {c['p95_ms']} ms, "
        f"p99 {c['p99_ms']} ms"
    )
    checks = {
        "1h query p95 <= 2x direct": ratio <= 2.0,
        f"host list of {args.hosts} p95 <= 100 ms": figures["host_list"]["p95_ms"] <= 100,
        f"{args.clients} clients: 0 errors": c["errors"] == 0,
        f"{args.clients} clients: p95 < 500 ms": c["p95_ms"] < 500,
    }
    for name, ok in checks.items():
        print(f"{'PASS' if ok else 'FAIL'}  {name}")
    if args.json:
        args.json.write_text(json.dumps({**figures, "checks": checks}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
