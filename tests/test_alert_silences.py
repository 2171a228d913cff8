"""Silences and maintenance windows: their windows on a clock, the API, and Alertmanager keeping them."""

from __future__ import annotations

import shutil
import socket
import threading
from datetime import UTC, datetime, timedelta

import pytest
import requests

from fleetwatch.testing import services
from fleetwatch.testing.api import ADMIN, VIEWER, api_session, bearer, login, make_app
from fleetwatch.testing.waits import wait_until
from rules_compiler.alerts import RuleInvalid
from rules_compiler.silences import covers, matchers, occurrences, parse_recurring, parse_silence_scope

AM_CONFIG = "route: {receiver: nobody}\nreceivers: [{name: nobody}]\n"


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


# ---------------------------------------------------------------- windows on an injected clock


def test_a_recurring_window_opens_and_closes_on_schedule_in_its_time_zone():
    # Mondays and Tuesdays 02:00-03:00 Paris time; 2026-03-30 is the Monday after Europe's DST change.
    weekly = parse_recurring(
        {"weekdays": ["mon", "tue"], "time": "02:00", "duration": "1h", "timezone": "Europe/Paris"}
    )
    found = occurrences(weekly, _at("2026-03-22T00:00:00Z"), _at("2026-04-01T00:00:00Z"))
    assert found == [
        (_at("2026-03-23T01:00:00Z"), _at("2026-03-23T02:00:00Z")),  # CET, UTC+1
        (_at("2026-03-24T01:00:00Z"), _at("2026-03-24T02:00:00Z")),
        (_at("2026-03-30T00:00:00Z"), _at("2026-03-30T01:00:00Z")),  # CEST, UTC+2: still 02:00 on the wall
        (_at("2026-03-31T00:00:00Z"), _at("2026-03-31T01:00:00Z")),
    ]
    opened = [covers(None, None, weekly, _at(t)) for t in ("2026-03-23T00:59:59Z", "2026-03-23T01:00:00Z")]
    closed = [covers(None, None, weekly, _at(t)) for t in ("2026-03-23T01:59:59Z", "2026-03-23T02:00:00Z")]
    assert opened == [False, True] and closed == [True, False]
    assert not covers(None, None, weekly, _at("2026-03-25T01:30:00Z"))  # a Wednesday
    # A window in progress is still found when asked from inside it.
    assert occurrences(weekly, _at("2026-03-24T01:30:00Z"), _at("2026-03-24T01:31:00Z")) == [found[1]]


@pytest.mark.parametrize(
    "body, fragment",
    [
        ({"weekdays": ["mon"], "time": "02:00", "duration": "1h", "timezone": "Mars/Olympus"}, "unknown time zone"),
        ({"weekdays": ["someday"], "time": "02:00", "duration": "1h"}, "weekdays"),
        ({"weekdays": ["mon"], "time": "2am", "duration": "1h"}, "HH:MM"),
        ({"weekdays": ["mon"], "time": "02:00", "duration": "forever"}, "not a duration"),
    ],
)
def test_bad_recurring_windows_say_what_is_wrong(body, fragment):
    with pytest.raises(RuleInvalid, match=fragment):
        parse_recurring(body)


def test_a_tag_scope_becomes_the_ids_of_the_hosts_with_those_tags_escaped():
    inventory = {"a.b": {"rack": "r7"}, "c(d)": {"rack": "r7", "zone": "lab"}, "e": {"rack": "r8"}}
    scope = parse_silence_scope({"tags": {"rack": "r7"}})
    assert matchers(scope, inventory) == [
        {"name": "host_id", "value": r"a\.b|c\(d\)", "isRegex": True, "isEqual": True},
        {"name": "rule_id", "value": ".+", "isRegex": True, "isEqual": True},
    ]
    narrowed = parse_silence_scope({"tags": {"rack": "r7", "zone": "!=lab"}, "rule_ids": ["rule-001"]})
    assert matchers(narrowed, inventory) == [
        {"name": "rule_id", "value": "rule-001", "isRegex": False, "isEqual": True},
        {"name": "host_id", "value": "a.b", "isRegex": False, "isEqual": True},
    ]
    assert matchers(parse_silence_scope({"tags": {"rack": "r9"}}), inventory) is None  # no host: nothing to mute


# ---------------------------------------------------------------- the API, in-process


