"""Live updates over SSE (/api/v1/stream): real gunicorn gateways, Prometheus and Alertmanager.

The stack's gateway runs two workers: a stream is served by whichever accepts
it, while the status watcher (one lease holder) and the webhook (any worker)
write the events, so what a client sees crossed processes through the DB.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime

import pytest
import requests

from fleetwatch.testing import services
from fleetwatch.testing.api import ADMIN, VIEWER, api_key, api_session, http_login
from fleetwatch.testing.sse import SseClient
from fleetwatch.testing.waits import wait_until


@pytest.fixture(scope="module")
def api(stack):
    s = api_session(stack.urls()["gateway"])
    r = s.post(f"{s.base}/api/v1/users", json={"email": VIEWER[0], "password": VIEWER[1], "role": "viewer"}, timeout=10)
    assert r.status_code in (201, 409), r.text
    s.agent = {"X-API-Key": api_key(s, "sse-agents")}
    return s


def stream(api, headers=None, **params) -> SseClient:
    client = SseClient(f"{api.base}/api/v1/stream", headers=api.headers if headers is None else headers, params=params)
    assert client.status == 200, client.error
    return client


def push_cpu(api, host_id: str, value: float) -> None:
    point = {"metric": "cpu.utilization", "ts": datetime.now(UTC).isoformat().replace("+00:00", "Z"), "value": value}
    r = requests.post(
        f"{api.base}/api/v1/ingest/metrics",
        json={"host_id": host_id, "metrics": [point]},
        headers=api.agent,
        timeout=10,
    )
    assert r.status_code == 200, r.text


def of_host(host_id):
    return lambda e: e["event"] == "host.status" and e["data"]["host_id"] == host_id


def test_status_change_and_alert_arrive_in_order_and_resume_after_a_disconnect(api):
    host_id = f"sse-{uuid.uuid4().hex[:6]}"
    admin = stream(api)
    # A browser's EventSource sends no headers: the viewer's token rides in the query.
    viewer_token = http_login(api.base, VIEWER)["Authorization"].removeprefix("Bearer ")
    viewer = stream(api, headers={}, access_token=viewer_token)

    # A pushing host appears (its agent's heartbeat), then its CPU crosses the warn line.
    beat = requests.post(
        f"{api.base}/api/v1/ingest/heartbeat", json={"host_id": host_id}, headers=api.agent, timeout=10
    )
    assert beat.status_code == 200, beat.text
    admin.wait_for(lambda e: of_host(host_id)(e) and e["data"]["status"] == "ok", what="host appears ok")
    assert api.patch(f"{api.base}/api/v1/hosts/{host_id}", json={"tags": {"sse": host_id}}, timeout=10).ok
    push_cpu(api, host_id, 80.0)  # warn; above 90 it would be crit at once
    warn = admin.wait_for(lambda e: of_host(host_id)(e) and e["data"]["status"] == "warn", what="host turns warn")[0]
    assert warn["data"]["previous"] == "ok" and any("cpu_pct" in r for r in warn["data"]["reasons"])
    admin.close()  # the client goes away; what happens meanwhile must reach it when it comes back

    rule = {
        "name": "SSE busy",
        "expression": "cpu.utilization >= 75",
        "duration": "1s",
        "scope": {"tags": {"sse": host_id}},
    }
    created = api.post(f"{api.base}/api/v1/alerts/rules", json=rule, timeout=30)
    assert created.status_code == 201, created.text
    rule_id = created.json()["id"]
    try:
        # Firing is recorded while no admin stream is open.
        events = wait_until(
            lambda: api.get(f"{api.base}/api/v1/alerts/events", params={"rule_id": rule_id}, timeout=10).json()[
                "alerts"
            ],
            60,
            "the alert fires",
        )
        resumed = stream(api, headers={**api.headers, "Last-Event-ID": str(warn["id"])})
        mine = lambda e: e["event"] == "alert.event" and e["data"]["rule_id"] == rule_id  # noqa: E731
        resumed.wait_for(lambda e: mine(e) and e["data"]["state"] == "firing", what="the missed firing")
        ack = api.post(f"{api.base}/api/v1/alerts/events/{events[0]['id']}/acknowledge", json={"comment": "on it"})
        assert ack.status_code == 200, ack.text
        resumed.wait_for(lambda e: mine(e) and e["data"]["state"] == "acknowledged", what="the acknowledgement")
        viewer.wait_for(lambda e: mine(e) and e["data"]["state"] == "acknowledged", what="viewer's acknowledgement")
    finally:
        api.delete(f"{api.base}/api/v1/alerts/rules/{rule_id}", timeout=30)

    # Nothing lost or repeated across the reconnection, and in the order it happened.
    seen = [e for e in admin.events + resumed.events if e["id"] is not None]
    assert [e["id"] for e in seen] == sorted({e["id"] for e in seen})
    story = [
        (e["event"], e["data"].get("status") or e["data"]["state"]) for e in seen if of_host(host_id)(e) or mine(e)
    ]
    assert story == [
        ("host.status", "ok"),
        ("host.status", "warn"),
        ("alert.event", "firing"),
        ("alert.event", "acknowledged"),
    ], story
    # Ids are the log's, whichever worker served: the viewer, open throughout, saw the same story with the same ids.
    ours = [e for e in seen if of_host(host_id)(e) or mine(e)]
    # The viewer's stream stays open after the admin's closed: what came later (the rule's deletion
    # resolving the alert, the host going back to ok) is past the story compared.
    told = [e["id"] for e in viewer.events if (of_host(host_id)(e) or mine(e)) and e["id"] <= ours[-1]["id"]]
    assert told == [e["id"] for e in ours]
    acked_admin = next(e for e in resumed.events if mine(e) and e["data"]["state"] == "acknowledged")
    acked_viewer = next(e for e in viewer.events if mine(e) and e["data"]["state"] == "acknowledged")
    assert acked_admin["data"]["comment"] == "on it" and acked_admin["data"]["silence_id"]
    # The silence and the comment are the audit log's (admin only): never in a viewer's stream.
    assert all("silence_id" not in e["data"] and "comment" not in e["data"] for e in viewer.events)
    assert acked_viewer["id"] == acked_admin["id"] and acked_viewer["data"]["acknowledged_by"] == ADMIN[0]
    resumed.close()
    viewer.close()


def test_metrics_events_carry_the_latest_values_at_the_scrape_interval(api):
    host_id = f"sse-m-{uuid.uuid4().hex[:6]}"
    push_cpu(api, host_id, 42.5)
    client = stream(api, hosts=host_id, metrics="cpu.utilization,mem.used_pct")
    got = client.wait_for(
        lambda e: e["event"] == "metrics" and e["data"]["values"], what="a metrics event with the pushed value"
    )
    assert {"host_id": host_id, "metric": "cpu.utilization", "labels": {}, "value": 42.5} in got[0]["data"]["values"]
    client.close()


@pytest.mark.parametrize(
    "params,field",
    [({"metrics": "cpu.utilisation", "hosts": "h1"}, "metrics"), ({"metrics": "cpu.utilization"}, "hosts")],
)
def test_bad_subscription_is_a_400(api, params, field):
    r = requests.get(f"{api.base}/api/v1/stream", headers=api.headers, params=params, timeout=10)
    assert r.status_code == 400 and field in r.json()["error"]["details"], r.text


def test_no_token_no_stream(api):
    r = requests.get(f"{api.base}/api/v1/stream", timeout=10)
    assert r.status_code == 401 and r.json()["error"]["code"]
    # The query token is for the stream alone: elsewhere it is no way in.
    token = api.headers["Authorization"].removeprefix("Bearer ")
    assert requests.get(f"{api.base}/api/v1/hosts", params={"access_token": token}, timeout=10).status_code == 401


def test_token_expiry_ends_the_stream_and_the_query_token_is_never_logged(tmp_path):
    with (
        services.prometheus(tmp_path / "tsdb") as prom,
        services.gateway(
            tmp_path / "gw",
            prom.url,
            args=("--workers=2",),
            env={
                "FLEETWATCH_ACCESS_TOKEN_TTL": "3",
                "FLEETWATCH_LOG_LEVEL": "DEBUG",
                "FLEETWATCH_STREAM_HEARTBEAT_S": "1",
            },
        ) as gw,
    ):
        token = http_login(gw.url, ADMIN)["Authorization"].removeprefix("Bearer ")
        started = time.monotonic()
        client = SseClient(f"{gw.url}/api/v1/stream", params={"access_token": token})
        assert client.status == 200, client.error
        assert client.closed.wait(20), "the stream outlived its token"
        assert 2 <= time.monotonic() - started < 15
        assert client.events[-1]["event"] == "end" and "expired" in client.events[-1]["data"]["reason"]
        assert "heartbeat" in client.comments
        # Reconnecting with the expired token is refused: the client must refresh first.
        again = requests.get(f"{gw.url}/api/v1/stream", params={"access_token": token}, timeout=10)
        assert again.status_code == 401
    log = (tmp_path / "gw" / "gateway.log").read_text()
    assert token not in log


def test_streams_beyond_the_bound_are_refused_and_a_hung_up_one_frees_its_place(tmp_path):
    env = {"FLEETWATCH_STREAM_MAX_PER_WORKER": "1"}
    with (
        services.prometheus(tmp_path / "tsdb") as prom,
        services.gateway(tmp_path / "gw", prom.url, args=("--workers=1",), env=env) as gw,
    ):
        headers = http_login(gw.url, ADMIN)
        first = SseClient(f"{gw.url}/api/v1/stream", headers=headers)
        assert first.status == 200
        refused = requests.get(f"{gw.url}/api/v1/stream", headers=headers, timeout=10)
        assert refused.status_code == 503 and refused.headers.get("Retry-After"), refused.text
        # The REST API keeps its own threads meanwhile.
        assert requests.get(f"{gw.url}/api/v1/hosts", headers=headers, timeout=10).status_code == 200
        first.close()  # no heartbeat is due for 15 s: the server notices the hang-up by itself
        second = wait_until(
            lambda: (c := SseClient(f"{gw.url}/api/v1/stream", headers=headers)).status == 200 and c,
            10,
            "a place for a new stream",
        )
        second.close()
