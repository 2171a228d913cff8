"""Rate limits (§8.9, AC-BE-009) under real gunicorn with several workers, and the gateway as a process."""

from __future__ import annotations

import time

import pytest
import requests

from fleetwatch.testing import services
from fleetwatch.testing.api import ADMIN, VIEWER, bearer, http_login, login, make_app
from fleetwatch.testing.waits import free_port


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, stack):
    """`fleetwatch-gateway` with 3 workers on a fresh state directory."""
    state = tmp_path_factory.mktemp("gateway-state")
    server = services.gateway(state, stack.urls()["prometheus"], args=("--workers=3", "--threads=2")).up()
    try:
        yield server.url, state
    finally:
        server.stop(20)
    assert server.process.returncode == 0, server.log_tail(40)


def test_61st_read_in_a_minute_is_429_across_workers(gateway):
    url, state = gateway
    admin = http_login(url, ADMIN)
    r = requests.post(
        f"{url}/api/v1/users",
        json={"email": VIEWER[0], "password": VIEWER[1], "role": "viewer"},
        headers=admin,
        timeout=10,
    )
    assert r.status_code == 201, r.text
    viewer = http_login(url, VIEWER)
    remaining = []
    for _ in range(60):
        # A new connection each time, so the kernel spreads requests over the workers.
        r = requests.get(f"{url}/api/v1/metrics/catalog", headers={**viewer, "Connection": "close"}, timeout=10)
        assert r.status_code == 200, r.text
        remaining.append(int(r.headers["X-RateLimit-Remaining"]))
    assert remaining == list(range(59, -1, -1))
    r = requests.get(f"{url}/api/v1/metrics/catalog", headers=viewer, timeout=10)
    assert r.status_code == 429
    assert r.json()["error"]["code"] == "RATE_LIMIT_EXCEEDED"
    assert 1 <= int(r.headers["Retry-After"]) <= 60
    assert r.headers["X-RateLimit-Remaining"] == "0"
    # More than one worker answered: each keeps its own metrics file.
    assert len(list((state / "gateway-metrics").glob("counter_*.db"))) >= 2
    # Another user is not affected, and writes have their own budget.
    assert requests.get(f"{url}/api/v1/metrics/catalog", headers=admin, timeout=10).status_code == 200


def test_31st_write_in_a_minute_is_429(gateway):
    url, _ = gateway
    creds = ("writer@example.com", "writer-password-123")
    r = requests.post(
        f"{url}/api/v1/users",
        json={"email": creds[0], "password": creds[1], "role": "admin"},
        headers=http_login(url, ADMIN),
        timeout=10,
    )
    assert r.status_code == 201, r.text
    admin = http_login(url, creds)
    codes = [
        requests.post(
            f"{url}/api/v1/hosts", json={"hostname": f"w{i}.example.com"}, headers=admin, timeout=10
        ).status_code
        for i in range(31)
    ]
    assert codes[:30] == [201] * 30
    assert codes[30] == 429


def test_health_ready_and_metrics(gateway):
    url, _ = gateway
    assert requests.get(f"{url}/health", timeout=5).json() == {"status": "ok"}
    ready = requests.get(f"{url}/ready", timeout=5)
    assert ready.status_code == 200 and ready.json() == {"status": "ready", "db": "ok", "prometheus": "ok"}
    text = requests.get(f"{url}/metrics", timeout=5).text
    assert "api_requests_total{" in text and "api_latency_seconds_bucket{" in text
    assert "db_query_duration_seconds_bucket" in text
    assert 'fleet_host_info{host_id="host-' in text


def test_swagger_ui_is_served_without_a_cdn(gateway):
    url, _ = gateway
    page = requests.get(f"{url}/api/docs", timeout=5)
    assert page.status_code == 200
    assert "cdn" not in page.text.lower() and "/api/docs/assets/swagger-ui-bundle.js" in page.text
    assert requests.get(f"{url}/api/docs/assets/swagger-ui-bundle.js", timeout=5).status_code == 200
    spec = requests.get(f"{url}/api/openapi.json", timeout=5).json()
    assert {"/api/v1/hosts", "/api/v1/metrics/query", "/api/v1/auth/login"} <= set(spec["paths"])


