"""Push ingest through the gateway beside remote-write straight into Prometheus, in one run.

Starts a fresh Prometheus (remote-write receiver, 1 h out-of-order window)
and the gateway (gunicorn), then for D seconds each:

1. direct: pre-encoded remote-write requests of 1,000 samples into Prometheus,
   then of 100 (an agent's batch, sent straight to Prometheus);
2. gateway, agent batches: JSON requests of 100 points, many hosts;
3. gateway, GET /health: the request rate of an endpoint that does no work, the
   ceiling that every request's fixed cost (HTTP, gunicorn, Flask) sets;
4. gateway, large batches: JSON requests of 10,000 points (an agent's replay);
5. the agent itself (`fleetwatch-exporter --push`, default collectors, 5 s) for its CPU and RSS;
6. with ``--gateways N`` (N >= 2): on PostgreSQL, one gateway, then N replicas behind
   HAProxy (as `fleetwatch up --gateways N` runs them), each taking agents' 100-point
   batches: first pushes of new hosts (the key's binding admits each host and its
   series in the DB), then steady pushes of hosts every worker knows; with the
   gateways a 10,000-host fleet at 5 s needs.

Clients send ready-made bodies from several threads, so the figures are the
servers', with the client's own CPU on the same machine counted against them.

    .venv/bin/python bench/ingest.py [--duration 10] [--workers 2] [--clients 8] [--gateways 2]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import orjson
import psutil
import urllib3

from fleetwatch import replicas
from fleetwatch.testing import services
from fleetwatch.testing.api import api_key, api_session
from fleetwatch.testing.postgres import Postgres
from fleetwatch.testing.waits import free_port
from gateway.remote_write import encode_labels, encode_sample, encode_series


def hammer(
    url: str, bodies: list[bytes], points_each: int, headers: dict, clients: int, duration: float, method: str = "POST"
) -> float:
    """Post ``bodies`` in order from ``clients`` threads for ``duration`` s; points stored per second."""
    http = urllib3.PoolManager(maxsize=clients, retries=False, timeout=30)
    lock, sent, failed = threading.Lock(), [0], [0]
    cursor = iter(range(len(bodies)))
    deadline = time.monotonic() + duration

    def run():
        while time.monotonic() < deadline:
            with lock:
                i = next(cursor, None)
            if i is None:
                return
            r = http.request(method, url, body=bodies[i] or None, headers=headers)
            with lock:
                if r.status < 300:
                    sent[0] += points_each
                else:
                    failed[0] += 1
                    if failed[0] == 1:
                        print(f"  {r.status}: {r.data[:200]!r}", file=sys.stderr)

    start = time.monotonic()
    workers = [threading.Thread(target=run) for _ in range(clients)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return sent[0] / (time.monotonic() - start)


def direct_bodies(count: int, base_ms: int, size: int) -> list[bytes]:
    """Remote-write requests of ``size`` samples: ``size`` series, a new timestamp (10 ms on) per request."""
    labels = [
        encode_labels([("__name__", "fleet:cpu_core"), ("core", str(c)), ("host_id", f"direct-{size}")])
        for c in range(size)
    ]
    import cramjam

    return [
        bytes(
            cramjam.snappy.compress_raw(
                b"".join(encode_series(lab, [encode_sample(50.0, base_ms + i * 10)]) for lab in labels)
            )
        )
        for i in range(count)
    ]


def json_bodies(count: int, series: int, per_series: int, base_s: float, hosts: int) -> list[bytes]:
    """Ingest bodies of ``series × per_series`` points; request i goes to host i % hosts."""
    bodies = []
    for i in range(count):
        host, step = i % hosts, (i // hosts) * per_series
        stamps = [time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(base_s + step + k)) for k in range(per_series)]
        points = [{"metric": f"cpu.core.{c}", "ts": ts, "value": 42.5} for ts in stamps for c in range(series)]
        bodies.append(orjson.dumps({"host_id": f"bench-{host:04d}", "metrics": points}))
    return bodies


def agent_points() -> int:
    """Points one sample of the agent's default collectors makes on this machine (what each push carries)."""
    from exporter.catalog_points import Translator
    from exporter.registry import ExporterConfig, build_registry

    registry, _ = build_registry(ExporterConfig())
    translator = Translator()
    translator.points(registry.collect(), time.time())  # rates need a first sample
    time.sleep(1.1)
    return len(translator.points(registry.collect(), time.time()))


def gateways_up(state: Path, prom_url: str, database: str, count: int, args) -> list[services.Server]:
    """``count`` gateways on ``database``; behind HAProxy (the last one returned) when more than one."""
    gateways = []
    for i in range(1, count + 1):
        gw = services.gateway(
            state / f"gateway-{i}",
            prom_url,
            args=(f"--workers={args.workers}", f"--threads={args.threads}"),
            env={"DATABASE_URL": database, "FLEETWATCH_PROXY_HOPS": "1" if count > 1 else "0"},
        )
        gateways.append(gw)
        gw.up()  # one after the other: each migrates, or finds the schema done
    if count == 1:
        return gateways
    config = state / f"haproxy-{count}.cfg"
    listen = f"127.0.0.1:{free_port()}"
    config.write_text(replicas.haproxy_config(listen, [g.url.removeprefix("http://") for g in gateways]))
    proxy = services.Server(
        "haproxy",
        replicas.haproxy_argv(config),
        f"http://{listen}/health",
        state / "haproxy.log",
        url=f"http://{listen}",
    )
    return [*gateways, proxy.up()]


