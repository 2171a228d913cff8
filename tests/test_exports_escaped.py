"""CSV exports cannot carry spreadsheet formulas in from label values (issue 13 #12: process names reach them)."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta

import pytest

from fleetwatch.testing import services
from fleetwatch.testing.api import ADMIN, bearer, login, make_app
from fleetwatch.testing.prom import PromClient

HOSTILE = ['=HYPERLINK("http://x","y")', "+1+cmd|' /C calc'!A0", "-bash", "@SUM(A1)"]


@pytest.mark.integration
def test_label_values_that_start_a_formula_are_exported_as_text(tmp_path):
    with services.prometheus(tmp_path / "prom") as prom:
        app = make_app(tmp_path, prom.url)
        client = app.test_client()
        admin = bearer(login(client, ADMIN)["access_token"])
        key = client.post("/api/v1/api-keys", json={"name": "k", "host_id": "h-csv"}, headers=admin).get_json()["key"]
        ts = (datetime.now(UTC) - timedelta(seconds=30)).isoformat()  # a step of the export is after it
        points = [
            {
                "metric": "proc.top.cpu_pct",
                "ts": ts,
                "value": -1.5 + n,
                "labels": {"pid": str(n), "name": name, "user": "@root"},
            }
            for n, name in enumerate(HOSTILE)
        ]
        r = client.post(
            "/api/v1/ingest/metrics", json={"host_id": "h-csv", "metrics": points}, headers={"X-API-Key": key}
        )
        assert r.status_code == 200 and r.get_json()["accepted"] == len(HOSTILE), r.get_json()
        PromClient(prom.url).wait_for('fleet:proc_top_cpu_pct{host_id="h-csv"}', 10)
        body = {"host_id": "h-csv", "metric": "proc.top.cpu_pct", "range": "1h"}
        export = client.post("/api/v1/reports/export", json=body, headers=admin).get_json()
        assert export.get("rows"), export
        path = export["download_url"].split("://", 1)[1].split("/", 1)[1]
        rows = list(csv.DictReader(io.StringIO(client.get("/" + path).get_data(as_text=True))))
    assert {r["name"] for r in rows} == {"'" + name for name in HOSTILE}
    assert {r["user"] for r in rows} == {"'@root"}
    assert {float(r["value"]) for r in rows} == {-1.5 + n for n in range(len(HOSTILE))}  # numbers stay numbers


def test_scheduled_report_csv_writes_a_pushed_hostname_as_text():
    """A pushing agent names its host (the heartbeat's hostname): the report's CSV must not run it."""
    from gateway.report_data import ReportData, Source, Stats
    from gateway.report_render import Report, render_csv

    data = ReportData(
        0, 3600, Source("raw", "raw", 5), ["cpu.utilization"], {"h1": {"cpu.utilization": Stats(1, 2, 3)}}, {}, {}, 60
    )
    report = Report("t", "every host", "UTC", [("h1", '=HYPERLINK("http://x","y")')], data, [], {})
    rows = list(csv.DictReader(io.StringIO(render_csv(report).decode())))
    assert rows[0]["hostname"] == '\'=HYPERLINK("http://x","y")' and rows[0]["cpu.utilization:avg"] == "1.000"
