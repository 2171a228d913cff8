"""Report schedules through the API: validation, roles, audit, a failing run; and the calendar they run on.

No Prometheus here (its URL answers nothing): what a user sees of the
schedules themselves. The reports they make are in tests/test_reports.py.
"""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from fleetwatch.testing.api import ADMIN, VIEWER, bearer, login, make_app
from gateway import scheduler
from gateway.report_calendar import latest_due, next_after, previous

DAY = 86400
TZ = "Europe/Berlin"
METRICS = ["cpu.utilization", "gpu.utilization"]
GOOD = {"every": "week", "weekday": "mon", "time": "08:00", "timezone": TZ}


def schedule_body(name: str, calendar: dict, **extra) -> dict:
    return {
        "name": name,
        "scope": {"tags": {"role": "gpu"}},
        "metrics": METRICS,
        "schedule": calendar,
        "formats": ["pdf", "csv"],
        "recipients": ["ops@example.com", "cto@example.com"],
        **extra,
    }


# --- the calendar (pure) ----------------------------------------------------------------------


def test_weekly_occurrences_keep_local_time_across_daylight_saving():
    calendar = {"every": "week", "weekday": "mon", "time": "08:00", "timezone": TZ}
    # Friday 2026-03-27: the clocks go forward on Sunday the 29th.
    first = next_after(calendar, int(datetime(2026, 3, 27, tzinfo=UTC).timestamp()))
    second = next_after(calendar, first)
    for ts in (first, second):
        local = datetime.fromtimestamp(ts, ZoneInfo(TZ))
        assert (local.strftime("%a %H:%M")) == "Mon 08:00"
    assert second - first == 7 * DAY  # both after the change
    assert previous(calendar, second) == first
    monthly = {"every": "month", "day": 1, "time": "00:00", "timezone": "UTC"}
    jan = int(datetime(2026, 1, 1, tzinfo=UTC).timestamp())
    assert next_after(monthly, jan) == int(datetime(2026, 2, 1, tzinfo=UTC).timestamp())
    assert previous(monthly, jan) == int(datetime(2025, 12, 1, tzinfo=UTC).timestamp())
    # Five weeks down: only the newest missed occurrence is reported.
    assert latest_due(calendar, first, first + 5 * 7 * DAY + 3600) == first + 5 * 7 * DAY


# --- the API's checks -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    app = make_app(tmp_path_factory.mktemp("report-api"), "http://127.0.0.1:1", SMTP_SMARTHOST="127.0.0.1:25")
    client = app.test_client()
    admin = bearer(login(client, ADMIN)["access_token"])
    r = client.post("/api/v1/users", json={"email": VIEWER[0], "password": VIEWER[1], "role": "viewer"}, headers=admin)
    assert r.status_code == 201, r.get_json()
    for host in ("rpt-a", "rpt-b"):
        r = client.post("/api/v1/hosts", json={"id": host, "hostname": f"{host}.invalid"}, headers=admin)
        assert r.status_code == 201, r.get_json()
    return client, admin, bearer(login(client, VIEWER)["access_token"])


@pytest.mark.parametrize(
    "change,field",
    [
        ({"schedule": {**GOOD, "timezone": "Mars/Olympus"}}, "timezone"),
        ({"schedule": {**GOOD, "weekday": "monday"}}, "weekday"),
        ({"schedule": {**GOOD, "time": "24:00"}}, "time"),
        ({"schedule": {**GOOD, "time": "8am"}}, "time"),
        ({"schedule": {"every": "week", "time": "08:00"}}, "weekday"),
        ({"schedule": {**GOOD, "every": "fortnight"}}, "every"),
        ({"schedule": {"every": "month", "day": 31, "time": "08:00"}}, "day"),
        ({"metrics": ["cpu.utilisation"]}, "metrics"),
        ({"metrics": ["proc.top.cpu_pct"]}, "metrics"),
        ({"recipients": ["not-an-address"]}, "recipients"),
        ({"formats": ["docx"]}, "formats"),
        ({"scope": {"hosts": ["rpt-a", "no-such-host"]}}, "scope.hosts"),
        ({"scope": {"tags": {"role": "gpu"}, "hosts": ["rpt-a"]}}, "scope"),
        ({"name": ""}, "name"),
        ({"name": "Weekly\r\nBcc: everyone@example.com"}, "name"),
    ],
)
def test_bad_schedules_are_400_and_store_nothing(api, change, field):
    client, admin, _ = api
    before = client.get("/api/v1/reports/schedules", headers=admin).get_json()["total"]
    r = client.post("/api/v1/reports/schedules", json=schedule_body("bad", GOOD) | change, headers=admin)
    assert r.status_code == 400, r.get_json()
    error = r.get_json()["error"]
    assert error["code"] == "VALIDATION_ERROR" and error["message"]
    assert field in str(error["details"]) or field in error["message"], error
    assert client.get("/api/v1/reports/schedules", headers=admin).get_json()["total"] == before