@pytest.fixture
def gateway_app(tmp_path):
    app = make_app(tmp_path, "http://127.0.0.1:1", ALERT_SILENCE_RECONCILE_S=0)
    client = app.test_client()
    admin = bearer(login(client, ADMIN)["access_token"])
    r = client.post("/api/v1/users", json={"email": VIEWER[0], "password": VIEWER[1], "role": "viewer"}, headers=admin)
    assert r.status_code == 201, r.get_json()
    return app, client, admin, bearer(login(client, VIEWER)["access_token"])


def _later(hours: float) -> str:
    return (datetime.now(UTC) + timedelta(hours=hours)).strftime("%Y-%m-%dT%H:%M:%SZ")


MONDAYS = {"weekdays": ["mon"], "time": "02:00", "duration": "1h"}


@pytest.mark.parametrize(
    "body, field",
    [
        ({"starts_at": _later(2), "ends_at": _later(1)}, "ends_at"),
        ({"recurring": {**MONDAYS, "timezone": "Nowhere/Land"}}, "recurring"),
        ({"starts_at": _later(1), "ends_at": _later(2), "recurring": MONDAYS}, "recurring"),
        ({"starts_at": _later(1)}, "ends_at"),
        ({"ends_at": _later(-1)}, "ends_at"),
        ({"ends_at": _later(1), "scope": {"rule_ids": ["rule-999"]}}, "scope"),
        ({"ends_at": _later(1), "scope": {"tags": {"ra ck": "r7"}}}, "scope"),
        ({"ends_at": _later(1), "scope": {"racks": ["r7"]}}, "scope"),
    ],
)  # fmt: skip
def test_a_bad_silence_is_a_400_naming_the_field_and_changes_nothing(gateway_app, body, field):
    _, client, admin, _ = gateway_app
    r = client.post("/api/v1/alerts/silences", json=body, headers=admin)
    assert r.status_code == 400, r.get_json()
    error = r.get_json()["error"]
    assert error["code"] == "VALIDATION_ERROR" and field in error["message"] + str(error["details"])
    assert client.get("/api/v1/alerts/silences", headers=admin).get_json()["total"] == 0


def test_admins_write_silences_viewers_read_them_and_every_write_is_audited(gateway_app):
    app, client, admin, viewer = gateway_app
    body = {"scope": {"tags": {"rack": "r7"}}, "ends_at": _later(2), "comment": "firmware"}
    assert client.post("/api/v1/alerts/silences", json=body, headers=viewer).status_code == 403
    created = client.post("/api/v1/alerts/silences", json=body, headers=admin)
    assert created.status_code == 201, created.get_json()  # Alertmanager is down: kept, made there later
    silence_id = created.get_json()["id"]
    shown = client.get(f"/api/v1/alerts/silences/{silence_id}", headers=viewer).get_json()
    assert shown["author"] == ADMIN[0] and shown["comment"] == "firmware" and shown["active"] is True
    assert shown["scope"] == {"tags": {"rack": "r7"}} and shown["recurring"] is None

    weekly = {"weekdays": ["sat"], "time": "23:30", "duration": "2h", "timezone": "America/New_York"}
    changed = client.put(f"/api/v1/alerts/silences/{silence_id}", json={"recurring": weekly}, headers=admin)
    assert changed.status_code == 200, changed.get_json()
    shown = client.get(f"/api/v1/alerts/silences/{silence_id}", headers=admin).get_json()
    assert shown["recurring"] == weekly and shown["starts_at"] is None and shown["ends_at"] is None
    assert client.put(f"/api/v1/alerts/silences/{silence_id}", json={"comment": "x"}, headers=viewer).status_code == 403
    assert client.delete(f"/api/v1/alerts/silences/{silence_id}", headers=admin).status_code == 200
    assert client.get(f"/api/v1/alerts/silences/{silence_id}", headers=admin).status_code == 404

    audit = client.get("/api/v1/audit", headers=admin).get_json()
    actions = [e["action"] for e in audit["events"] if e["target"] == silence_id]
    assert sorted(actions) == ["alert_silence_create", "alert_silence_delete", "alert_silence_update"]


