"""The two tiers: 30 d and 90 d queries through the gateway, and bytes on disk per host per day in each tier.

1. Latency: a long-term Prometheus holding 90 d of downsampled history
   (1h and 5m averages of CPU and memory for N hosts, default 50; every
   level of CPU for the host asked about) and the gateway (gunicorn, query
   cache off) on it; R sequential 30d and 90d queries of one metric of one host.
2. Size: one day of one synthetic host's catalog layer (16 cores, 3 mounts,
   2 disks, 2 NICs, 20 process series, G GPUs) at the default 5 s scrape
   interval, cut into a day-long block as Prometheus compacts it: the raw
   tier holds the 5 s samples, the long-term tier the downsampled series
   (the downsampler records them and keeps 4 h: not counted). The exporter's
   source families (node_*, DCGM_*) come on top in the raw tier; they are not
   counted.

    .venv/bin/python bench/retention.py [--hosts 50] [--repeat 200] [--gpus 0]
"""

from __future__ import annotations

import argparse
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fleetwatch.testing import services
from fleetwatch.testing.api import api_session
from fleetwatch.testing.figures import print_checks
from rules_compiler.catalog import CATALOG
from rules_compiler.downsampling import LEVELS, aggregations_for, record_name

DAY = 86400
RAW_STEP_S = 5


def host_series(gpus: int) -> list[tuple[object, str]]:
    """(catalog metric, label text) for every series one host has in the normalised layer."""
    fan_out = {
        "core": [f'core="{i}"' for i in range(16)],
        "mountpoint": [f'mountpoint="{m}"' for m in ("/", "/home", "/scratch")],
        "device": ['device="nvme0n1"', 'device="nvme1n1"'],
        "gpu_index": [f'gpu_index="{i}"' for i in range(gpus)],
    }
    out = []
    for m in CATALOG.values():
        if "jobid" in m.labels:
            continue  # a host running no Slurm job
        if "pid" in m.labels:
            if "gpu_index" in m.labels and not gpus:
                continue
            labels = [f'pid="{1000 + i}",name="proc{i}",user="u{i % 3}",slurm_job_id=""' for i in range(10)]
        elif m.labels:
            labels = fan_out[m.labels[0]]
        else:
            labels = [""]
        out += [(m, text) for text in labels]
    return out


def walk(rng: random.Random, n: int) -> list[float]:
    value, out = rng.uniform(10, 90), []
    for _ in range(n):
        value = min(100.0, max(0.0, value + rng.gauss(0, 2)))
        out.append(round(value, 2))
    return out