def test_schedules_are_admin_only_audited_and_editable(api):
    client, admin, viewer = api
    body = schedule_body("Weekly GPU fleet", GOOD, scope={"hosts": ["rpt-a"]})
    del body["metrics"]
    assert client.post("/api/v1/reports/schedules", json=body, headers=viewer).status_code == 403
    assert client.get("/api/v1/reports/schedules", headers=viewer).status_code == 403
    r = client.post("/api/v1/reports/schedules", json=body, headers=admin)
    assert r.status_code == 201, r.get_json()
    made = r.get_json()
    assert made["metrics"] == [
        "cpu.utilization",
        "mem.used_pct",
        "gpu.utilization",
        "gpu.memory_used_pct",
        "disk.used_pct",
    ]
    local = datetime.fromisoformat(made["next_run_at"].replace("Z", "+00:00")).astimezone(ZoneInfo(TZ))
    assert local.strftime("%a %H:%M") == "Mon 08:00" and local > datetime.now(UTC)
    sid = made["id"]
    daily = {"every": "day", "time": "06:30", "timezone": "UTC"}
    r = client.put(f"/api/v1/reports/schedules/{sid}", json={**body, "schedule": daily}, headers=admin)
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["next_run_at"].endswith("T06:30:00Z")
    assert client.put(f"/api/v1/reports/schedules/{sid}", json=body, headers=viewer).status_code == 403
    assert client.get(f"/api/v1/reports/schedules/{sid}", headers=admin).get_json()["schedule"] == daily
    assert client.delete(f"/api/v1/reports/schedules/{sid}", headers=viewer).status_code == 403
    assert client.delete(f"/api/v1/reports/schedules/{sid}", headers=admin).status_code == 204
    assert client.get(f"/api/v1/reports/schedules/{sid}", headers=admin).status_code == 404
    audit = client.get("/api/v1/audit?limit=1000", headers=admin).get_json()
    actions = [e["action"] for e in audit["events"] if e.get("target") == sid]
    assert {"report_schedule_create", "report_schedule_update", "report_schedule_delete"} <= set(actions)


def test_a_failed_run_shows_its_error_and_is_retried_until_it_gives_up(api):
    client, admin, viewer = api
    app = client.application
    r = client.post("/api/v1/reports/schedules", json=schedule_body("Failing", GOOD, scope={}), headers=admin)
    sid = r.get_json()["id"]
    assert client.post(f"/api/v1/reports/schedules/{sid}/run", headers=viewer).status_code == 403
    r = client.post(f"/api/v1/reports/schedules/{sid}/run", headers=admin)
    assert r.status_code == 202, r.get_json()
    clock = app.extensions["report_clock"]
    now = clock()
    for attempt in range(1, 4):  # Prometheus does not answer: retried a minute later, three times in all
        app.extensions["report_clock"] = lambda at=now + 61 * attempt: at
        scheduler.tick(app)
        run = client.get(f"/api/v1/reports/schedules/{sid}/runs", headers=admin).get_json()["runs"][0]
        assert run["attempts"] == attempt and "Prometheus does not answer" in run["error"], run
        assert run["status"] == ("failed" if attempt == 3 else "pending") and run["files"] == []
    app.extensions["report_clock"] = clock
    assert client.delete(f"/api/v1/reports/schedules/{sid}", headers=admin).status_code == 204
