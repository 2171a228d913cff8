"""Alert rules through the API, compiled into the real Prometheus and Alertmanager, delivered for real.

The stack's own gateway (gunicorn, as `fleetwatch up` runs it) is driven over
HTTP: it writes the stack's rule files and Alertmanager config, so what these
tests see is what a user sees. Email goes to an SMTP server on loopback,
webhooks to an HTTP receiver on loopback.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
import requests
import yaml

from fleetwatch.testing.api import ADMIN, VIEWER, api_session, bearer, http_login, login, make_app
from fleetwatch.testing.tls import self_signed_certificate
from fleetwatch.testing.waits import free_port, wait_until
from fleetwatch.testing.webhooks import Receiver
from gateway.alert_events import go_time
from rules_compiler import group_phase
from rules_compiler.alertmanager import Delivery, render_alertmanager_config
from rules_compiler.alerts import (
    GROUP,
    LAG,
    STARTER_RULES,
    AlertRule,
    RuleInvalid,
    is_alert_group,
    parse_channel,
    parse_duration,
    parse_expression,
    parse_scope,
    render_alert_rules,
)
from rules_compiler.notify_templates import render_templates
from rules_compiler.recording import GROUP as LAYER_GROUP

GOLDEN = Path(__file__).parent / "golden"
NASTY = 'Hot "CPU" {{ .Foo }}\n}} {x="y"} \\ end'


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.stop()


@pytest.fixture(scope="module")
def api(stack):
    """A requests session logged in as admin on the stack's gateway; a viewer's token beside it."""
    s = api_session(stack.urls()["gateway"])
    r = s.post(f"{s.base}/api/v1/users", json={"email": VIEWER[0], "password": VIEWER[1], "role": "viewer"}, timeout=10)
    assert r.status_code in (201, 409), r.text
    s.viewer = http_login(s.base, VIEWER)
    return s


def url(api, path: str) -> str:
    return f"{api.base}/api/v1/alerts{path}"


def live_rules(stack) -> dict[str, dict]:
    """Prometheus's own view: the alerting rules it evaluates, by alert name."""
    groups = requests.get(f"{stack.urls()['prometheus']}/api/v1/rules", params={"type": "alert"}, timeout=10).json()
    return {r["name"]: r for g in groups["data"]["groups"] if is_alert_group(g["name"]) for r in g["rules"]}


# ---------------------------------------------------------------- the compiler


def test_expression_grammar_compiles_to_promql():
    assert parse_expression("cpu.utilization > 90").promql() == "fleet:cpu_utilization > 90"
    assert (
        parse_expression("gpu.utilization > 85 OR gpu.memory_used_pct > 90").promql()
        == "fleet:gpu_utilization > 85 or fleet:gpu_memory_used_pct > 90"
    )
    assert (
        parse_expression("cpu.core.3 >= 0.5 and mem.used_pct < 10").promql()
        == 'fleet:cpu_core{core="3"} >= 0.5 and on(host_id) fleet:mem_used_pct < 10'
    )
    assert str(parse_expression("  cpu.utilization   >90  or   no heartbeat for 2m")) == (
        "cpu.utilization > 90 OR no heartbeat for 2m"
    )


