"""What a push costs the gateway in-process, first (new hosts) and steady, on this tree beside a git ref's.

Each side runs in its own Python with a fresh Prometheus and SQLite DB: a relay
key pushes H new hosts' first batches (100 ``cpu.core.N`` points, so 100 new
series each: the key's and the host's budgets admit them in the DB), then the
same hosts again (every series known: no SQL statement). Prints each side's
milliseconds per push and the ratio, ours over the reference's.

    .venv/bin/python -P bench/first_push.py [--ref main] [--hosts 300] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def measure(hosts: int) -> dict:
    """ms per push, first and steady, of the ``gateway`` this Python imports."""
    from fleetwatch.testing import services
    from fleetwatch.testing.api import ADMIN, bearer, login, make_app

    tmp = Path(tempfile.mkdtemp(prefix="bench-first-push-"))
    with services.prometheus(tmp / "prom") as prom:
        client = make_app(tmp, prom.url).test_client()
        admin = bearer(login(client, ADMIN)["access_token"])
        body = {"name": "relay", "host_pattern": "*", "allow_discovery": True}
        key = {"X-API-Key": client.post("/api/v1/api-keys", json=body, headers=admin).get_json()["key"]}
        result = {}
        for phase in ("first", "steady"):
            ts = datetime.now(UTC).isoformat()
            points = [{"metric": f"cpu.core.{n}", "ts": ts, "value": 1.0} for n in range(100)]
            start = time.perf_counter()
            for i in range(hosts):
                r = client.post("/api/v1/ingest/metrics", json={"host_id": f"h{i}", "metrics": points}, headers=key)
                assert r.status_code == 200, r.get_json()
            result[phase] = (time.perf_counter() - start) / hosts * 1000
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ref", default="main", help="the git ref measured beside this tree")
    p.add_argument("--hosts", type=int, default=300)
    p.add_argument("--rounds", type=int, default=2, help="alternating runs of each side")
    p.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.measure:
        print(json.dumps(measure(args.hosts)))
        return 0
    ref = Path(tempfile.mkdtemp(prefix="bench-ref-"))
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.ref], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(ref)], input=archive, check=True)
    sides = {"ours": ROOT, args.ref: ref}
    runs = {name: [] for name in sides}
    for _ in range(args.rounds):
        for name, tree in sides.items():
            # This script measures both sides (the reference may predate it), importing the tree's gateway.
            argv = [sys.executable, "-P", __file__, "--measure", "--hosts", str(args.hosts)]
            env = {**os.environ, "PYTHONPATH": str(tree)}
            out = subprocess.run(argv, check=True, capture_output=True, text=True, env=env)
            runs[name].append(json.loads(out.stdout.splitlines()[-1]))
    for phase in ("first", "steady"):
        best = {name: min(r[phase] for r in results) for name, results in runs.items()}
        print(
            f"{phase:>6} push: ours {best['ours']:.1f} ms, {args.ref} {best[args.ref]:.1f} ms, "
            f"ratio {best['ours'] / best[args.ref]:.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
