"""Scheduled reports end to end: one run per occurrence across workers, the emailed PDF and CSV, the tiers.

Synthetic history (a sample a minute for 8 days, 10 GPU hosts and 2 others,
and the 5-minute averages and maxima the downsampling rules would record) is
written into a real Prometheus; reports go to a real SMTP server on loopback.
Every number checked is computed here from the raw samples themselves.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import ssl
import statistics
import subprocess
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import psutil
import pypdf
import pytest
import requests
import sqlalchemy as sa
from sqlalchemy.orm import Session

from fleetwatch.testing import services
from fleetwatch.testing.api import ADMIN, bearer, login, make_app
from fleetwatch.testing.mail import Mailbox
from fleetwatch.testing.tls import self_signed_certificate
from fleetwatch.testing.waits import free_port, wait_until
from gateway import scheduler
from gateway.db import AlertEvent, ReportRun, add_with_id, db
from gateway.report_calendar import WEEKDAYS
from tests.test_report_schedules import GOOD, METRICS, TZ, schedule_body

DAY = 86400
STEP_S = 60
GPU_HOSTS = [f"rpt-{i:02d}" for i in range(10)]
OTHERS = ["rpt-web-0", "rpt-web-1"]


def value(host: int, metric: int, ts: int) -> float:
    """A daily wave, a level per host (so hosts rank), and deterministic noise of ±3."""
    wave = 15 * math.sin(2 * math.pi * ts / DAY + host)
    noise = ((ts * 7919 + host * 104729 + metric * 1299709) % 601) / 100 - 3
    return round(min(100.0, max(0.0, 8 + 7 * host + 10 * metric + wave + noise)), 3)


def series_labels(host: str, metric: str) -> str:
    return f'host_id="{host}"' + (',gpu_index="0"' if metric.startswith("gpu.") else "")


@pytest.fixture(scope="module")
def history(tmp_path_factory):
    """A Prometheus holding 8 days of raw samples and their 5-minute levels; the samples by (host, metric)."""
    tmp = tmp_path_factory.mktemp("report-history")
    h0 = int(time.time()) // 300 * 300
    samples: dict[tuple[str, str], list[tuple[int, float]]] = {}
    families: dict[str, list[str]] = {}
    for i, host in enumerate(GPU_HOSTS + OTHERS):
        for j, metric in enumerate(METRICS):
            record = "fleet:" + metric.replace(".", "_")
            points = [(ts, value(i, j, ts)) for ts in range(h0 - 8 * DAY + STEP_S, h0 + 1, STEP_S)]
            samples[(host, metric)] = points
            sel = series_labels(host, metric)
            families.setdefault(record, []).extend(f"{record}{{{sel}}} {v} {ts}\n" for ts, v in points)
            per = 300 // STEP_S
            for k in range(0, len(points), per):  # windows (t - 300, t], t a multiple of 300
                window = points[k : k + per]
                end = window[-1][0]
                values = [v for _, v in window]
                for agg, v in (("avg", sum(values) / len(values)), ("max", max(values)), ("count", len(values))):
                    families.setdefault(f"{record}:{agg}5m", []).append(f"{record}:{agg}5m{{{sel}}} {v} {end}\n")
    source = tmp / "history.om"
    with open(source, "w") as f:
        for name, rows in families.items():
            f.write(f"# TYPE {name} gauge\n")
            f.writelines(rows)
        f.write("# EOF\n")
    data = tmp / "data"
    subprocess.run(
        ["promtool", "tsdb", "create-blocks-from", "openmetrics", "--max-block-duration=24h", str(source), str(data)],
        check=True,
        capture_output=True,
    )
    with services.prometheus(data, flags=("--storage.tsdb.retention.time=30d",)) as prom:
        yield {"url": prom.url, "samples": samples, "h0": h0}


def expected(samples: list[tuple[int, float]], start: int, end: int) -> dict[str, float]:
    inside = [v for ts, v in samples if start < ts <= end]
    return {
        "avg": statistics.fmean(inside),
        "p95": statistics.quantiles(inside, n=100, method="inclusive")[94],
        "max": max(inside),
        "gpu_hours": sum(inside) / 100 * STEP_S / 3600,
    }


def weekly_at(ts: int) -> dict:
    """A weekly schedule whose occurrence is ``ts`` (a whole minute) in Europe/Berlin."""
    local = datetime.fromtimestamp(ts, ZoneInfo(TZ))
    return {"every": "week", "weekday": WEEKDAYS[local.weekday()], "time": local.strftime("%H:%M"), "timezone": TZ}


def messages_for(mailbox, subject_start: str) -> list:
    return [m for _, m in list(mailbox.messages) if m["Subject"].startswith(subject_start)]


def utc(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def attachments(message) -> dict[str, bytes]:
    return {part.get_filename(): part.get_payload(decode=True) for part in message.walk() if part.get_filename()}


def body_text(message) -> str:
    part = next(p for p in message.walk() if p.get_content_type() == "text/plain" and not p.get_filename())
    return part.get_payload(decode=True).decode()


# --- one run per occurrence, racing schedulers ------------------------------------------------


def _race_app(tmp, prom_url: str, db_uri: str, mailbox, name: str):
    return make_app(
        tmp,
        prom_url,
        db_name=name,
        SQLALCHEMY_DATABASE_URI=db_uri,
        SMTP_SMARTHOST=f"127.0.0.1:{mailbox.port}",
        SMTP_REQUIRE_TLS=False,
        RAW_RETENTION="30d",
        REPORT_ATTACH_MAX_BYTES=200,  # these go out as links
        GATEWAY_URL="http://gateway.invalid",
    )


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_racing_schedulers_on_one_db_make_one_run_and_one_email(history, mailbox, tmp_path, request, backend):
    """Two app instances on one DB, each with 4 threads calling the scheduler at the same instant.

    More contenders than any deployment has workers, all released by one
    barrier past the due time: whatever one process believes, only the DB's
    claim decides, so exactly one run (and one email) comes out.
    """
    uri = (
        request.getfixturevalue("postgres").new_database()
        if backend == "postgresql"
        else f"sqlite:///{tmp_path}/shared.db"
    )
    apps = [_race_app(tmp_path, history["url"], uri, mailbox, f"race-{k}") for k in range(2)]
    client = apps[0].test_client()
    admin = bearer(login(client, ADMIN)["access_token"])
    for host in GPU_HOSTS[:3]:
        r = client.post(
            "/api/v1/hosts", json={"id": host, "hostname": f"{host}.invalid", "tags": {"role": "gpu"}}, headers=admin
        )
        assert r.status_code == 201, r.get_json()
    due = (history["h0"] // 60 + 1) * 60
    for app in apps:
        app.extensions["report_clock"] = lambda: due - 30
    name = f"Race {backend} {time.time_ns()}"
    r = client.post("/api/v1/reports/schedules", json=schedule_body(name, weekly_at(due)), headers=admin)
    assert r.status_code == 201, r.get_json()
    sid = r.get_json()["id"]
    for app in apps:
        app.extensions["report_clock"] = lambda: due + 5
    barrier = threading.Barrier(8)
    made: list[str] = []

    def contend(app):
        barrier.wait()
        made.extend(scheduler.tick(app))

    threads = [threading.Thread(target=contend, args=(apps[k % 2],)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(made) == 1, made
    runs = client.get(f"/api/v1/reports/schedules/{sid}/runs", headers=admin).get_json()
    assert runs["total"] == 1, runs
    run = runs["runs"][0]
    assert run["status"] == "sent" and run["delivery"] == "links", run
    assert run["due_at"] == utc(due)
    mails = wait_until(lambda: messages_for(mailbox, name), 10, "no email")
    time.sleep(1)
    assert len(messages_for(mailbox, name)) == 1
    # Too large to attach (limit 200 bytes): links, signed, that any instance serves.
    body = body_text(mails[0])
    assert not attachments(mails[0])
    links = [line for line in body.splitlines() if line.startswith("http://gateway.invalid/")]
    assert len(links) == 2, body
    for link in links:
        path = link.removeprefix("http://gateway.invalid")
        got = apps[1].test_client().get(path)
        assert got.status_code == 200, got.get_json()
        assert got.data[:4] == b"%PDF" if ".pdf?" in link else got.data.startswith(b"host_id,hostname,")
        forged = apps[1].test_client().get(path.replace("sig=", "sig=0"))
        assert forged.status_code == 403 and forged.get_json()["error"]["code"] == "FORBIDDEN"
    # The schedule moved on one week; another tick makes nothing.
    schedule = client.get(f"/api/v1/reports/schedules/{sid}", headers=admin).get_json()
    assert schedule["next_run_at"] == utc(due + 7 * DAY)
    assert scheduler.tick(apps[1]) == []
    # Asked by hand: pending at once, made by the next tick of any instance, over a period up to now.
    r = client.post(f"/api/v1/reports/schedules/{sid}/run", headers=admin)
    assert r.status_code == 202 and r.get_json()["status"] == "pending", r.get_json()
    assert r.get_json()["period_end"] == utc(due + 5) and r.get_json()["period_start"] == utc(due + 5 - 7 * DAY)
    assert scheduler.tick(apps[1]) == [r.get_json()["id"]]
    runs = client.get(f"/api/v1/reports/schedules/{sid}/runs", headers=admin).get_json()
    assert [(x["trigger"], x["status"]) for x in runs["runs"]] == [("manual", "sent"), ("schedule", "sent")]
    wait_until(lambda: len(messages_for(mailbox, name)) == 2, 10, "no email for the manual run")


# --- the real gateway: gunicorn with two workers ----------------------------------------------


def start_gateway(state: Path, prom_url: str, mailbox, offset_s: int) -> services.Server:
    """``fleetwatch-gateway serve`` with two workers mailing ``mailbox``, its clock ``offset_s`` ahead."""
    env = {
        "FLEETWATCH_RAW_RETENTION": "30d",
        "FLEETWATCH_SCRAPE_INTERVAL": str(STEP_S),
        "FLEETWATCH_LOG_LEVEL": "INFO",  # the schedulers' start lines are read back
        "FLEETWATCH_SMTP_SMARTHOST": f"127.0.0.1:{mailbox.port}",
        "FLEETWATCH_SMTP_REQUIRE_TLS": "false",
        "FLEETWATCH_REPORT_SCHEDULER_TICK_S": "1",
        "FLEETWATCH_REPORT_CLOCK_OFFSET_S": str(offset_s),
        "FLEETWATCH_ALERTMANAGER_URL": f"http://127.0.0.1:{free_port()}",
    }
    return services.gateway(state, prom_url, args=("--workers=2",), env=env).up()


def admin_session(url: str) -> requests.Session:
    s = requests.Session()
    r = s.post(f"{url}/api/v1/auth/login", json={"email": ADMIN[0], "password": ADMIN[1]}, timeout=30)
    r.raise_for_status()
    s.headers["Authorization"] = f"Bearer {r.json()['access_token']}"
    return s


def add_alert_events(db_file: Path, due: int) -> None:
    """Three firings on hosts of the scope in the week (one acknowledged) and one outside the scope."""
    engine = sa.create_engine(f"sqlite:///{db_file}")
    at = datetime.fromtimestamp(due, UTC)
    rows = [
        ("rpt-00", "HighCPU", at - timedelta(days=2), timedelta(hours=2), True),
        ("rpt-00", "HighCPU", at - timedelta(days=1), timedelta(hours=1), False),
        ("rpt-01", "GpuHot", at - timedelta(hours=5), timedelta(minutes=30), False),
        ("rpt-web-0", "DiskFull", at - timedelta(hours=3), timedelta(hours=9), False),
    ]
    with Session(engine) as s:
        for k, (host, rule, began, lasted, acked) in enumerate(rows):
            s.add(
                AlertEvent(
                    id=f"event-9{k:03d}", fingerprint=f"fp{k}", started_at=began, ended_at=began + lasted,
                    state="resolved", rule_name=rule, host_id=host, severity="warning",
                    acknowledged_at=began + timedelta(minutes=5) if acked else None,
                )
            )  # fmt: skip
        s.commit()
    engine.dispose()


def scheduler_pids(log: Path) -> set[int]:
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    return {line["pid"] for line in lines if line.get("message") == "report scheduler started"}


def pdf_rows(text: str, host: str, count: int) -> list[str]:
    """The ``count`` cells after ``host``'s name in the host table (pypdf gives one cell a line)."""
    lines = text.splitlines()
    k = lines.index(host, lines.index("host"))  # in the table, after its header; not in the bar charts
    return lines[k + 1 : k + 1 + count]