@pytest.mark.parametrize(
    "field, call, fragment",
    [
        ("expression", lambda: parse_expression("cpu.utilization >> 90"), "is not '<metric> <op> <number>'"),
        ("expression", lambda: parse_expression("cpu.utilisation > 90"), "unknown metric 'cpu.utilisation'"),
        ("expression", lambda: parse_expression("cpu.utilization > 90 OR"), "is not"),
        ("expression", lambda: parse_expression('cpu.utilization > 90"} or vector(1)'), "is not"),
        ("expression", lambda: parse_expression(""), "empty"),
        ("duration", lambda: parse_duration("10 minutes"), "is not a duration"),
        ("duration", lambda: parse_duration("30d"), "at most 7d"),
        ("duration", lambda: parse_duration("1500ms"), "is not a duration"),
        ("scope", lambda: parse_scope({"tags": {"ro-le": "web"}}), "must be letters"),
        ("scope", lambda: parse_scope({"tags": {"role": 3}}), "must be a string"),
        ("scope", lambda: parse_scope("role"), "is not tag=value"),
        ("channels", lambda: parse_channel("pager:123"), "is not email:ADDRESS"),
        ("channels", lambda: parse_channel("email:not-an-address"), "is not an email address"),
        ("channels", lambda: parse_channel("webhook:ftp://x"), "is not an http(s) URL"),
        ("channels", lambda: parse_channel('slack:https://hooks.slack.com/x#ops{{ "x" }}'), "not a Slack channel"),
    ],
)
def test_invalid_fields_say_what_is_wrong(field, call, fragment):
    with pytest.raises(RuleInvalid) as err:
        call()
    assert err.value.field == field
    assert fragment in str(err.value)


def test_one_grammar_of_durations_for_config_and_rules():
    from gateway.series import duration_s
    from rules_compiler.promql import seconds

    assert (seconds("500ms"), seconds(" 5s"), seconds("1w")) == (0.5, 5, 604800)
    assert (duration_s("7d"), duration_s(300)) == (604800, 300)  # the environment may give bare seconds
    assert (parse_duration("1w"), parse_duration("static"), parse_duration("2000ms")) == (604800, 0, 2)
    for bad in ("1.5h", "5 minutes", "1h30m", "", "s"):
        with pytest.raises(ValueError, match="not a duration"):
            seconds(bad)


def test_unknown_metric_lists_the_valid_ones():
    with pytest.raises(RuleInvalid) as err:
        parse_expression("gpu.utilisation > 1")
    assert "gpu.utilization" in err.value.details["valid"]


def _starter_rules() -> list[AlertRule]:
    channels = (parse_channel("email:ops@example.com"), parse_channel("webhook:https://hooks.example.com/x"))
    return [
        # Heartbeat rules grouped per rule: a rack down is one message (one a minute on a shared channel at most).
        AlertRule(rid, name, parse_expression(e), parse_duration(d), parse_scope(s), channels, sev,
                  group_by="rule" if "heartbeat" in e else "host")
        for rid, name, e, d, s, sev in STARTER_RULES
    ]  # fmt: skip


def _delivery() -> Delivery:
    return Delivery(
        "http://127.0.0.1:8080/api/v1/alerts/webhook",
        "token",
        smtp_smarthost="127.0.0.1:25",
        templates_file="/var/lib/fleetwatch/alertmanager/templates/fleetwatch-0123456789ab.tmpl",
        channel_max_per_min=1,
    )


@pytest.mark.parametrize(
    "name, render",
    [
        ("alerts.yml", lambda: render_alert_rules(_starter_rules(), 30, "r1")),
        ("alertmanager.yml", lambda: render_alertmanager_config(_starter_rules(), _delivery())),
    ],
)
def test_starter_set_compiles_to_the_golden_files(name, render):
    text = render()
    if os.environ.get("UPDATE_GOLDEN"):
        (GOLDEN / name).write_text(text)
    assert text == (GOLDEN / name).read_text()


