"""A scheduled report of a large fleet: 500 hosts x 5 metrics over 7 days, from the run's claim to the email.

Synthetic history: the 5-minute averages and maxima the downsampling rules
record (what a weekly report reads), 7 days of them for every host, cut into
TSDB blocks by ``promtool tsdb create-blocks-from openmetrics`` and served by
Debian's Prometheus. The gateway runs in-process on its own SQLite DB; the
email goes to an SMTP server on loopback (aiosmtpd). The target is 30 s; the
figure printed is the time of one scheduler tick that takes the run and
delivers it, with its parts (PromQL, PDF, CSV) timed separately after.

    .venv/bin/python bench/reports.py [--hosts 500] [--days 7]
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fleetwatch.testing import services
from fleetwatch.testing.mail import Mailbox
from rules_compiler.catalog import CATALOG

METRICS = ["cpu.utilization", "mem.used_pct", "gpu.utilization", "gpu.memory_used_pct", "disk.used_pct"]
TARGET_S = 30.0
LEVEL_S = 300


def write_history(path: Path, hosts: int, days: int, end: int) -> int:
    """``days`` of 5-minute avg and max of every metric of every host, ending at ``end``; returns the samples."""
    stamps = range(end - days * 86400 + LEVEL_S, end + 1, LEVEL_S)
    samples = 0
    with open(path, "w") as f:
        for j, metric in enumerate(METRICS):
            m = CATALOG[metric]
            extra = ',gpu_index="0"' if "gpu_index" in m.labels else ',mountpoint="/"' if m.labels else ""
            for agg in ("avg", "max"):
                name = f"{m.record}:{agg}5m"
                f.write(f"# TYPE {name} gauge\n")
                for h in range(hosts):
                    level = 5 + (h * 37 + j * 11) % 80
                    sel = f'{{host_id="bench-{h:04d}"{extra}}}'
                    lift = 8 if agg == "max" else 0
                    f.write(
                        "".join(
                            f"{name}{sel} {min(100.0, level + lift + 10 * math.sin(ts / 13751 + h)):.2f} {ts}\n"
                            for ts in stamps
                        )
                    )
                    samples += len(stamps)
        f.write("# EOF\n")
    return samples


def measure(tmp: Path, prom_url: str, hosts: int, days: int, end: int, smtp_port: int) -> dict:
    from gateway import scheduler
    from gateway.app import create_app
    from gateway.db import Host, ReportRun, ReportSchedule, add_with_id, db
    from gateway.report_job import build
    from gateway.report_render import render_csv, render_pdf

    app = create_app(
        {
            "STATE_DIR": str(tmp / "gateway"),
            "SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp / 'gateway.db'}",
            "PROMETHEUS_URL": prom_url,
            "RAW_RETENTION": "30d",
            "QUERY_CACHE_TTL_S": 0.0,
            "PROMETHEUS_TIMEOUT_S": 120.0,
            "SMTP_SMARTHOST": f"127.0.0.1:{smtp_port}",
            "SMTP_REQUIRE_TLS": False,
            "LOG_JSON": False,
        }
    )
    app.extensions["report_clock"] = lambda: end + 60
    with app.app_context():
        for h in range(hosts):
            add_with_id(Host(hostname=f"bench-{h:04d}.invalid", tags={"role": "gpu"}), f"bench-{h:04d}")
        schedule = add_with_id(
            ReportSchedule(
                name="Weekly fleet",
                scope={"tags": {"role": "gpu"}},
                metrics=METRICS,
                schedule={
                    "every": "day" if days == 1 else "week",
                    "weekday": "mon",
                    "time": "08:00",
                    "timezone": "UTC",
                },
                formats=["pdf", "csv"],
                recipients=["ops@example.com"],
                next_run_at=end + 10**9,  # not due: the run below is the only one
            )
        )
        run = add_with_id(
            ReportRun(
                schedule_pk=schedule.pk,
                trigger="manual",
                period_start=end - days * 86400,
                period_end=end,
                status="pending",
                lease_until=0,
                attempts=0,
            )
        )
        db.session.commit()
        run_pk = run.pk

    t0 = time.perf_counter()
    done = scheduler.tick(app)
    total_s = time.perf_counter() - t0
    with app.app_context():
        run = db.session.get(ReportRun, run_pk)
        assert done == [run.id] and run.status == "sent", (done, run.status, run.error)
        schedule = db.session.get(ReportSchedule, run.schedule_pk)
        t0 = time.perf_counter()
        report = build(schedule, run, end + 60)
        data_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        pdf = render_pdf(report)
        pdf_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        table = render_csv(report)
        csv_s = time.perf_counter() - t0
    return {
        "hosts_with_data": len(report.data.stats),
        "resolution": report.data.source.resolution,
        "total_s": round(total_s, 2),
        "promql_s": round(data_s, 2),
        "pdf_s": round(pdf_s, 2),
        "csv_s": round(csv_s, 3),
        "pdf_bytes": len(pdf),
        "csv_bytes": len(table),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hosts", type=int, default=500)
    p.add_argument("--days", type=int, default=7)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="fleetwatch-bench-reports-"))
    end = int(time.time()) // LEVEL_S * LEVEL_S
    t0 = time.perf_counter()
    samples = write_history(tmp / "history.om", args.hosts, args.days, end)
    subprocess.run(
        ["promtool", "tsdb", "create-blocks-from", "openmetrics", "--max-block-duration=24h"]
        + [str(tmp / "history.om"), str(tmp / "data")],
        check=True,
        capture_output=True,
    )
    (tmp / "history.om").unlink()
    print(f"history: {samples:,} samples in {time.perf_counter() - t0:.0f} s", flush=True)
    prom = services.prometheus(tmp / "data", flags=("--storage.tsdb.retention.time=30d",)).up()
    box = Mailbox().start()
    try:
        figures = measure(tmp, prom.url, args.hosts, args.days, end, box.port)
    finally:
        box.stop()
        prom.stop(20)
    figures["emails"] = len(box.messages)
    print(
        f"report of {args.hosts} hosts x {len(METRICS)} metrics over {args.days} d ({figures['resolution']} points, "
        f"{figures['hosts_with_data']} hosts with data): {figures['total_s']} s from claim to email "
        f"(target {TARGET_S:.0f} s, ratio {figures['total_s'] / TARGET_S:.2f}); "
        f"parts: PromQL {figures['promql_s']} s, PDF {figures['pdf_s']} s ({figures['pdf_bytes']:,} bytes), "
        f"CSV {figures['csv_s']} s"
    )
    ok = figures["total_s"] <= TARGET_S and figures["emails"] == 1
    print(f"{'PASS' if ok else 'FAIL'}  report within {TARGET_S:.0f} s, emailed once")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
