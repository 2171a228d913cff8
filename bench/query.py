"""Gateway query latency beside direct Prometheus, in one run.

Writes synthetic history for N hosts (default 500) into a fresh Prometheus with
``promtool tsdb create-blocks-from openmetrics``, starts it and the gateway
(gunicorn, 2 workers × 8 threads), then measures:

1. 1 h of one metric at 5 s (720 points): gateway vs the same query_range direct,
   with ONE client (request by request in turn) and with EIGHT (8 threads, each
   with its own connection, each taking turns gateway/direct, half of them
   starting with each side), so both sides see the same moments of the machine;
2. the same with one client on a gateway with the shipped rate limit (60 reads a
   minute): 60 reads in turn with direct ones, then the 61st must be refused;
3. the host list of all N hosts with status and summary;
4. C concurrent clients (default 100) for D seconds on a mix of 1 h queries and
   host-list pages of 50.

What is on, as shipped: every request carries an Admin's bearer token, whose
signature, expiry and login session are checked (the session as the DB had it
at most SESSION_CACHE_S = 5 s ago, the token's expiry every time), its role
checked, and it is counted against the user's rate limit in the shared
counter. In 1, 3 and 4 the limits are raised to 10^8 a minute, so the bench is
not refused: they are counted all the same, in batches of 1 % of the limit
taken from the shared counter (RATE_LIMIT_BATCH_FRACTION), as any limit of 100
or more is; 2 runs the shipped 60 reads a minute, counted exactly, one write a
request. 1-3 run with the query cache off, so every request reaches
Prometheus; 4 runs the gateway as shipped (instant queries cached for 2 s,
REQ-API-005). It also prints the CPU the gateway's workers spend per query
(from /proc, their background threads included: the status watch, the
report scheduler), which the machine's load moves less than latency.

    .venv/bin/python bench/query.py [--hosts 500] [--clients 100] [--duration 60]
        [--py-spy /tmp/gateway.svg]   # profile the gateway's workers during the 8 clients
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

from fleetwatch.testing import services
from fleetwatch.testing.api import api_session
from fleetwatch.testing.figures import pct, print_checks
from fleetwatch.testing.waits import wait_until
from gateway.app import DEFAULTS

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
    """OpenMetrics text, up to now + 10 min: 65 min of cpu for host 0, 3 min of the series the host list's
    summary reads and 16 min of up for all hosts (no fleet:host_summary_held: it is recorded only for hosts
    held above 90 %, and these stay below 70).

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


def side_by_side(headers: dict, *requests_: tuple[str, dict | None], n: int, clients: int = 1) -> list[list[float]]:
    """Latencies (ms) of each (url, params), taking turns request by request, in ``clients`` threads.

    Taking turns, both figures see the same moments of a machine whose speed
    drifts: measured one after the other, a slow minute landed on one side
    only and moved the ratio by more than the gateway's own cost. Each thread
    has its own connection and makes ``n`` rounds; every other thread (and
    round) starts with the other side, so neither side always goes first.
    """
    out: list[list[float]] = [[] for _ in requests_]
    lock = threading.Lock()
    start = threading.Barrier(clients)
    failed: list[BaseException] = []

    def client(k: int) -> None:
        s = requests.Session()
        s.headers.update(headers)
        mine: list[list[float]] = [[] for _ in requests_]
        start.wait()
        try:
            for r in range(n):
                order = list(zip(requests_, mine, strict=True))
                for (url, params), latencies in order if (k + r) % 2 == 0 else reversed(order):
                    latencies.extend(timed(s, url, 1, params=params))
        except BaseException as exc:  # noqa: BLE001 - raised again in the main thread
            failed.append(exc)
        with lock:
            for all_, own in zip(out, mine, strict=True):
                all_.extend(own)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failed:
        raise failed[0]
    return out