def write_day(f, host: str, series, start: int, rng: random.Random, raw: bool) -> int:
    """One day of ``host``: the raw layer (``raw``), else every downsampled series computed from it."""
    n = DAY // RAW_STEP_S
    families: dict[str, list[str]] = {}
    for m, labels in series:
        sel = f'host_id="{host}"' + (f",{labels}" if labels else "")
        values = walk(rng, n)
        if raw:
            families.setdefault(m.record, []).extend(
                f"{m.record}{{{sel}}} {v} {start + (i + 1) * RAW_STEP_S}\n" for i, v in enumerate(values)
            )
            continue
        for level in LEVELS:
            per = level.seconds // RAW_STEP_S
            for k in range(n // per):
                window = values[k * per : (k + 1) * per]
                ts = start + (k + 1) * level.seconds
                agg = {"avg": sum(window) / per, "max": max(window), "min": min(window), "count": per}
                for name in aggregations_for(m):
                    families.setdefault(record_name(m, name, level.name), []).append(
                        f"{record_name(m, name, level.name)}{{{sel}}} {agg[name]:.6g} {ts}\n"
                    )
    lines = 0
    for name, rows in families.items():
        f.write(f"# TYPE {name} gauge\n")
        f.writelines(rows)
        lines += len(rows)
    return lines


def block_bytes(source: Path, out: Path) -> int:
    subprocess.run(
        ["promtool", "tsdb", "create-blocks-from", "openmetrics", "--max-block-duration=24h", str(source), str(out)],
        check=True,
        capture_output=True,
    )
    return sum(p.stat().st_size for p in out.rglob("*") if p.is_file())


def sizes(tmp: Path, gpus: int) -> dict:
    series = host_series(gpus)
    start = int(time.time() // DAY * DAY) - 3 * DAY
    figures = {"series_per_host": len(series)}
    for tier, raw in (("raw", True), ("longterm", False)):
        source = tmp / f"size-{tier}.om"
        with open(source, "w") as f:
            samples = write_day(f, "size-0", series, start, random.Random(1), raw)
            f.write("# EOF\n")
        figures[tier] = {"samples_per_day": samples, "bytes_per_host_per_day": block_bytes(source, tmp / tier)}
        source.unlink()
    return figures


def longterm_history(path: Path, hosts: int, now: int) -> int:
    """90 d of 1h series for ``hosts`` hosts' CPU and memory, and every level of host 0's CPU (1m: 30 d)."""
    rng = random.Random(2)
    lines = 0
    with open(path, "w") as f:
        for metric in ("cpu.utilization", "mem.used_pct"):
            m = CATALOG[metric]
            for level in LEVELS:
                if level.name != "1h" and metric != "cpu.utilization":
                    continue
                n = (30 if level.name == "1m" else 90) * DAY // level.seconds
                first = now // level.seconds * level.seconds - n * level.seconds
                for agg in aggregations_for(m):
                    name = record_name(m, agg, level.name)
                    f.write(f"# TYPE {name} gauge\n")
                    for h in range(hosts if level.name == "1h" else 1):
                        for k, v in enumerate(walk(rng, n)):
                            value = level.seconds // RAW_STEP_S if agg == "count" else v
                            f.write(f'{name}{{host_id="bench-{h:04d}"}} {value} {first + (k + 1) * level.seconds}\n')
                            lines += 1
        f.write("# EOF\n")
    return lines


def pct(values: list[float], q: int) -> float:
    return round(statistics.quantiles(values, n=100, method="inclusive")[q - 1], 1)


def latency(tmp: Path, hosts: int, repeat: int) -> dict:
    now = int(time.time())
    lines = longterm_history(tmp / "longterm.om", hosts, now)
    subprocess.run(
        ["promtool", "tsdb", "create-blocks-from", "openmetrics", "--max-block-duration=24h"]
        + [str(tmp / "longterm.om"), str(tmp / "lt-data")],
        check=True,
        capture_output=True,
    )
    procs = []
    try:
        lt = services.prometheus(tmp / "lt-data", flags=("--storage.tsdb.retention.time=90d",))
        procs.append(lt.up())
        lt_url = lt.url
        # The raw tier is never asked for these ranges: the long-term one answers them.
        gw = services.gateway(
            tmp / "gateway",
            lt_url,
            args=(),
            env={
                "FLEETWATCH_LONGTERM_URL": lt_url,
                "FLEETWATCH_RATE_LIMIT_READS_PER_MIN": "100000000",
                "FLEETWATCH_QUERY_CACHE_TTL_S": "0",
            },
        )
        procs.append(gw.up())
        gw_url = gw.url
        s = api_session(gw_url)
        s.post(f"{gw_url}/api/v1/hosts", json={"id": "bench-0000", "hostname": "bench-0000.invalid"})
        out = {"longterm_samples": lines}
        for range_ in ("30d", "90d"):
            url = f"{gw_url}/api/v1/metrics/query?host_id=bench-0000&metric=cpu.utilization&range={range_}"
            body = s.get(url).json()
            times = []
            for _ in range(repeat):
                t0 = time.perf_counter()
                s.get(url).raise_for_status()
                times.append((time.perf_counter() - t0) * 1000)
            out[range_] = {
                "points": len(body["datapoints"]),
                "resolution": body["resolution"],
                "tier": body["tier"],
                "p50_ms": pct(times, 50),
                "p95_ms": pct(times, 95),
            }
        return out
    finally:
        for proc in reversed(procs):
            proc.stop(20)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hosts", type=int, default=50)
    p.add_argument("--repeat", type=int, default=200)
    p.add_argument("--gpus", type=int, default=0, help="GPUs of the synthetic host in the size figures")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="fleetwatch-bench-retention-"))
    figures = {"latency": latency(tmp, args.hosts, args.repeat), "size": sizes(tmp, args.gpus)}
    lat, size = figures["latency"], figures["size"]
    for range_ in ("30d", "90d"):
        f = lat[range_]
        print(
            f"{range_} of one metric of one host via the gateway: {f['points']} points at {f['resolution']} "
            f"from the {f['tier']} tier, p50 {f['p50_ms']} ms, p95 {f['p95_ms']} ms"
        )
    print(f"one host: {size['series_per_host']} series in the catalog layer, {args.gpus} GPUs")
    for tier in ("raw", "longterm"):
        t = size[tier]
        print(
            f"{tier:<9} {t['bytes_per_host_per_day'] / 1e6:8.2f} MB per host per day ({t['samples_per_day']} samples)"
        )
    checks = {f"{r} p95 <= 50 ms": lat[r]["p95_ms"] <= 50 for r in ("30d", "90d")}
    print_checks(checks, figures, args.json)
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