def test_gunicorn_with_two_workers_sends_one_weekly_report_then_catches_up_once_after_downtime(
    history, mailbox, tmp_path
):
    now = time.time()
    due = int(now + 25) // 60 * 60 + 60  # a whole minute, 25 to 85 s away
    offset = int(due - now - 20)  # the gateway's clock: due about 20 s after it starts
    state = tmp_path / "state"
    gateway = start_gateway(state, history["url"], mailbox, offset)
    url = gateway.url
    try:
        log = state / "gateway.log"
        # Two workers, each with its scheduler: two contenders for every occurrence.
        started = wait_until(lambda: scheduler_pids(log) if len(scheduler_pids(log)) == 2 else None, 30, "2 schedulers")
        assert {p.pid for p in psutil.Process(gateway.process.pid).children()} == started
        s = admin_session(url)
        for host in GPU_HOSTS + OTHERS:
            tags = {"role": "gpu" if host in GPU_HOSTS else "web"}
            r = s.post(f"{url}/api/v1/hosts", json={"id": host, "hostname": f"{host}.invalid", "tags": tags})
            assert r.status_code == 201, r.text
        add_alert_events(state / "gateway.db", due)
        name = f"Weekly GPU fleet <R&D> {time.time_ns()}"
        r = s.post(f"{url}/api/v1/reports/schedules", json=schedule_body(name, weekly_at(due)))
        assert r.status_code == 201, r.text
        sid = r.json()["id"]
        assert r.json()["next_run_at"] == utc(due)

        mails = wait_until(lambda: messages_for(mailbox, name), 90, "no report emailed")
        time.sleep(3)  # three more ticks of each worker
        assert len(messages_for(mailbox, name)) == 1
        runs = s.get(f"{url}/api/v1/reports/schedules/{sid}/runs").json()
        assert runs["total"] == 1 and runs["runs"][0]["status"] == "sent", runs
        files = attachments(mails[0])
        assert sorted(files) == sorted(f["name"] for f in runs["runs"][0]["files"])
        pdf = next(v for k, v in files.items() if k.endswith(".pdf"))
        table = next(v for k, v in files.items() if k.endswith(".csv"))
        assert s.get(runs["runs"][0]["files"][0]["download_url"]).content in (pdf, table)
    finally:
        gateway.stop(30)

    start = due - 7 * DAY
    rows = {row["host_id"]: row for row in csv.DictReader(io.StringIO(table.decode()))}
    assert sorted(rows) == GPU_HOSTS  # the scope: role=gpu, not the web hosts
    reader = pypdf.PdfReader(io.BytesIO(pdf))
    assert len(reader.pages) == 1, "ten hosts fit on one A4 page"
    text = reader.pages[0].extract_text()
    for host in GPU_HOSTS:
        cells = pdf_rows(text, host, 3 * len(METRICS) + 2)
        for j, metric in enumerate(METRICS):
            want = expected(history["samples"][(host, metric)], start, due)
            for k, agg in enumerate(("avg", "p95", "max")):
                got = float(rows[host][f"{metric}:{agg}"])
                # avg and max are exact up to the edges of the 5-minute windows; p95 is over 5-minute averages.
                assert got == pytest.approx(want[agg], abs=2.5 if agg == "p95" else 0.2), (host, metric, agg)
                assert cells[3 * j + k] == f"{got:.1f}", (host, metric, agg, cells)
        want_hours = expected(history["samples"][(host, "gpu.utilization")], start, due)["gpu_hours"]
        assert float(rows[host]["gpu_hours"]) == pytest.approx(want_hours, rel=0.01)
    assert name in text and all(h not in text for h in OTHERS)
    assert "Alerts: 3 fired, 2 never acknowledged, longest 2h00m" in text
    assert rows["rpt-00"]["alerts_fired"] == "2" and rows["rpt-01"]["alerts_unacknowledged"] == "1"
    assert "p95 the 95th percentile of the 5-minute averages" in " ".join(text.split())
    # The charts: their titles, the busiest host first, and vector drawing in the page.
    assert "Fleet average per day" in text and "Busiest hosts, avg cpu.utilization (%)" in text
    # Bars are drawn bottom-up: the busiest host comes last, at the top of the chart.
    busiest = text.split("Busiest hosts")[1].split("Idlest hosts")[0].splitlines()
    assert [line for line in busiest if line.startswith("rpt-")] == GPU_HOSTS
    drawing = reader.pages[0].get_contents().get_data()
    assert len(re.findall(rb"[-\d.]+ [-\d.]+ l\b", drawing)) > 20  # the lines of the plot and the axes
    assert len(re.findall(rb" re\b", drawing)) >= 20  # the bars

    # Down for three weeks and back: the newest missed week is reported, once.
    gateway = start_gateway(state, history["url"], mailbox, offset + 3 * 7 * DAY)
    url = gateway.url
    try:
        wait_until(lambda: len(messages_for(mailbox, name)) == 2, 60, "no catch-up report")
        time.sleep(3)
        assert len(messages_for(mailbox, name)) == 2
        s = admin_session(url)
        runs = s.get(f"{url}/api/v1/reports/schedules/{sid}/runs").json()
        assert runs["total"] == 2, runs
        assert runs["runs"][0]["due_at"] == datetime.fromtimestamp(due + 3 * 7 * DAY, UTC).strftime(
            "%Y-%m-%dT%H:%M:%SZ"
        )
        schedule = s.get(f"{url}/api/v1/reports/schedules/{sid}").json()
        assert schedule["next_run_at"] == datetime.fromtimestamp(due + 4 * 7 * DAY, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    finally:
        gateway.stop(30)


# --- which tier answers, and the raw samples' exact numbers -----------------------------------


@pytest.mark.parametrize(
    "every,tiers,tolerance",
    [
        # A day the raw tier holds: every raw sample, so p95 is exact too.
        ("day", {"RAW_RETENTION": "30d"}, {"avg": 1e-3, "p95": 1e-3, "max": 1e-3, "gpu_hours": 1e-3}),
        # A week older than the raw tier keeps (3 d): the long-term tier's 5-minute points. The raw
        # tier's URL answers nothing here, so a number that came from it would fail the run.
        ("week", {"RAW_RETENTION": "3d", "LONGTERM": True}, {"avg": 0.2, "p95": 2.5, "max": 0.2, "gpu_hours": 0.05}),
    ],
)
def test_the_period_is_read_from_the_tier_that_holds_it(history, tmp_path, every, tiers, tolerance):
    prom = history["url"]
    longterm = tiers.pop("LONGTERM", False)
    app = make_app(
        tmp_path,
        f"http://127.0.0.1:{free_port()}" if longterm else prom,
        LONGTERM_URL=prom if longterm else "",
        SCRAPE_INTERVAL=f"{STEP_S}s",
        **tiers,
    )
    end = history["h0"]
    app.extensions["report_clock"] = lambda: end
    client = app.test_client()
    admin = bearer(login(client, ADMIN)["access_token"])
    for host in GPU_HOSTS[:4]:
        assert (
            client.post("/api/v1/hosts", json={"id": host, "hostname": f"{host}.invalid"}, headers=admin).status_code
            == 201
        )
    calendar = {"every": every, "time": "00:00", "timezone": "UTC"} | ({"weekday": "sun"} if every == "week" else {})
    body = schedule_body("Tiers", calendar, scope={"hosts": GPU_HOSTS[:4]}, formats=["csv"], recipients=[])
    sid = client.post("/api/v1/reports/schedules", json=body, headers=admin).get_json()["id"]
    run = client.post(f"/api/v1/reports/schedules/{sid}/run", headers=admin).get_json()
    assert scheduler.tick(app) == [run["id"]]
    run = client.get(f"/api/v1/reports/schedules/{sid}/runs", headers=admin).get_json()["runs"][0]
    assert run["status"] == "done" and run["delivery"] is None, run  # no recipients: made and kept
    link = run["files"][0]["download_url"]
    table = client.get(link[link.index("/api/") :]).data.decode()
    rows = {row["host_id"]: row for row in csv.DictReader(io.StringIO(table))}
    assert sorted(rows) == GPU_HOSTS[:4]
    start = end - (DAY if every == "day" else 7 * DAY)
    for host in GPU_HOSTS[:4]:
        for metric in METRICS:
            want = expected(history["samples"][(host, metric)], start, end)
            for agg in ("avg", "p95", "max"):
                got = float(rows[host][f"{metric}:{agg}"])
                assert got == pytest.approx(want[agg], abs=tolerance[agg]), (host, metric, agg)
        want_hours = expected(history["samples"][(host, "gpu.utilization")], start, end)["gpu_hours"]
        assert float(rows[host]["gpu_hours"]) == pytest.approx(
            want_hours, abs=tolerance["gpu_hours"] * want_hours + 1e-3
        )


def test_a_run_whose_worker_died_is_taken_over_after_its_lease_and_given_up_after_the_last_attempt(history, tmp_path):
    app = make_app(tmp_path, history["url"], RAW_RETENTION="30d", REPORT_LEASE_S=180)
    now = history["h0"]
    app.extensions["report_clock"] = lambda: now
    client = app.test_client()
    admin = bearer(login(client, ADMIN)["access_token"])
    body = schedule_body("Lease", GOOD, scope={}, recipients=[], formats=["csv"])
    sid = client.post("/api/v1/reports/schedules", json=body, headers=admin).get_json()["id"]
    with app.app_context():  # as a worker leaves them when it is killed mid-report
        for attempts in (1, 3):
            run = ReportRun(
                schedule_pk=1, trigger="manual", period_start=now - DAY, period_end=now, status="running",
                attempts=attempts, lease_until=now + 100,
            )  # fmt: skip
            add_with_id(run)
        db.session.commit()
    assert scheduler.tick(app) == []  # their leases still hold
    app.extensions["report_clock"] = lambda: now + 101
    made = scheduler.tick(app)
    runs = client.get(f"/api/v1/reports/schedules/{sid}/runs", headers=admin).get_json()["runs"]
    assert len(made) == 1
    assert [(r["status"], r["attempts"]) for r in runs] == [("failed", 3), ("done", 2)], runs
    assert runs[0]["error"].startswith("gave up") and runs[1]["files"][0]["size_bytes"] > 0


def test_reports_go_over_starttls_to_a_server_whose_certificate_is_trusted(history, tmp_path, monkeypatch):
    """SMTP_REQUIRE_TLS (the default): STARTTLS, and the server's certificate is verified."""
    cert, key = self_signed_certificate(tmp_path)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    box = Mailbox(tls_context=server_tls, require_starttls=True).start()
    try:
        app = make_app(tmp_path, history["url"], RAW_RETENTION="30d", SMTP_SMARTHOST=f"127.0.0.1:{box.port}")
        app.extensions["report_clock"] = lambda: history["h0"]
        client = app.test_client()
        admin = bearer(login(client, ADMIN)["access_token"])
        r = client.post("/api/v1/reports/schedules", json=schedule_body("Over TLS", GOOD, scope={}), headers=admin)
        sid = r.get_json()["id"]
        runs_url = f"/api/v1/reports/schedules/{sid}/runs"

        client.post(f"/api/v1/reports/schedules/{sid}/run", headers=admin)
        scheduler.tick(app)  # the certificate is no CA's: refused, nothing sent
        run = client.get(runs_url, headers=admin).get_json()["runs"][0]
        assert run["status"] == "pending" and "CERTIFICATE_VERIFY_FAILED" in run["error"], run
        assert not box.messages

        monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # now trusted, as a site's own CA would be
        app.extensions["report_clock"] = lambda: history["h0"] + 61
        scheduler.tick(app)
        run = client.get(runs_url, headers=admin).get_json()["runs"][0]
        assert run["status"] == "sent", run
        assert sorted(attachments(box.messages[0][1])) == sorted(f["name"] for f in run["files"])
    finally:
        box.stop()
