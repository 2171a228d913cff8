"""Ingest and queries through the gateway on Prometheus and on VictoriaMetrics, side by side in one run.

Starts a fresh Prometheus (remote-write receiver, 1 h out-of-order window) and a
fresh VictoriaMetrics single node, a gateway (gunicorn, rate limits lifted) on
each, then:

1. ingest: agents' JSON batches of 100 points from C clients for D seconds per
   backend, the same bodies into each gateway, in five alternating rounds;
2. query: 1 h of one metric at 5 s (720 points) through each gateway and straight
   from each store's query_range, taking turns request by request (bench/query.py
   says why turns).

    .venv/bin/python bench/backends.py [--duration 10] [--clients 8] [--queries 200]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.ingest import hammer, json_bodies
from bench.query import pct
from fleetwatch.testing import services
from fleetwatch.testing.api import api_key, api_session
from fleetwatch.testing.waits import wait_until
from gateway.remote_write import RemoteWriter, encode_labels, encode_sample, encode_series

STEP_S = 5
ROUNDS = 5  # ingest alternates between the backends this many times
QUERY_HOST = "bench-query"
GATEWAY_ENV = {
    "FLEETWATCH_SCRAPE_INTERVAL": f"{STEP_S}s",
    "FLEETWATCH_RATE_LIMIT_READS_PER_MIN": "10000000",
    "FLEETWATCH_RATE_LIMIT_WRITES_PER_MIN": "10000000",
    "FLEETWATCH_QUERY_CACHE_TTL_S": "0",
}


def history(store: str, session: requests.Session, key: str, now: float) -> None:
    """An hour of cpu.utilization at 5 s for QUERY_HOST: the host made by an agent's push, the rest remote-written."""
    start = int(now) - 3600
    labels = encode_labels([("__name__", "fleet:cpu_utilization"), ("host_id", QUERY_HOST)])
    samples = [encode_sample(50.0 + t % 7, t * 1000) for t in range(start, int(now) - STEP_S, STEP_S)]
    RemoteWriter(f"{store}/api/v1/write").write([encode_series(labels, samples)])
    point = {"metric": "cpu.utilization", "ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)), "value": 50}
    r = session.post(
        f"{session.base}/api/v1/ingest/metrics",
        json={"host_id": QUERY_HOST, "metrics": [point]},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )
    r.raise_for_status()


def query_turns(sides: dict[str, tuple[requests.Session, str, dict]], n: int) -> dict[str, list[float]]:
    """Latencies (ms) of each named (session, url, params), taking turns request by request."""
    out: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(n):
        for name, (session, url, params) in sides.items():
            t0 = time.perf_counter()
            r = session.get(url, params=params, timeout=30)
            out[name].append((time.perf_counter() - t0) * 1000)
            r.raise_for_status()
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=float, default=10.0, help="seconds of ingest per backend")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--workers", type=int, default=2, help="gunicorn workers per gateway")
    p.add_argument("--queries", type=int, default=200, help="1 h queries per side")
    args = p.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-backends-") as tmp:
        root = Path(tmp)
        stores = {
            "prometheus": services.prometheus(root / "prometheus" / "data"),
            "victoriametrics": services.victoriametrics(root / "victoriametrics" / "data"),
        }
        started = []
        try:
            for name, store in stores.items():
                started.append(store.up())
                gw = services.gateway(root / f"gw-{name}", store.url, (f"--workers={args.workers}",), GATEWAY_ENV)
                started.append(gw.up())
                store.gateway = gw
            sessions = {name: api_session(store.gateway.url) for name, store in stores.items()}
            keys = {name: api_key(sessions[name]) for name in stores}
            now = time.time()

            print(f"ingest: agents' 100-point JSON batches, {args.clients} clients, {args.duration:g} s per backend")
            count = int(args.duration * 4000)  # more bodies than either gateway posts in the time
            bodies = json_bodies(count, 10, 10, now - 3000, 500)
            rounds = {name: [] for name in stores}
            per_round = count // ROUNDS
            for k in range(ROUNDS):  # in turns, as the queries: a slow moment of the machine lands on both
                for name, store in stores.items():
                    headers = {"Authorization": f"Bearer {keys[name]}", "Content-Type": "application/json"}
                    url = f"{store.gateway.url}/api/v1/ingest/metrics"
                    batch = bodies[k * per_round : (k + 1) * per_round]  # new points every round
                    rounds[name].append(hammer(url, batch, 100, headers, args.clients, args.duration / ROUNDS))
            rates = {name: sum(r) / len(r) for name, r in rounds.items()}
            for name, rate in rates.items():
                print(f"  {name:16s} {rate * 60 / 1e6:6.2f} M points/min")
            print(f"  VictoriaMetrics / Prometheus: {rates['victoriametrics'] / rates['prometheus']:.2f}")

            for name, store in stores.items():
                history(store.url, sessions[name], keys[name], now)
            requests.get(f"{stores['victoriametrics'].url}/internal/force_flush", timeout=10)
            params = {"host_id": QUERY_HOST, "metric": "cpu.utilization", "range": "1h", "resolution": "raw"}
            end = time.time()
            direct = {"query": f'fleet:cpu_utilization{{host_id="{QUERY_HOST}"}}', "step": STEP_S}
            direct.update(start=end - 3600, end=end)
            sides = {}
            for name, store in stores.items():
                url = f"{store.gateway.url}/api/v1/metrics/query"
                s = sessions[name]
                wait_until(
                    lambda s=s, url=url: len(s.get(url, params=params, timeout=30).json()["datapoints"]) >= 700,
                    what=f"an hour of points through the gateway on {name}",
                )
                sides[f"gateway on {name}"] = (s, url, params)
                sides[f"{name} direct"] = (s, f"{store.url}/api/v1/query_range", direct)
            print(f"query: 1 h of one metric at {STEP_S} s (720 points), {args.queries} per side, in turns")
            latencies = query_turns(sides, args.queries)
            for name, ms in latencies.items():
                print(f"  {name:30s} p50 {pct(ms, 50):6.2f} ms   p95 {pct(ms, 95):6.2f} ms")
            for q in (50, 95):
                ratio = pct(latencies["gateway on victoriametrics"], q) / pct(latencies["gateway on prometheus"], q)
                print(f"  through the gateway, VictoriaMetrics / Prometheus at p{q}: {ratio:.2f}")
        finally:
            for server in reversed(started):
                server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
