"""Registering many hosts: one CSV import of 10,000 rows, and POST /hosts one by one as the fleet grows.

Starts a Prometheus and the gateway (gunicorn, 2 workers, rate limits lifted),
each gateway on a fresh state directory, then measures:

1. POST /api/v1/hosts/import of 10,000 rows (REQ-HOST-003; target ≤ 10 s);
2. the time of one POST /api/v1/hosts, sent one after another, with 1,000 and
   then 4,000 hosts in the inventory (filled by import): ours, where the
   targets file is written once per burst of changes, beside the reference, the
   same gateway writing the whole file on every change (TARGETS_WRITE_GAP_S=0,
   as before). A ratio near 1 between 4,000 and 1,000 hosts means registering
   hosts one by one costs linear time overall.

    .venv/bin/python -P bench/hosts_import.py [--rows 10000] [--posts 300]

(-P: bench/exporter.py must not shadow the exporter package the rules compiler imports.)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from fleetwatch.testing import services
from fleetwatch.testing.api import api_session

ENV = {"FLEETWATCH_RATE_LIMIT_WRITES_PER_MIN": "10000000", "FLEETWATCH_RATE_LIMIT_READS_PER_MIN": "10000000"}


def csv_rows(start: int, count: int) -> str:
    lines = ["hostname,ips,tags,exporter,id"]
    for i in range(start, start + count):
        lines.append(f"n{i:06d}.example.com,10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255},rack:r{i % 40};zone:z{i % 3},,")
    return "\n".join(lines) + "\n"


def import_rows(session, url: str, start: int, count: int) -> float:
    """Seconds for one import of ``count`` rows."""
    began = time.perf_counter()
    r = session.post(
        f"{url}/api/v1/hosts/import", data=csv_rows(start, count), headers={"Content-Type": "text/csv"}, timeout=120
    )
    elapsed = time.perf_counter() - began
    assert r.status_code == 201, r.text[:500]
    return elapsed


def post_each(session, url: str, start: int, count: int) -> float:
    """Median milliseconds of one POST /hosts, over ``count`` sent one after another."""
    times = []
    for i in range(start, start + count):
        began = time.perf_counter()
        r = session.post(f"{url}/api/v1/hosts", json={"hostname": f"p{i:06d}.example.com"}, timeout=30)
        times.append(time.perf_counter() - began)
        assert r.status_code == 201, r.text
    return 1000 * statistics.median(times)


def gateway(state: Path, prometheus: str, env: dict) -> services.Server:
    """fleetwatch-gateway serve as shipped (gunicorn, 2 workers), rate limits lifted."""
    return services.gateway(state, prometheus, args=("--workers=2",), env={**ENV, **env})


def one_by_one(state: Path, prometheus: str, posts: int, gap_s: str) -> tuple[float, float]:
    """Per-POST ms at 1,000 and 4,000 hosts, with TARGETS_WRITE_GAP_S=gap_s."""
    with gateway(state, prometheus, {"FLEETWATCH_TARGETS_WRITE_GAP_S": gap_s}) as server:
        session = api_session(server.url)
        import_rows(session, server.url, 0, 1000)
        at_1000 = post_each(session, server.url, 100_000, posts)
        import_rows(session, server.url, 1000, 3000 - posts)
        at_4000 = post_each(session, server.url, 200_000, posts)
        return at_1000, at_4000


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=10_000)
    p.add_argument("--posts", type=int, default=300)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-hosts-") as tmp:
        tmp = Path(tmp)
        with services.prometheus(tmp / "prometheus") as prom:
            with gateway(tmp / "import", prom.url, {}) as server:
                seconds = import_rows(api_session(server.url), server.url, 0, args.rows)
            print(f"import of {args.rows:,} rows in one request: {seconds:.2f} s (target ≤ 10 s)")
            ours = one_by_one(tmp / "ours", prom.url, args.posts, "0.5")
            reference = one_by_one(tmp / "reference", prom.url, args.posts, "0")
    print("POST /api/v1/hosts, median ms per host   at 1,000   at 4,000   4,000 / 1,000")
    for name, (low, high) in (("ours (one write per burst)", ours), ("reference (a write per POST)", reference)):
        print(f"  {name:<30} {low:8.1f}   {high:8.1f}   {high / low:8.2f}")
    print(f"  at 4,000 hosts, ours / reference: {ours[1] / reference[1]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