def test_hostile_names_and_tags_compile_to_files_promtool_and_amtool_accept(tmp_path):
    rule = AlertRule(
        "rule-900",
        NASTY,
        parse_expression("cpu.utilization > 1"),
        60,
        parse_scope({"tags": {"role": 'we"b}\n', "zone": "!=a{b}\\"}}),
        (parse_channel("slack:https://hooks.slack.com/services/T/B/X#ops-team"),),
    )
    rules, am, templates = tmp_path / "rules.yml", tmp_path / "am.yml", tmp_path / "fleetwatch.tmpl"
    rules.write_text(render_alert_rules([rule], 30, "r1"))
    templates.write_text(render_templates('https://gw.example.com/{{ "x" }}"', "https://grafana.example.com"))
    am.write_text(render_alertmanager_config([rule], replace(_delivery(), templates_file=str(templates))))
    subprocess.run(["promtool", "check", "rules", str(rules)], check=True, capture_output=True)
    checked = subprocess.run(["amtool", "check-config", str(am)], check=True, capture_output=True, text=True)
    assert " - 1 templates\n  SUCCESS" in checked.stdout  # amtool parsed them
    compiled = yaml.safe_load(rules.read_text())["groups"][0]["rules"][0]
    assert compiled["alert"] == "rule-900"
    assert 'fleet_host_info{role="we\\"b}\\n"}' in compiled["expr"]
    assert 'unless on(host_id) fleet_host_info{zone="a{b}\\\\"}' in compiled["expr"]


# ---------------------------------------------------------------- through the API, live


def test_starter_set_is_installed_and_live(api, stack):
    rules = api.get(url(api, "/rules"), timeout=10).json()["rules"]
    assert {r["id"] for r in rules} >= {f"rule-00{i}" for i in range(1, 7)}
    starter = {r["id"]: r for r in rules}
    assert starter["rule-001"]["expression"] == "cpu.utilization > 90"
    assert starter["rule-001"]["scope"] == {"tags": {"role": "!=gpu-only"}}
    assert starter["rule-006"]["expression"] == "no heartbeat for 2m"
    assert set(live_rules(stack)) >= {f"rule-00{i}" for i in range(1, 7)}


def test_prometheus_starts_the_alert_group_its_lag_after_the_layer(api, stack):
    """The group's name (fleet-alerts or fleet-alerts-N) puts it LAG of the layer's interval after the
    layer's group, whose files Prometheus reports; each starts at the phase group_phase computes."""

    def evaluated() -> list[dict] | None:
        groups = requests.get(f"{stack.urls()['prometheus']}/api/v1/rules", timeout=10).json()["data"]["groups"]
        ours = [g for g in groups if g["name"] == LAYER_GROUP or is_alert_group(g["name"])]
        return ours if len(ours) == 2 and all(go_time(g["lastEvaluation"]) for g in ours) else None

    groups = wait_until(evaluated, 30, "the layer's and the alert group evaluated")
    layer = next(g for g in groups if g["name"] == LAYER_GROUP)
    ours = next(g for g in groups if is_alert_group(g["name"]))
    assert ours["file"] == str(Path(layer["file"]).with_name("fleet-alerts.yml"))  # beside it, as guessed

    def started(group: dict) -> float:
        # lastEvaluation is when an evaluation began: its slot plus the scheduler's few milliseconds
        # (tens on a busy machine: the interval here is 1 s).
        at = go_time(group["lastEvaluation"]).timestamp()
        late = (at - group_phase.offset_s(group["file"], group["name"], group["interval"])) % group["interval"]
        assert late < 0.1, (group["name"], late)
        return at

    every = layer["interval"]
    lag = (started(ours) - started(layer)) % every / every
    # Within a tenth of the interval of LAG either side, measured round the circle: a start late by
    # the scheduler's milliseconds past the interval's end wraps to its beginning.
    assert (lag - LAG[0] + 0.1) % 1 <= LAG[1] - LAG[0] + 0.2, (ours["name"], lag)


@pytest.mark.parametrize("interval_s", [1.0, 15.0, 30.0, 60.0])
def test_the_alert_group_is_named_for_its_lag_wherever_the_files_lie(interval_s):
    layer_every = 15.0 if interval_s >= 15 else interval_s
    for n in range(50):
        rules = f"/srv/fleet-{n}/state/rules"
        after = (group_phase.offset_s(f"{rules}/fleet-normalisation.yml", LAYER_GROUP, layer_every), layer_every)
        name = group_phase.name_lagging(f"{rules}/fleet-alerts.yml", GROUP, interval_s, after, LAG)
        assert is_alert_group(name)
        started = group_phase.offset_s(f"{rules}/fleet-alerts.yml", name, interval_s)
        assert LAG[0] <= (started - after[0]) % layer_every / layer_every <= LAG[1]
    # Intervals that are not a multiple of the layer's drift through its phases: no name helps.
    assert group_phase.name_lagging("/r/fleet-alerts.yml", GROUP, 20.0, (3.0, 15.0), LAG) == GROUP


