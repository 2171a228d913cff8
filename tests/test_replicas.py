"""Two gateway replicas behind HAProxy on one PostgreSQL, as `fleetwatch up --gateways 2` runs them.

Real gunicorn gateways, real PostgreSQL, HAProxy, Prometheus and Alertmanager:
what one replica writes the other serves, concurrent rule writes through both
are all kept and all reach Prometheus, and the limits hold whichever replica
answers.
"""

from __future__ import annotations

import http.client
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import pytest
import requests
import sqlalchemy as sa

from fleetwatch.stack import Stack
from fleetwatch.testing.api import ADMIN, VIEWER, api_session, http_login
from fleetwatch.testing.stack import shared_state_dir, stack_config
from fleetwatch.testing.waits import wait_until
from gateway import locks

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def replicas():
    """`fleetwatch up --gateways 2`'s stack; its state where the postgres user can reach it when we are root."""
    with shared_state_dir("fleetwatch-replicas-") as state:
        config = stack_config(
            state,
            lift_limits=False,  # the read limit is under test
            gateway_workers=2,
            gateways=2,
            env={
                "FLEETWATCH_API_KEY_CACHE_S": "1",
                # The per-address limit is under test here; the per-account backoff (after 5 wrong
                # passwords) would answer 429 first, as it should (tests/test_gateway_limits.py).
                "FLEETWATCH_LOGIN_FAILURES_BEFORE_BACKOFF": "1000",
            },
        )
        with Stack(config) as stack:
            yield stack


def urls(stack: Stack) -> tuple[str, str, str]:
    """HAProxy's URL and the two replicas'."""
    by_name = {s.name: s.ready_url.removesuffix("/health") for s in stack.services}
    return stack.urls()["gateway"], by_name["gateway-1"], by_name["gateway-2"]


def prometheus_rules(stack: Stack) -> set[str]:
    """The alert names Prometheus evaluates now (the rules' ids)."""
    r = requests.get(f"{stack.urls()['prometheus']}/api/v1/rules", params={"type": "alert"}, timeout=10)
    return {rule["name"] for group in r.json()["data"]["groups"] for rule in group["rules"]}


def test_the_stack_runs_postgres_two_replicas_and_haproxy_in_front(replicas):
    names = [s.name for s in replicas.services]
    assert names.index("postgres") < names.index("gateway-1") < names.index("gateway-2") < names.index("haproxy")
    assert (replicas.config.state_dir / "postgres" / "cluster" / "PG_VERSION").exists()
    proxy, one, two = urls(replicas)
    for url in (proxy, one, two):
        assert requests.get(f"{url}/health", timeout=10).status_code == 200


def test_a_rule_written_through_one_replica_is_live_and_listed_through_the_other(replicas):
    proxy, one, two = urls(replicas)
    first, second = api_session(one), api_session(two)
    rule = {"name": "Written through one", "expression": "cpu.utilization > 99", "duration": "1m"}
    r = first.post(f"{one}/api/v1/alerts/rules", json=rule, timeout=60)
    assert r.status_code == 201, r.text
    rule_id = r.json()["id"]
    assert rule_id in prometheus_rules(replicas)  # answered once Prometheus evaluates it
    listed = second.get(f"{two}/api/v1/alerts/rules?limit=200", timeout=30).json()["rules"]
    assert "Written through one" in {x["name"] for x in listed}
    assert second.get(f"{two}/api/v1/alerts/rules/{rule_id}", timeout=30).json()["name"] == "Written through one"
    # Deleted through the other, through HAProxy: gone from both and from Prometheus.
    assert api_session(proxy).delete(f"{proxy}/api/v1/alerts/rules/{rule_id}", timeout=60).status_code == 200
    assert rule_id not in prometheus_rules(replicas)
    assert first.get(f"{one}/api/v1/alerts/rules/{rule_id}", timeout=30).status_code == 404


def test_concurrent_rule_writes_through_both_replicas_are_all_kept_and_all_reach_prometheus(replicas):
    _, one, two = urls(replicas)
    sessions = {one: api_session(one), two: api_session(two)}
    start = threading.Barrier(6)

    def write(n: int) -> requests.Response:
        base = (one, two)[n % 2]
        start.wait()
        rule = {"name": f"Concurrent {n}", "expression": f"cpu.utilization > {90 + n}", "duration": "1m"}
        return sessions[base].post(f"{base}/api/v1/alerts/rules", json=rule, timeout=60)

    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(write, range(6)))
    assert [a.status_code for a in answers] == [201] * 6, [a.text for a in answers]
    ids = {a.json()["id"] for a in answers}
    assert ids <= prometheus_rules(replicas)  # the last deploy holds every one: none was lost
    for base, session in sessions.items():
        listed = session.get(f"{base}/api/v1/alerts/rules?limit=200", timeout=30).json()["rules"]
        assert ids <= {x["id"] for x in listed}