@contextlib.contextmanager
def py_spy(pid: int, out: Path | None):
    """Record the gateway's workers (children of ``pid``) with py-spy while the block runs, if asked to."""
    if out is None:
        yield
        return
    spy = subprocess.Popen(
        [str(Path(sys.executable).with_name("py-spy")), "record", "--pid", str(pid), "--subprocesses"]
        + ["--rate", "200", "--output", str(out), "--format", "flamegraph" if out.suffix == ".svg" else "raw"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        yield
    finally:
        spy.send_signal(signal.SIGINT)  # py-spy writes its flame graph on ^C
        _, err = spy.communicate(timeout=60)
        print(f"py-spy: {out} ({err.decode().strip().splitlines()[-1:] or ''})")


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of process ``pid`` and its children (gunicorn's workers), from /proc."""
    pids = [
        pid,
        *(int(p) for p in subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()),
    ]
    ticks = 0
    for p in pids:
        with contextlib.suppress(FileNotFoundError):
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


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


LIFTED = {"FLEETWATCH_RATE_LIMIT_READS_PER_MIN": "100000000", "FLEETWATCH_RATE_LIMIT_WRITES_PER_MIN": "100000000"}
SHIPPED_READS_PER_MIN = DEFAULTS["RATE_LIMIT_READS_PER_MIN"]


def figure(values: list[float]) -> dict:
    return {"p50_ms": round(pct(values, 50), 1), "p95_ms": round(pct(values, 95), 1), "n": len(values)}


def ratio_row(name: str, gateway: dict, direct: dict) -> tuple[str, float]:
    ratio = gateway["p95_ms"] / direct["p95_ms"]
    print(
        f"{name:<44}{gateway['p50_ms']:>6} / {gateway['p95_ms']:<7}{direct['p50_ms']:>6} / {direct['p95_ms']:<7}"
        f"{ratio:>7.2f}"
    )
    return name, ratio


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hosts", type=int, default=500)
    p.add_argument("--clients", type=int, default=100)
    p.add_argument("--duration", type=float, default=60)
    p.add_argument("--repeat", type=int, default=400, help="requests per side for each latency figure")
    p.add_argument(
        "--py-spy",
        type=Path,
        help="record the gateway's workers during the 8 clients: a flame graph (.svg) or collapsed stacks "
        "(other); py-spy pauses them to sample, so the 8-client figures of such a run are not the gateway's",
    )
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

        def gateway(name: str, cache_ttl_s: str, env: dict, hosts: int) -> tuple[services.Server, dict]:
            """A gateway on its own state dir, with ``hosts`` of the N hosts, logged in."""
            proc = services.gateway(
                tmp / name, prom_url, args=(), env={**env, "FLEETWATCH_QUERY_CACHE_TTL_S": cache_ttl_s}
            )
            procs.append(proc.up())
            with api_session(proc.url) as admin:
                for i in range(hosts):
                    admin.post(
                        f"{proc.url}/api/v1/hosts",
                        json={
                            "id": host_id(i),
                            "hostname": f"{host_id(i)}.example.com",
                            "exporter": f"{host_id(i)}.invalid:9101",
                        },
                    ).raise_for_status()
                return proc, dict(admin.headers)

        # Latency figures: every request reaches Prometheus. Load: the gateway as shipped (2 s cache).
        uncached, headers = gateway("uncached", "0", LIFTED, args.hosts)
        gw_url = uncached.url
        shipped, shipped_headers = gateway("shipped", "2", LIFTED, args.hosts)
        # The shipped rate limit: one host is all the 30 writes a minute allow to spare.
        limited, limited_headers = gateway("limited", "0", {}, 1)
        s = requests.Session()
        s.headers.update(headers)

        query = "/api/v1/metrics/query?host_id=bench-0000&metric=cpu.utilization&range=1h"
        points = len(s.get(f"{gw_url}{query}").json()["datapoints"])
        direct_query = (
            f"{prom_url}/api/v1/query_range",
            {
                "query": 'fleet:cpu_utilization{host_id="bench-0000"}',
                "start": f"{now - 3600:.0f}",
                "end": f"{now:.0f}",
                "step": STEP_S,
            },
        )
        cpu0 = cpu_s(uncached.process.pid), cpu_s(prom.process.pid)
        direct_1, gateway_1 = side_by_side(headers, direct_query, (f"{gw_url}{query}", None), n=args.repeat)
        # CPU per request: what the machine's load does not move as much as latency.
        gateway_cpu_ms = (cpu_s(uncached.process.pid) - cpu0[0]) * 1000 / args.repeat
        prometheus_cpu_ms = (cpu_s(prom.process.pid) - cpu0[1]) * 1000 / (2 * args.repeat)
        with py_spy(uncached.process.pid, args.py_spy):
            direct_8, gateway_8 = side_by_side(
                headers, direct_query, (f"{gw_url}{query}", None), n=max(25, args.repeat // 4), clients=8
            )
        direct_l, gateway_l = side_by_side(
            limited_headers, direct_query, (f"{limited.url}{query}", None), n=SHIPPED_READS_PER_MIN
        )
        over = requests.get(f"{limited.url}{query}", headers=limited_headers, timeout=30)
        limited.stop(20)  # its workers' own threads would weigh on the load below

        def summarised() -> dict | None:
            listing = s.get(f"{gw_url}/api/v1/hosts?limit={args.hosts}").json()
            return listing if all(h["metrics_summary"]["cpu_pct"] is not None for h in listing["hosts"]) else None

        listing = wait_until(summarised, 60, "every host summarised", 1.0)
        assert len(listing["hosts"]) == args.hosts and listing["hosts"][-1]["metrics_summary"]["cpu_pct"] is not None
        host_list = timed(s, f"{gw_url}/api/v1/hosts?limit={args.hosts}", max(20, args.repeat // 4))
        concurrent = load(shipped.url, shipped_headers, args.clients, args.duration, args.hosts)
    finally:
        for proc in reversed(procs):
            proc.stop(20)

    figures = {
        "hosts": args.hosts,
        "synthetic_samples": samples,
        "points_in_1h": points,
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "query_1h_direct": figure(direct_1),
        "query_1h_gateway": figure(gateway_1),
        "query_1h_cpu_ms": {"gateway_workers": round(gateway_cpu_ms, 2), "prometheus": round(prometheus_cpu_ms, 2)},
        "query_1h_8_clients_direct": figure(direct_8),
        "query_1h_8_clients_gateway": figure(gateway_8),
        "query_1h_shipped_limit_direct": figure(direct_l),
        "query_1h_shipped_limit_gateway": figure(gateway_l),
        "shipped_limit_61st_read": over.status_code,
        "host_list": figure(host_list),
        "concurrent": {"clients": args.clients, "duration_s": args.duration, **concurrent},
    }
    print(f"synthetic history: {samples} samples for {args.hosts} hosts; 1 h query answers {points} points")
    print(f"load average (1, 5, 15 min) at the end: {figures['load_average']}")
    print(f"{'1 h of one metric, p50 / p95 (ms)':<44}{'gateway':>16}{'direct':>16}{'ratio':>7}")
    ratios = dict(
        (
            ratio_row("1 client", figures["query_1h_gateway"], figures["query_1h_direct"]),
            ratio_row("8 clients", figures["query_1h_8_clients_gateway"], figures["query_1h_8_clients_direct"]),
            ratio_row(
                f"1 client, shipped rate limit ({SHIPPED_READS_PER_MIN} reads)",
                figures["query_1h_shipped_limit_gateway"],
                figures["query_1h_shipped_limit_direct"],
            ),
        )
    )
    figures["ratios"] = {k: round(v, 2) for k, v in ratios.items()}
    print(
        f"CPU per 1 h query, 1 client: gateway's workers {gateway_cpu_ms:.2f} ms (beside Prometheus's own, "
        f"{prometheus_cpu_ms:.2f} ms, which both sides pay)"
    )
    print(
        f"{f'host list of {args.hosts} p50 / p95 (ms)':<44}{figures['host_list']['p50_ms']:>6} / "
        f"{figures['host_list']['p95_ms']}"
    )
    c = figures["concurrent"]
    print(
        f"{args.clients} clients for {args.duration:.0f} s: {c['requests']} requests ({c['rps']}/s), "
        f"{c['errors']} errors {c['error_kinds'] or ''}, p50 {c['p50_ms']} ms, p95 {c['p95_ms']} ms, "
        f"p99 {c['p99_ms']} ms"
    )
    checks = {
        **{f"1h query p95 <= 2x direct, {name}": ratio <= 2.0 for name, ratio in ratios.items()},
        f"shipped rate limit: read {SHIPPED_READS_PER_MIN + 1} refused (429)": over.status_code == 429,
        f"host list of {args.hosts} p95 <= 100 ms": figures["host_list"]["p95_ms"] <= 100,
        f"{args.clients} clients: 0 errors": c["errors"] == 0,
        f"{args.clients} clients: p95 < 500 ms": c["p95_ms"] < 500,
    }
    print_checks(checks, figures, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