def binding_rates(url: str, args, hosts: int) -> tuple[float, float, float]:
    """Requests/s: first 100-point pushes of ``hosts`` new hosts; steady ones of hosts already known; steady ones
    of ``args.fleet_series`` points, an agent's push at its interval (one sample's points)."""
    key = api_key(api_session(url), "bench-replicas")
    headers = {"X-API-Key": key, "Content-Type": "application/json"}
    push = f"{url}/api/v1/ingest/metrics"
    now = time.time()
    first = json_bodies(hosts, 100, 1, now - 3000, hosts)
    first_rate = hammer(push, first, 1, headers, args.clients, 3600)  # every body once: a request each
    # Every worker of every gateway should know every host before the steady phase: a few
    # rounds, sent as fast as the first ones; what is left are a few first pushes per worker.
    steady_hosts = min(hosts, 200)
    warm = json_bodies(steady_hosts * 2 * args.workers * args.gateways, 100, 1, now - 2900, steady_hosts)
    hammer(push, warm, 1, headers, args.clients, 3600)
    steady = json_bodies(int(args.duration * 1500), 100, 1, now - 2000, steady_hosts)
    steady_rate = hammer(push, steady, 1, headers, args.clients, args.duration)
    del steady
    agents = json_bodies(int(args.duration * 2000), args.fleet_series, 1, now - 1000, steady_hosts)
    return first_rate, steady_rate, hammer(push, agents, 1, headers, args.clients, args.duration)


def replica_rates(state: Path, prom_url: str, args) -> dict[int, tuple[float, float, float]]:
    """{gateways: binding_rates(...)}: one gateway, then ``args.gateways`` behind HAProxy, on PostgreSQL."""
    pg = Postgres().start()
    rates = {}
    try:
        for count in (1, args.gateways):
            parts = gateways_up(state / f"pg-{count}", prom_url, pg.new_database(), count, args)
            try:
                rates[count] = binding_rates(parts[-1].url, args, args.new_hosts)
            finally:
                for part in reversed(parts):
                    part.stop(20)
    finally:
        pg.stop()
    return rates