def test_xxh64_matches_the_reference_vectors():
    for data, digest in [
        (b"", 0xEF46DB3751D8E999),
        (b"abc", 0x44BC2CF5AD770999),
        (b"Nobody inspects the spammish repetition", 0xFBCEA83C8A378BF1),  # past one 32-byte stripe
    ]:
        assert group_phase.xxh64(data) == digest


@pytest.mark.parametrize(
    "body, field",
    [
        ({"name": "x", "expression": "cpu.utilization >> 90"}, "expression"),
        ({"name": "x", "expression": "cpu.nonsense > 90"}, "expression"),
        ({"name": "x", "expression": "cpu.utilization > 90", "duration": "soon"}, "duration"),
        ({"name": "x", "expression": "cpu.utilization > 90", "scope": {"tags": {"a b": "c"}}}, "scope"),
        ({"name": "x", "expression": "cpu.utilization > 90", "channels": ["sms:+123"]}, "channels"),
        ({"name": "x", "expression": "cpu.utilization > 90", "severity": "apocalyptic"}, "severity"),
        ({"expression": "cpu.utilization > 90"}, "name"),
    ],
)
def test_invalid_rule_is_a_400_and_changes_nothing(api, stack, body, field):
    before_db = api.get(url(api, "/rules"), timeout=10).json()["total"]
    before_live = {name: r["annotations"]["fleet_revision"] for name, r in live_rules(stack).items()}
    r = api.post(url(api, "/rules"), json=body, timeout=10)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] == "VALIDATION_ERROR"
    assert field in error["message"]
    assert api.get(url(api, "/rules"), timeout=10).json()["total"] == before_db
    assert {name: r["annotations"]["fleet_revision"] for name, r in live_rules(stack).items()} == before_live


def test_viewer_cannot_write_rules(api):
    r = requests.post(url(api, "/rules"), json={"name": "x", "expression": "cpu.utilization > 1"}, headers=api.viewer)
    assert r.status_code == 403
    assert requests.get(url(api, "/rules"), headers=api.viewer, timeout=10).status_code == 200


def test_hostile_name_reaches_alerts_verbatim(api, stack, prom):
    r = api.post(url(api, "/rules"), json={"name": NASTY, "expression": "cpu.utilization >= 0", "duration": "static"})
    assert r.status_code == 201, r.text
    rule_id = r.json()["id"]
    try:
        assert rule_id in live_rules(stack)  # live by the time the API answered
        firing = prom.wait_for(f'ALERTS{{alertname="{rule_id}", alertstate="firing"}}', timeout_s=20)
        assert firing[0]["metric"]["rule_name"] == NASTY
        assert api.get(url(api, f"/rules/{rule_id}"), timeout=10).json()["name"] == NASTY
    finally:
        assert api.delete(url(api, f"/rules/{rule_id}"), timeout=10).status_code == 200
    assert rule_id not in live_rules(stack)


