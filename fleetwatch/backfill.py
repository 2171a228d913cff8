"""`fleetwatch backfill`: downsampled history for catalog metrics, computed from the raw tier's samples.

Live rules downsample only from the moment they are loaded; a new catalog
metric (or a new stack on old data) has no 1m/5m/1h history before that.
This evaluates the downsampling rules of rules_compiler/downsampling.py over
the past on the raw Prometheus and writes the results as TSDB blocks into
the long-term tier's data directory, where the API reads every level and
Prometheus loads them within a minute (its block reload interval).

Why not ``promtool tsdb create-blocks-from rules`` as is: it writes one block
per rule per 2 h, so 30 d of the 9 rules of one metric made 3,249 blocks
(89 MB) in 54 s here, and every query then opens them all. The same
evaluation (a range query per rule, on the group's interval) is written
here as one OpenMetrics file and cut into day-long blocks by ``promtool tsdb
create-blocks-from openmetrics``: 18 blocks for the same history.

Each level is filled only up to its first live sample, minus one step, so
that no window is counted twice.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import yaml

from gateway.promql import Prometheus
from rules_compiler.catalog import CATALOG, resolve
from rules_compiler.downsampling import render_downsampling_rules
from rules_compiler.promql import seconds

MAX_STEPS = 10_000  # per range query; Prometheus refuses more than 11,000 points per series
BLOCK = "24h"


def first_live_sample(prom: Prometheus, record: str, lookback_s: int) -> float | None:
    """When the live rule first recorded ``record`` (within ``lookback_s``), to the minute; None if never."""
    # A 1 m subquery sees every sample of the 1m, 5m and 1h levels (the lookback is 5 m).
    result = prom.query(f"min(min_over_time(timestamp({record})[{lookback_s}s:1m]))")
    return float(result[0]["value"][1]) if result else None


def write_openmetrics(prom: Prometheus, live: Prometheus, rules_text: str, start: float, end: float, out) -> int:
    """Evaluate every rule on ``prom`` at its group's interval over [start, end], up to where ``live`` has the
    rule's own results, and write the samples; return their number."""
    samples = 0
    for group in yaml.safe_load(rules_text)["groups"]:
        step = int(seconds(group["interval"]))
        for rule in group["rules"]:
            first = -(-start // step) * step  # whole multiples of the step: stable, comparable timestamps
            last = min(end, first_live_sample(live, rule["record"], int(end - start) + 3600) or end)
            if last < end:
                last -= step  # the live windows start there
            last = last // step * step
            out.write(f"# TYPE {rule['record']} gauge\n")
            t = first
            while t <= last:
                chunk_end = min(last, t + (MAX_STEPS - 1) * step)
                for s in prom.query_range(rule["expr"], t, chunk_end, step):
                    labels = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(s["metric"].items()))
                    for ts, value in s["values"]:
                        out.write(f"{rule['record']}{{{labels}}} {value} {int(ts)}\n")
                        samples += 1
                t = chunk_end + step
    out.write("# EOF\n")
    return samples


def backfill(prom: Prometheus, live: Prometheus, metrics: list[str], start: float, end: float, into: list[Path]) -> int:
    """Blocks of the downsampled series of ``metrics`` over [start, end] from ``prom``'s samples, copied into
    each of ``into``; each level ends where ``live`` (the long-term tier) has its live results."""
    catalog = {m.name: m for m in (resolve(name)[0] for name in metrics)} if metrics else CATALOG
    with tempfile.TemporaryDirectory(prefix="fleetwatch-backfill-") as tmp:
        source = Path(tmp) / "history.om"
        with open(source, "w") as out:
            samples = write_openmetrics(prom, live, render_downsampling_rules(catalog), start, end, out)
        blocks = Path(tmp) / "blocks"
        subprocess.run(
            ["promtool", "tsdb", "create-blocks-from", "openmetrics", f"--max-block-duration={BLOCK}"]
            + [str(source), str(blocks)],
            check=True,
            capture_output=True,
        )
        for target in into:
            for block in blocks.iterdir():
                # Copied under a temporary name and renamed: Prometheus never sees half a block.
                tmp_block = target / f"{block.name}.tmp"
                shutil.copytree(block, tmp_block)
                tmp_block.rename(target / block.name)
    return samples


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def add_parser(sub) -> None:
    p = sub.add_parser("backfill", help="downsampled history for catalog metrics, from the raw tier's samples")
    p.add_argument("--state-dir", type=Path, default=Path("state"), help="the stack's state directory (./state)")
    p.add_argument("--prometheus", default="http://127.0.0.1:9090", help="the raw tier, where the samples are")
    p.add_argument("--longterm", default="http://127.0.0.1:9091", help="the long-term tier, where the levels are")
    p.add_argument("--metric", action="append", default=[], help="catalog name (repeatable; default: all)")
    p.add_argument("--days", type=float, default=7.0, help="how far back (default 7: the raw retention)")


def run(args: argparse.Namespace) -> int:
    end = time.time()
    into = [args.state_dir / "longterm" / "data"]
    raw, longterm = (Prometheus(url, timeout_s=120) for url in (args.prometheus, args.longterm))
    samples = backfill(raw, longterm, args.metric, end - args.days * 86400, end, into)
    print(f"fleetwatch: {samples} downsampled samples written into {', '.join(map(str, into))}")
    return 0