def agent_usage(gateway: str, key: str, state: Path, seconds: float) -> tuple[float, float]:
    """CPU % of one core and peak RSS (MB) of the agent with its default collectors over ``seconds``."""
    argv = [sys.executable, "-m", "exporter.cli", "--push", gateway, "--api-key", key, "--interval", "5s"]
    proc = subprocess.Popen([*argv, "--buffer", str(state / "agent.db")], stderr=subprocess.DEVNULL)
    ps = psutil.Process(proc.pid)
    time.sleep(3)  # imports and the first sample are start-up, not steady state
    before, start, rss = ps.cpu_times(), time.monotonic(), 0
    while time.monotonic() - start < seconds:
        rss = max(rss, ps.memory_info().rss)
        time.sleep(0.5)
    after = ps.cpu_times()
    cpu = (after.user + after.system - before.user - before.system) / (time.monotonic() - start)
    proc.terminate()
    proc.wait(10)
    return 100 * cpu, rss / 1e6


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=float, default=10.0, help="seconds per phase")
    p.add_argument("--workers", type=int, default=2, help="gateway worker processes")
    p.add_argument("--threads", type=int, default=4, help="threads per worker")
    p.add_argument("--clients", type=int, default=8, help="client threads")
    p.add_argument("--agent-seconds", type=float, default=30.0)
    p.add_argument("--gateways", type=int, default=1, help="N >= 2: also N gateways behind HAProxy on PostgreSQL")
    p.add_argument("--new-hosts", type=int, default=400, help="hosts whose first push is measured (--gateways)")
    p.add_argument("--fleet", type=int, default=10_000, help="hosts of the fleet sized from the figures")
    p.add_argument("--fleet-interval", type=float, default=5.0, help="seconds between a host's pushes")
    p.add_argument("--fleet-series", type=int, default=40, help="points in a host's push (one sample of its series)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        state = Path(tmp)
        prom = services.prometheus(state / "prom-data").up()
        prom_url = prom.url
        gateway = services.gateway(
            state / "gateway", prom_url, args=(f"--workers={args.workers}", f"--threads={args.threads}")
        )
        gw_url = gateway.url
        try:
            gateway.up()
            now = time.time()
            print("preparing request bodies ...", file=sys.stderr)
            rw_headers = {"Content-Encoding": "snappy", "Content-Type": "application/x-protobuf"}
            direct = direct_bodies(int(args.duration * 1200), int((now - 3300) * 1000), 1000)
            direct_rate = hammer(f"{prom_url}/api/v1/write", direct, 1000, rw_headers, args.clients, args.duration)
            direct = direct_bodies(int(args.duration * 4000), int((now - 3300) * 1000), 100)
            direct_small = hammer(f"{prom_url}/api/v1/write", direct, 100, rw_headers, args.clients, args.duration)
            del direct
            key = api_key(api_session(gw_url), "bench")
            headers = {"X-API-Key": key, "Content-Type": "application/json"}
            small = json_bodies(int(args.duration * 2500), 100, 1, time.time() - 3000, 500)
            small_rate = hammer(f"{gw_url}/api/v1/ingest/metrics", small, 100, headers, args.clients, args.duration)
            del small
            # The same clients on GET /health, a request that does no work: the ceiling any
            # endpoint of this gateway meets, here in "points" as if each carried 100.
            noop_rate = hammer(f"{gw_url}/health", [b""] * 10**6, 100, {}, args.clients, args.duration, "GET")
            # Each host's requests walk 100 s forward: 24 per host keep them all inside the
            # ingest window of [now - 1 h, now + 5 min], however long the phase.
            count = int(args.duration * 50)
            large = json_bodies(count, 100, 100, time.time() - 2400, max(20, -(-count // 24)))
            large_rate = hammer(f"{gw_url}/api/v1/ingest/metrics", large, 10_000, headers, args.clients, args.duration)
            del large
            cpu, rss = agent_usage(gw_url, key, state, args.agent_seconds)
            gateway.stop(20)
            if args.gateways > 1:
                rates = replica_rates(state, prom_url, args)
        finally:
            for proc in (gateway, prom):
                proc.stop(20)
    per_min = 60 / 1e6
    print(f"cores: {os.cpu_count()}, gateway: {args.workers} workers x {args.threads} threads, clients: {args.clients}")
    print(f"direct remote-write, 1,000 samples/request : {direct_rate * per_min:6.1f} M points/min")
    print(f"direct remote-write, 100 samples/request   : {direct_small * per_min:6.1f} M points/min")
    print(f"gateway JSON, 100 points/request           : {small_rate * per_min:6.1f} M points/min")
    print(f"gateway JSON, 10,000 points/request        : {large_rate * per_min:6.1f} M points/min")
    print(
        f"gateway GET /health, the no-work ceiling   : {noop_rate / 100:6.0f} requests/s "
        f"(= {noop_rate * per_min:.1f} M/min at 100 points each)"
    )
    print(
        f"ratio gateway/direct (1,000-sample requests): {small_rate / direct_rate:.2f} (100 points), "
        f"{large_rate / direct_rate:.2f} (10,000)"
    )
    print(f"ratio at the same request size (100)        : {small_rate / direct_small:.2f}")
    print(f"agent, default collectors every 5 s      : {cpu:.2f} % CPU, {rss:.1f} MB RSS")
    if args.gateways > 1:
        print_replicas(rates, args, direct_small)
    return 0


def print_replicas(rates: dict, args, direct_small: float) -> None:
    """The 1- and N-gateway figures, and the gateways a fleet needs at one gateway's rate."""
    cores, many, size = os.cpu_count(), args.gateways, args.fleet_series
    print(f"on PostgreSQL, {args.workers} workers x {args.threads} threads each, one relay key:")
    for count, (first, steady, agents) in rates.items():
        name = "1 gateway" if count == 1 else f"{count} behind HAProxy"
        print(
            f"  {name:<17}: 100-point batches {steady * 100 * 60 / 1e6:4.2f} M points/min ({steady:4.0f} req/s, "
            f"{steady * 100 * 60 / 1e6 / cores:.2f} M/min per core); {size}-point pushes {agents:4.0f} req/s; "
            f"first pushes of {args.new_hosts} new hosts {first:3.0f} req/s"
        )
    ratios = ", ".join(f"{what} {rates[many][i] / rates[1][i]:.2f}" for i, what in enumerate(("first", "100", size)))
    print(f"  ratio {many}/1 gateways: {ratios}")
    one_steady, one_first = (rate * 100 / direct_small for rate in (rates[1][1], rates[1][0]))
    print(f"  direct remote-write, 100 samples/request: {direct_small / 100:4.0f} req/s; "
          f"1 gateway / direct: 100-point batches {one_steady:.2f}, first pushes {one_first:.2f}")  # fmt: skip
    # Each agent posts one sample's points per interval: the request rate is what a fleet asks.
    need = args.fleet / args.fleet_interval
    per_gateway = rates[1][2]
    per_core = max(agents for *_, agents in rates.values()) / cores
    print(
        f"  {args.fleet:,} hosts / {args.fleet_interval:g} s = {need:,.0f} pushes/s of {size} points "
        f"({need * size * 60 / 1e6:.1f} M points/min; the agent's default collectors make {agent_points()} here): "
        f"{-(-need // per_gateway):.0f} gateways at {per_gateway:,.0f} req/s each, "
        f"{-(-need // per_core):.0f} cores at {per_core:,.0f} req/s per core"
    )


if __name__ == "__main__":
    sys.exit(main())