def test_the_61st_read_in_a_minute_is_refused_whichever_replica_answers(replicas):
    proxy, one, two = urls(replicas)
    admin = api_session(proxy)
    r = admin.post(f"{proxy}/api/v1/users", json={"email": VIEWER[0], "password": VIEWER[1], "role": "viewer"})
    assert r.status_code == 201, r.text
    viewer = http_login(proxy, VIEWER)
    statuses = [requests.get(f"{(one, two)[i % 2]}/api/v1/hosts", headers=viewer, timeout=30) for i in range(60)]
    assert [s.status_code for s in statuses] == [200] * 60
    for base in (proxy, one, two):
        refused = requests.get(f"{base}/api/v1/hosts", headers=viewer, timeout=30)
        assert refused.status_code == 429, refused.text
        assert refused.json()["error"]["details"]["limit"] == 60


def test_a_logout_or_a_revoked_key_holds_on_the_other_replica(replicas):
    _, one, two = urls(replicas)
    # Sessions are looked up in the DB on every request: a logout through one ends it on the other at once.
    token = http_login(one)
    assert requests.post(f"{two}/api/v1/auth/logout", headers=token, timeout=30).status_code == 200
    assert requests.get(f"{one}/api/v1/alerts/rules", headers=token, timeout=30).status_code == 401
    # API keys are trusted for API_KEY_CACHE_S (1 s here) by each worker, then checked again.
    made = (
        api_session(one)
        .post(
            f"{one}/api/v1/api-keys",
            json={"name": "replicas", "host_pattern": "*", "allow_discovery": True},
            timeout=30,
        )
        .json()
    )
    key, key_id = made["key"], made["id"]

    def push(base: str) -> int:
        point = {"host_id": "no-such-host", "metrics": []}
        r = requests.post(f"{base}/api/v1/ingest/metrics", json=point, headers={"X-API-Key": key}, timeout=30)
        return r.status_code

    assert push(two) != 401
    assert api_session(one).delete(f"{one}/api/v1/api-keys/{key_id}", timeout=30).status_code == 200
    wait_until(lambda: push(two) == 401 and push(one) == 401, 5, "the revoked key refused by both replicas")


def login_from(source: str, url: str, password: str, headers: dict | None = None) -> int:
    """A login's status, the connection made from loopback address ``source`` (another client than 127.0.0.1)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30, source_address=(source, 0))
    try:
        body = json.dumps({"email": ADMIN[0], "password": password})
        conn.request("POST", "/api/v1/auth/login", body, {"Content-Type": "application/json", **(headers or {})})
        return conn.getresponse().status
    finally:
        conn.close()


def test_behind_haproxy_login_limits_and_the_audit_log_see_each_client(replicas):
    proxy, _, _ = urls(replicas)
    attempts = [login_from("127.0.0.2", proxy, "wrong-password") for _ in range(20)]
    assert attempts == [401] * 20
    # That client is refused now, whichever replica answers, even naming another address itself ...
    assert login_from("127.0.0.2", proxy, ADMIN[1]) == 429
    assert login_from("127.0.0.2", proxy, ADMIN[1], {"X-Forwarded-For": "203.0.113.9"}) == 429
    # ... while the other clients behind the same HAProxy still log in.
    assert login_from("127.0.0.1", proxy, ADMIN[1]) == 200
    events = api_session(proxy).get(f"{proxy}/api/v1/audit?limit=100", timeout=30).json()["events"]
    assert {e["ip"] for e in events if e["action"] == "login_failed"} == {"127.0.0.2"}


def test_haproxy_sends_requests_past_a_replica_that_stopped(replicas):
    proxy, _, _ = urls(replicas)
    admin = api_session(proxy)
    replica = next(s for s in replicas.services if s.name == "gateway-1")
    replica.stop()
    try:
        answers = [admin.get(f"{proxy}/api/v1/alerts/rules", timeout=30).status_code for _ in range(6)]
        assert answers == [200] * 6
    finally:
        replica.start()
        replica.wait_ready()


def test_the_deploy_lock_is_held_in_postgres_across_replicas(postgres):
    url = postgres.new_database()
    engines = [sa.create_engine(url), sa.create_engine(url)]  # two replicas' own connection pools
    order = []
    with locks.held(engines[0], locks.DEPLOY):
        waiting = threading.Thread(target=lambda: _take(engines[1], order))
        waiting.start()
        waiting.join(0.5)
        assert waiting.is_alive()  # the other replica waits for it
        order.append("first released")
    waiting.join(10)
    assert order == ["first released", "second held"]
    for engine in engines:
        engine.dispose()


def _take(engine: sa.Engine, order: list) -> None:
    with locks.held(engine, locks.DEPLOY):
        order.append("second held")