def test_ready_is_503_and_says_prometheus_is_down(tmp_path):

    app = make_app(tmp_path, f"http://127.0.0.1:{free_port()}")
    r = app.test_client().get("/ready")
    assert r.status_code == 503
    assert r.get_json() == {"status": "not ready", "db": "ok", "prometheus": "down"}


def test_failed_logins_back_off_per_account_across_workers(gateway):
    """Finding 10: past 5 wrong passwords an account waits 1 s, 2 s, 4 s… whichever worker or address asks."""
    url, _ = gateway
    creds = ("backoff@example.com", "backoff-password-1")
    r = requests.post(
        f"{url}/api/v1/users",
        json={"email": creds[0], "password": creds[1], "role": "viewer"},
        headers=http_login(url, ADMIN),
        timeout=10,
    )
    assert r.status_code == 201, r.text

    def attempt(password: str):
        # A new connection each time, so the kernel spreads the attempts over the workers.
        return requests.post(
            f"{url}/api/v1/auth/login",
            json={"email": creds[0], "password": password},
            headers={"Connection": "close"},
            timeout=10,
        )

    assert [attempt("wrong-password").status_code for _ in range(5)] == [401] * 5
    refused = attempt("wrong-password")
    assert refused.status_code == 429, refused.text
    assert refused.json()["error"]["code"] == "RATE_LIMIT_EXCEEDED"
    wait = int(refused.headers["Retry-After"])
    assert 1 <= wait <= 2
    assert attempt(creds[1]).status_code == 429  # the right password too: no guessing during the wait
    http_login(url, ADMIN)  # another account is not held back
    time.sleep(wait)
    assert attempt(creds[1]).status_code == 200
    assert attempt("wrong-password").status_code == 401  # a success starts the count again


@pytest.mark.parametrize("db", ["sqlite", "postgresql"])
def test_a_large_limit_counted_in_batches_lets_no_more_through_whichever_worker_answers(request, tmp_path, db):
    """Limits of 100 and more are taken from the shared counter in batches: never more than the limit pass."""
    limit, batch = 205, 10  # RATE_LIMIT_BATCH_FRACTION 0.05 of 205: the last batch is cut to 5
    settings = dict(RATE_LIMIT_READS_PER_MIN=limit, RATE_LIMIT_WRITES_PER_MIN=100, RATE_LIMIT_BATCH_FRACTION=0.05)
    if db == "postgresql":  # the counters in the shared DB, as replicas have them
        settings["SQLALCHEMY_DATABASE_URI"] = request.getfixturevalue("postgres").new_database()
    one, two = (make_app(tmp_path, f"http://127.0.0.1:{free_port()}", **settings).test_client() for _ in range(2))
    admin = login(one, ADMIN)
    users = []
    for n in range(2):
        creds = (f"batched-{n}@example.com", "batched-password-1")
        made = one.post(
            "/api/v1/users",
            json={"email": creds[0], "password": creds[1], "role": "viewer"},
            headers=bearer(admin["access_token"]),
        )
        assert made.status_code == 201, made.get_json()
        users.append(bearer(login(one, creds)["access_token"]))

    def passed(client, headers) -> bool:
        r = client.get("/api/v1/metrics/catalog", headers=headers)
        assert r.status_code in (200, 429), r.get_json()
        return r.status_code == 200

    # One worker: exactly the limit, the last batch cut to what is left.
    alone = [passed(one, users[0]) for _ in range(limit + 5)]
    assert alone == [True] * limit + [False] * 5
    # Two workers in turn: each holds what it took; at most one batch of the other's is left unspent.
    spread = [passed((one, two)[n % 2], users[1]) for n in range(limit + 40)]
    assert limit - batch <= sum(spread) <= limit
    assert not any(spread[-20:])