@pytest.mark.integration
def test_a_host_shows_maintenance_while_a_window_covers_it(tmp_path):
    from gateway.alert_silences import maintenance

    with services.prometheus(tmp_path / "tsdb") as prometheus:  # empty: the hosts' status is judged, not cached
        app = make_app(tmp_path, prometheus.url, ALERT_SILENCE_RECONCILE_S=0)
        client = app.test_client()
        admin = bearer(login(client, ADMIN)["access_token"])
        for host_id, tags in (("r7-a", {"rack": "r7"}), ("r8-a", {"rack": "r8"})):
            r = client.post("/api/v1/hosts", json={"id": host_id, "hostname": f"{host_id}.example.com", "tags": tags},
                            headers=admin)  # fmt: skip
            assert r.status_code == 201, r.get_json()
        weekly = {"weekdays": ["mon"], "time": "02:00", "duration": "1h", "timezone": "UTC"}
        r = client.post("/api/v1/alerts/silences", json={"scope": {"tags": {"rack": "r7"}}, "recurring": weekly},
                        headers=admin)  # fmt: skip
        silence_id = r.get_json()["id"]
        with app.app_context():
            assert maintenance(["r7-a", "r8-a"], _at("2026-11-30T02:30:00Z")) == {"r7-a": silence_id}  # a Monday
            assert maintenance(["r7-a", "r8-a"], _at("2026-11-30T03:00:00Z")) == {}
        always = client.post("/api/v1/alerts/silences", json={"scope": {"hosts": ["r8-a"]}, "ends_at": _later(1)},
                             headers=admin)  # fmt: skip
        host = client.get("/api/v1/hosts/r8-a", headers=admin).get_json()["host"]
        assert (
            host["status"] == "maintenance" and host["status_reasons"][0] == f"maintenance: {always.get_json()['id']}"
        )
        listed = client.get("/api/v1/hosts", query_string={"status": "maintenance"}, headers=admin).get_json()
        assert [h["id"] for h in listed["hosts"]] == ["r8-a"]


# ---------------------------------------------------------------- against a real Alertmanager


def _am_silences(url: str, state: str = "active") -> list[dict]:
    return [s for s in requests.get(f"{url}/api/v2/silences", timeout=10).json() if s["status"]["state"] == state]


@pytest.mark.integration
def test_a_silence_survives_restarts_of_alertmanager_and_of_the_gateway(tmp_path):
    am = services.alertmanager(tmp_path / "am", AM_CONFIG).up()
    try:
        from gateway.alert_silences import start_reconciler

        settings = {"ALERTMANAGER_URL": am.url, "ALERT_SILENCE_RECONCILE_S": 0.5}
        app = make_app(tmp_path, "http://127.0.0.1:1", **settings)
        start_reconciler(app)  # as each gunicorn worker of `fleetwatch-gateway serve` does
        client = app.test_client()
        admin = bearer(login(client, ADMIN)["access_token"])
        body = {"scope": {"hosts": ["web-1", "web-2"]}, "ends_at": _later(1), "comment": "kernel update"}
        silence_id = client.post("/api/v1/alerts/silences", json=body, headers=admin).get_json()["id"]
        [made] = _am_silences(am.url)
        assert made["comment"] == f"{silence_id} in fleetwatch: kernel update" and made["createdBy"] == ADMIN[0]
        assert {"name": "host_id", "value": "web-1|web-2", "isRegex": True, "isEqual": True} in made["matchers"]

        # Alertmanager restarts having lost its data: the gateway makes the silence again.
        am.stop()
        shutil.rmtree(tmp_path / "am" / "data")
        am.up()  # (the gateway's reconcile, every 0.5 s here, may have made it again by the time this returns)
        remade = wait_until(lambda: _am_silences(am.url), what="the silence made again", timeout_s=20)
        assert [s["matchers"] for s in remade] == [made["matchers"]] and remade[0]["id"] != made["id"]

        # The gateway restarts (a new process on the same DB): the silence is there, not made twice.
        again = make_app(tmp_path, "http://127.0.0.1:1", **settings)
        client = again.test_client()
        admin = bearer(login(client, ADMIN)["access_token"])
        shown = client.get(f"/api/v1/alerts/silences/{silence_id}", headers=admin).get_json()
        assert shown["alertmanager_ids"] == [remade[0]["id"]]
        from gateway.alert_silences import reconcile_on_start

        with again.app_context():
            reconcile_on_start()
        assert [s["id"] for s in _am_silences(am.url)] == [remade[0]["id"]]

        # Deleted: its Alertmanager silence ends now.
        assert client.delete(f"/api/v1/alerts/silences/{silence_id}", headers=admin).status_code == 200
        assert _am_silences(am.url) == []
    finally:
        am.stop()


