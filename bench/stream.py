"""The REST API's latency with 200 live-update streams open beside it, against none open.

Starts a fresh Prometheus and the gateway as shipped (``fleetwatch-gateway serve``:
gunicorn gthread, 2 workers, rate limits lifted), adds N hosts (default 200),
then measures the p95 of the host list (a page of 50, with status) with
no stream open, then with S streams (default 200) open on /api/v1/stream, each
read by a client that keeps every event (the hosts' status events among
them), in alternating rounds. Prints the median p95 of each side and their ratio
(the target: at most 1.2).

    make bench-stream   (.venv/bin/python bench/stream.py [--streams 200] [--hosts 200] [--rounds 3])
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from fleetwatch.testing import services
from fleetwatch.testing.api import api_session
from fleetwatch.testing.sse import SseClient


def p95_of_host_list(api, n: int, clients: int = 4) -> tuple[float, float]:
    """p95 and median, in ms, of ``n`` host-list pages asked by ``clients`` at a time."""

    def one(_):
        started = time.perf_counter()
        r = api.get(f"{api.base}/api/v1/hosts", params={"limit": 50}, timeout=30)
        assert r.status_code == 200, r.text
        return (time.perf_counter() - started) * 1000

    for _ in range(20):  # warm: connections, caches, the workers' first pages
        one(0)
    with ThreadPoolExecutor(clients) as pool:
        times = sorted(pool.map(one, range(n)))
    return times[int(0.95 * len(times)) - 1], statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--streams", type=int, default=200)
    p.add_argument("--hosts", type=int, default=200)
    p.add_argument("--requests", type=int, default=300)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench-stream-") as tmp:
        root = Path(tmp)
        env = {
            "FLEETWATCH_RATE_LIMIT_READS_PER_MIN": "1000000",
            "FLEETWATCH_RATE_LIMIT_WRITES_PER_MIN": "1000000",
            "FLEETWATCH_LOGIN_ATTEMPTS_PER_MIN": "1000000",
        }
        with (
            services.prometheus(root / "tsdb") as prom,
            services.gateway(root / "gw", prom.url, args=("--workers=2",), env=env) as gw,
        ):
            api = api_session(gw.url)
            for i in range(args.hosts):
                body = {"id": f"bench-{i:04d}", "hostname": f"bench-{i:04d}.example.com", "exporter": "127.0.0.1:1"}
                assert api.post(f"{api.base}/api/v1/hosts", json=body, timeout=30).status_code == 201
            token = api.headers["Authorization"].removeprefix("Bearer ")
            url = f"{gw.url}/api/v1/stream"
            quiet, busy, still_open = [], [], []
            # Alternating rounds: on a shared machine, load from elsewhere then weighs on both sides alike.
            for round_ in range(args.rounds):
                quiet.append(p95_of_host_list(api, args.requests))
                with ThreadPoolExecutor(16) as pool:
                    streams = list(
                        pool.map(lambda _: SseClient(url, params={"access_token": token}), range(args.streams))
                    )
                refused = [s for s in streams if s.status != 200]
                assert not refused, f"{len(refused)} streams refused: {refused[0].error}"
                time.sleep(2)  # every stream past its first write
                busy.append(p95_of_host_list(api, args.requests))
                still_open.append(sum(not s.closed.is_set() for s in streams))
                for s in streams:
                    s.close()
                time.sleep(2)  # every hung-up stream's thread gone (they notice within a second)
                print(
                    f"round {round_ + 1}: p95 {quiet[-1][0]:.1f} ms without, {busy[-1][0]:.1f} ms with", file=sys.stderr
                )

    (quiet_p95, quiet_median), (busy_p95, busy_median) = (
        (statistics.median(p for p, _ in side), statistics.median(m for _, m in side)) for side in (quiet, busy)
    )
    ratio = busy_p95 / quiet_p95
    print(f"host list (page of 50 of {args.hosts} hosts), {args.requests} requests, 4 clients at a time;")
    print(f"median of {args.rounds} alternating rounds:")
    print(f"  no stream open:     p95 {quiet_p95:7.1f} ms  median {quiet_median:7.1f} ms")
    print(f"  {min(still_open):3d} streams open:  p95 {busy_p95:7.1f} ms  median {busy_median:7.1f} ms")
    print(f"  ratio (streams/none): {ratio:.2f}  (target <= 1.2)")
    return 0 if min(still_open) == args.streams else 1


if __name__ == "__main__":
    sys.exit(main())