def test_rule_fires_notifies_is_acknowledged_and_resolves(api, stack, mailbox, receiver):
    host = socket.gethostname()  # the stack's own exporter; node-exporter-reference is the second host
    body = {
        "name": "Busy test CPU",
        "expression": "cpu.utilization >= 0",  # always true: the test decides when it ends
        "duration": "3s",
        "channels": ["email:oncall@example.com", f"webhook:{receiver.url}", f"slack:{receiver.url}#ops"],
        "severity": "critical",
    }
    created = api.post(url(api, "/rules"), json=body, timeout=10)
    assert created.status_code == 201, created.text
    rule_id = created.json()["id"]
    assert created.json()["status"] == "created"
    assert live_rules(stack)[rule_id]["duration"] == 3

    # Fires: a POST at the webhook and an email at the SMTP server, for both hosts.
    wait_until(lambda: receiver.alerts(rule_id=rule_id, host_id=host), what="webhook notification")
    wait_until(
        lambda: [m for to, m in mailbox.messages if "oncall@example.com" in to and rule_id in m.as_string()],
        what="email",
    )
    slack = wait_until(lambda: [p for p in receiver.posts if "attachments" in p], what="Slack message")
    assert slack[0]["channel"] == "#ops" and rule_id in json.dumps(slack[0])
    events = wait_until(
        lambda: api.get(url(api, "/events"), params={"rule_id": rule_id, "state": "firing"}).json()["alerts"],
        what="firing events",
    )
    mine = next(e for e in events if e["host_id"] == host)
    assert mine["rule_name"] == "Busy test CPU" and mine["severity"] == "critical"
    assert mine["started_at"].endswith("Z") and mine["value"] >= 0

    # Acknowledge: Alertmanager silences it, and notifications about it stop
    # while those about the other host go on repeating.
    ack = api.post(url(api, f"/events/{mine['id']}/acknowledge"), json={"user": ADMIN[0]}, timeout=10)
    assert ack.status_code == 200 and ack.json()["status"] == "acknowledged"
    silences = requests.get(f"{stack.urls()['alertmanager']}/api/v2/silences", timeout=10).json()
    silence = next(s for s in silences if s["status"]["state"] == "active" and mine["id"] in s["comment"])
    assert {"name": "host_id", "value": host, "isRegex": False, "isEqual": True} in silence["matchers"]

    def other_host_repeats(more: int) -> None:
        """Wait until the other host's alert has been notified ``more`` times again (every 2 s in the test config)."""
        seen = len(receiver.alerts(rule_id=rule_id, host_id="node-exporter-reference"))
        wait_until(
            lambda: len(receiver.alerts(rule_id=rule_id, host_id="node-exporter-reference")) >= seen + more,
            what=f"{more} more notifications for the other host",
        )

    other_host_repeats(1)  # a notification about this host already on its way has landed by then
    mine_before = len(receiver.alerts(rule_id=rule_id, host_id=host))
    other_host_repeats(2)  # two repeat intervals on, with the silence in place
    assert len(receiver.alerts(rule_id=rule_id, host_id=host)) == mine_before
    acked = api.get(url(api, f"/events/{mine['id']}"), timeout=10).json()
    assert acked["state"] == "acknowledged" and acked["acknowledged_by"] == ADMIN[0]

    # The condition ends: both events resolve, and the silence ends with its alert.
    changed = api.put(url(api, f"/rules/{rule_id}"), json={"expression": "cpu.utilization > 1000"}, timeout=10)
    assert changed.status_code == 200, changed.text

    def resolved_events():
        found = api.get(url(api, "/events"), params={"rule_id": rule_id, "state": "resolved"}, timeout=10)
        events = found.json()["alerts"]
        return events if {e["host_id"] for e in events} >= {host, "node-exporter-reference"} else None

    resolved = wait_until(resolved_events, what="resolved events")
    assert all(e["ended_at"] >= e["started_at"] for e in resolved)
    assert wait_until(lambda: receiver.alerts(rule_id=rule_id, status="resolved") or None, what="resolved webhook")
    silences = requests.get(f"{stack.urls()['alertmanager']}/api/v2/silences", timeout=10).json()
    assert next(s for s in silences if s["id"] == silence["id"])["status"]["state"] == "expired"
    history = api.get(url(api, "/history"), params={"rule_id": rule_id}, timeout=10).json()["history"]
    assert {h["nodeId"] for h in history} >= {host, "node-exporter-reference"}
    assert all(h["resolvedAt"] for h in history)

    assert api.delete(url(api, f"/rules/{rule_id}"), timeout=10).json() == {"id": rule_id, "status": "deleted"}