@pytest.mark.integration
def test_a_recurring_window_becomes_silences_for_its_occurrences_within_a_day(tmp_path):
    am = services.alertmanager(tmp_path / "am", AM_CONFIG).up()
    try:
        app = make_app(tmp_path, "http://127.0.0.1:1", ALERTMANAGER_URL=am.url, ALERT_SILENCE_RECONCILE_S=0)
        client = app.test_client()
        admin = bearer(login(client, ADMIN)["access_token"])
        soon = datetime.now(UTC) + timedelta(hours=2)
        every_day = {"weekdays": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"], "time": soon.strftime("%H:%M"),
                     "duration": "30m", "timezone": "UTC"}  # fmt: skip
        r = client.post("/api/v1/alerts/silences", json={"recurring": every_day, "scope": {}}, headers=admin)
        assert r.status_code == 201, r.get_json()
        [pending] = _am_silences(am.url, "pending")  # today's: tomorrow's starts beyond the 24 h horizon
        starts = datetime.fromisoformat(pending["startsAt"].replace("Z", "+00:00"))
        assert starts.strftime("%H:%M") == soon.strftime("%H:%M") and starts > datetime.now(UTC)
        assert pending["matchers"] == [{"name": "rule_id", "value": ".+", "isRegex": True, "isEqual": True}]
    finally:
        am.stop()


# ---------------------------------------------------------------- the stack: rules firing, email muted


def _text(message) -> str:
    """An email's decoded text, every part (quoted-printable would split a host id across lines)."""
    parts = message.walk() if message.is_multipart() else [message]
    return "".join(p.get_payload(decode=True).decode(errors="replace") for p in parts if not p.is_multipart())


def test_a_maintenance_window_over_a_tag_mutes_those_hosts_email_and_records_their_events(
    stack, mailbox, node_exporter
):
    api = api_session(stack.urls()["gateway"])
    base = f"{api.base}/api/v1"
    here, tagged = socket.gethostname(), "node-exporter-reference"  # the stack's two scraped hosts
    # The same target as the stack's own file for it: Prometheus scrapes it once.
    address = node_exporter.removeprefix("http://").removesuffix("/metrics")
    host = {"id": tagged, "hostname": "reference.example.com", "exporter": address, "tags": {"rack": "r7"}}
    assert api.post(f"{base}/hosts", json=host, timeout=10).status_code == 201
    window = {"scope": {"tags": {"rack": "r7"}}, "ends_at": _later(1), "comment": "rack r7 firmware"}
    silence_id = api.post(f"{base}/alerts/silences", json=window, timeout=10).json()["id"]
    rule = {"name": "Maintenance test", "expression": "cpu.utilization >= 0", "duration": "static",
            "channels": ["email:maint@example.com"]}  # fmt: skip
    rule_id = api.post(f"{base}/alerts/rules", json=rule, timeout=10).json()["id"]
    try:
        assert api.get(f"{base}/hosts/{tagged}", timeout=10).json()["host"]["status"] == "maintenance"

        def mails(host_id: str) -> list[str]:
            texts = [_text(m) for to, m in mailbox.messages if "maint@example.com" in to]
            return [t for t in texts if rule_id in t and host_id in t]

        wait_until(lambda: len(mails(here)) >= 3, what="three notifications about the untagged host")
        assert mails(tagged) == []
        events = wait_until(
            lambda: [
                e
                for e in api.get(f"{base}/alerts/events", params={"rule_id": rule_id}, timeout=10).json()["alerts"]
                if e["host_id"] == tagged
            ],
            what="the muted alert's event",
        )
        assert events[0]["state"] == "firing" and events[0]["silenced_by"] == silence_id

        # The window closes: the tagged host's email goes out.
        assert api.delete(f"{base}/alerts/silences/{silence_id}", timeout=10).status_code == 200
        wait_until(lambda: mails(tagged), what="the email once the window closed")
    finally:
        api.delete(f"{base}/alerts/rules/{rule_id}", timeout=10)
        api.delete(f"{base}/hosts/{tagged}", timeout=10)


@pytest.mark.integration
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_workers_reconciling_at_once_leave_one_alertmanager_silence_per_window(tmp_path, request, backend):
    from gateway.alert_silences import reconcile

    am = services.alertmanager(tmp_path / "am", AM_CONFIG).up()
    try:
        # Two gateways on one DB and one Alertmanager (two workers, or two replicas).
        settings = {"ALERTMANAGER_URL": am.url, "ALERT_SILENCE_RECONCILE_S": 0}
        if backend == "postgresql":
            settings["SQLALCHEMY_DATABASE_URI"] = request.getfixturevalue("postgres").new_database()
        workers = [make_app(tmp_path, "http://127.0.0.1:1", **settings) for _ in range(2)]
        client = workers[0].test_client()
        admin = bearer(login(client, ADMIN)["access_token"])
        for i in range(3):
            body = {"scope": {"hosts": [f"db-{i}"]}, "ends_at": _later(1)}
            assert client.post("/api/v1/alerts/silences", json=body, headers=admin).status_code == 201
        am.stop()
        shutil.rmtree(tmp_path / "am" / "data")  # Alertmanager lost them all
        am.up()

        start = threading.Barrier(4)

        def run(app) -> None:
            with app.app_context():
                start.wait()
                reconcile()

        threads = [threading.Thread(target=run, args=(app,)) for app in workers * 2]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        active = _am_silences(am.url)
        assert sorted(m["value"] for s in active for m in s["matchers"] if m["name"] == "host_id") == [
            "db-0",
            "db-1",
            "db-2",
        ]
        listed = client.get("/api/v1/alerts/silences", headers=admin).get_json()["silences"]
        assert sorted(i for s in listed for i in s["alertmanager_ids"]) == sorted(s["id"] for s in active)
    finally:
        am.stop()


@pytest.mark.integration
def test_a_host_given_the_tag_joins_the_silence_at_the_next_reconcile(tmp_path):
    from gateway.alert_silences import reconcile

    am = services.alertmanager(tmp_path / "am", AM_CONFIG).up()
    try:
        app = make_app(tmp_path, "http://127.0.0.1:1", ALERTMANAGER_URL=am.url, ALERT_SILENCE_RECONCILE_S=0)
        client = app.test_client()
        admin = bearer(login(client, ADMIN)["access_token"])
        for host_id, rack in (("a-1", "r7"), ("b-1", "r8")):
            body = {"id": host_id, "hostname": f"{host_id}.example.com", "tags": {"rack": rack}}
            assert client.post("/api/v1/hosts", json=body, headers=admin).status_code == 201
        window = {"scope": {"tags": {"rack": "r7"}}, "ends_at": _later(1)}
        assert client.post("/api/v1/alerts/silences", json=window, headers=admin).status_code == 201
        [before] = _am_silences(am.url)
        assert {"name": "host_id", "value": "a-1", "isRegex": False, "isEqual": True} in before["matchers"]

        assert client.patch("/api/v1/hosts/b-1", json={"tags": {"rack": "r7"}}, headers=admin).status_code == 200
        with app.app_context():
            reconcile()
        [after] = _am_silences(am.url)  # the old one expired, one with both hosts in force
        assert {"name": "host_id", "value": "a-1|b-1", "isRegex": True, "isEqual": True} in after["matchers"]
        assert after["id"] != before["id"]
    finally:
        am.stop()


@pytest.mark.integration
def test_the_served_gateways_workers_remake_what_alertmanager_lost(tmp_path):
    am = services.alertmanager(tmp_path / "am", AM_CONFIG).up()
    env = {"FLEETWATCH_ALERTMANAGER_URL": am.url, "FLEETWATCH_ALERT_SILENCE_RECONCILE_S": "0.5"}
    gateway = services.gateway(tmp_path / "gw", "http://127.0.0.1:1", args=("--workers=2",), env=env)
    try:
        gateway.up()
        api = api_session(gateway.url)
        body = {"scope": {"hosts": ["web-1"]}, "ends_at": _later(1), "comment": "served"}
        assert api.post(f"{gateway.url}/api/v1/alerts/silences", json=body, timeout=30).status_code == 201
        [made] = _am_silences(am.url)
        am.stop()
        shutil.rmtree(tmp_path / "am" / "data")
        am.up()
        remade = wait_until(lambda: _am_silences(am.url), what="the silence made again by a worker", timeout_s=20)
        assert [s["matchers"] for s in remade] == [made["matchers"]]
    finally:
        gateway.stop()
        am.stop()