def test_acknowledging_a_resolved_event_is_a_conflict(tmp_path):
    from gateway.db import AlertEvent, add_with_id, db, utcnow

    app = make_app(tmp_path, f"http://127.0.0.1:{free_port()}")
    with app.app_context():
        event = AlertEvent(fingerprint="beef", started_at=utcnow(), ended_at=utcnow(), state="resolved", rule_id="r")
        event_id = add_with_id(event).id
        db.session.commit()
    client = app.test_client()
    admin = bearer(login(client, ADMIN)["access_token"])
    r = client.post(f"/api/v1/alerts/events/{event_id}/acknowledge", json={}, headers=admin)
    assert r.status_code == 409 and r.get_json()["error"]["code"] == "CONFLICT"
    after = client.get(f"/api/v1/alerts/events/{event_id}", headers=admin).get_json()
    assert after["state"] == "resolved" and after["acknowledged_by"] is None  # refused: nothing changed


def test_webhook_refuses_callers_without_alertmanagers_token(api):
    r = requests.post(f"{api.base}/api/v1/alerts/webhook", json={"alerts": []}, timeout=10)
    assert r.status_code == 401
    r = requests.post(
        f"{api.base}/api/v1/alerts/webhook", json={"alerts": []}, headers=api.headers, timeout=10
    )  # a user's token is not Alertmanager's
    assert r.status_code == 401


def test_unknown_rule_and_event_are_404(api):
    for path in ("/rules/rule-999999", "/events/event-999999"):
        r = api.get(url(api, path), timeout=10)
        assert r.status_code == 404 and r.json()["error"]["code"] == "NOT_FOUND"
    r = api.post(url(api, "/events/event-999999/acknowledge"), json={}, timeout=10)
    assert r.status_code == 404


def test_events_stay_readable_while_alertmanager_is_down(tmp_path, stack):
    from gateway.db import AlertEvent, add_with_id, db, utcnow

    app = make_app(tmp_path, stack.urls()["prometheus"])  # its Alertmanager URL has nobody listening
    with app.app_context():
        add_with_id(AlertEvent(fingerprint="f00d", started_at=utcnow(), state="acknowledged", rule_id="rule-1"))
        db.session.commit()
    client = app.test_client()
    r = client.get("/api/v1/alerts/events", headers=bearer(login(client, ADMIN)["access_token"]))
    assert r.status_code == 200, r.get_json()
    assert [e["state"] for e in r.get_json()["alerts"]] == ["acknowledged"]


def test_a_gateway_serving_https_has_alertmanager_trust_its_certificate(tmp_path, caplog):
    from gateway.alert_channels import delivery
    from gateway.cli import _webhook_over_tls

    cert, key = self_signed_certificate(tmp_path)
    app = make_app(tmp_path, "http://127.0.0.1:1", GATEWAY_URL="https://127.0.0.1:8443")
    _webhook_over_tls(app, str(cert))
    with app.app_context():
        config = render_alertmanager_config([], delivery())
    (tmp_path / "am.yml").write_text(config)
    subprocess.run(["amtool", "check-config", str(tmp_path / "am.yml")], check=True, capture_output=True)
    receivers = {r["name"]: r for r in yaml.safe_load(config)["receivers"]}
    webhook = receivers["fleet-events"]["webhook_configs"][0]
    assert webhook["url"] == "https://127.0.0.1:8443/api/v1/alerts/webhook"
    assert webhook["http_config"]["tls_config"] == {"ca_file": str(cert.resolve())}

    plain = make_app(tmp_path, "http://127.0.0.1:1", db_name="plain")  # GATEWAY_URL left at http://
    with caplog.at_level(logging.WARNING):
        _webhook_over_tls(plain, str(cert))
    assert "Alertmanager cannot post alert events" in caplog.text
