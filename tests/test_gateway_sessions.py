"""Session rules (issue 13, finding 9): a password change or a disabled user ends every session of that
user, refresh tokens rotate and a replayed one ends its session, and one may log out everywhere."""

from __future__ import annotations

import itertools

import pytest

from fleetwatch.testing.api import ADMIN, bearer, login, make_app
from fleetwatch.testing.waits import free_port, wait_until

_n = itertools.count()


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    app = make_app(
        tmp_path_factory.mktemp("gateway-sessions"),
        f"http://127.0.0.1:{free_port()}",
        RATE_LIMIT_READS_PER_MIN=100_000,
        RATE_LIMIT_WRITES_PER_MIN=100_000,
        LOGIN_ATTEMPTS_PER_MIN=100_000,
    )
    return app.test_client()


def new_user(client, role: str = "viewer") -> tuple[str, tuple[str, str]]:
    creds = (f"session-{next(_n)}@example.com", "first-password-1")
    admin = bearer(login(client, ADMIN)["access_token"])
    r = client.post("/api/v1/users", json={"email": creds[0], "password": creds[1], "role": role}, headers=admin)
    assert r.status_code == 201, r.get_json()
    return r.get_json()["id"], creds


def works(client, tokens: dict) -> bool:
    r = client.get("/api/v1/agents/config", headers=bearer(tokens["access_token"]))  # the DB only
    assert r.status_code in (200, 401), r.get_json()
    return r.status_code == 200


def refreshes(client, tokens: dict) -> bool:
    r = client.post("/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert r.status_code in (200, 401), r.get_json()
    return r.status_code == 200


def test_changing_ones_password_ends_every_session_and_starts_a_new_one(client):
    _, creds = new_user(client)
    laptop, phone = login(client, creds), login(client, creds)
    r = client.post(
        "/api/v1/auth/password",
        json={"current_password": creds[1], "new_password": "second-password-2"},
        headers=bearer(laptop["access_token"]),
    )
    assert r.status_code == 200, r.get_json()
    fresh = r.get_json()
    assert works(client, fresh) and refreshes(client, fresh)
    for old in (laptop, phone):
        assert not works(client, old) and not refreshes(client, old)
    assert client.post("/api/v1/auth/login", json={"email": creds[0], "password": creds[1]}).status_code == 401
    login(client, (creds[0], "second-password-2"))


def test_a_wrong_current_password_changes_nothing(client):
    _, creds = new_user(client)
    tokens = login(client, creds)
    r = client.post(
        "/api/v1/auth/password",
        json={"current_password": "not-the-password", "new_password": "second-password-2"},
        headers=bearer(tokens["access_token"]),
    )
    assert r.status_code == 403 and r.get_json()["error"]["code"] == "FORBIDDEN"
    assert works(client, tokens)
    login(client, creds)


def test_an_admin_setting_a_password_ends_that_users_sessions(client):
    user_id, creds = new_user(client)
    theirs = login(client, creds)
    admin_tokens = login(client, ADMIN)
    r = client.patch(
        f"/api/v1/users/{user_id}", json={"password": "set-by-admin-3"}, headers=bearer(admin_tokens["access_token"])
    )
    assert r.status_code == 200, r.get_json()
    assert not works(client, theirs) and not refreshes(client, theirs)
    assert works(client, admin_tokens)  # only theirs


def test_disabling_ends_sessions_for_good(client):
    """Re-enabled, the user logs in again: the tokens from before stay dead."""
    user_id, creds = new_user(client)
    theirs = login(client, creds)
    admin = bearer(login(client, ADMIN)["access_token"])
    assert client.patch(f"/api/v1/users/{user_id}", json={"status": "disabled"}, headers=admin).status_code == 200
    assert client.patch(f"/api/v1/users/{user_id}", json={"status": "active"}, headers=admin).status_code == 200
    assert not works(client, theirs) and not refreshes(client, theirs)
    assert works(client, login(client, creds))


def test_a_refresh_token_rotates_and_a_replayed_one_ends_the_session(client):
    _, creds = new_user(client)
    first = login(client, creds)
    r = client.post("/api/v1/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert r.status_code == 200
    second = r.get_json()
    assert second["refresh_token"] != first["refresh_token"]
    assert works(client, second)
    # The first refresh token again: stolen, or replayed; either way the session ends.
    assert not refreshes(client, first)
    assert not works(client, second) and not refreshes(client, second)
    assert not works(client, first)


def test_logout_all_ends_every_session_of_the_caller_only(client):
    _, creds = new_user(client)
    other_id, other_creds = new_user(client)
    a, b, other = login(client, creds), login(client, creds), login(client, other_creds)
    r = client.post("/api/v1/auth/logout?all=true", headers=bearer(a["access_token"]))
    assert r.status_code == 200 and r.get_json()["status"] == "ok"
    for tokens in (a, b):
        assert not works(client, tokens) and not refreshes(client, tokens)
    assert works(client, other)
    c, d = login(client, creds), login(client, creds)
    assert client.post("/api/v1/auth/logout", headers=bearer(c["access_token"])).status_code == 200
    assert not works(client, c) and works(client, d)  # without all=true: this session only


STALE_S = 0.5  # SESSION_CACHE_S of the two workers below: short, the tests wait for it to pass


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory):
    """Two apps on one DB, as two gunicorn workers (or replicas) are; each trusts a session it read for STALE_S."""
    state, prom = tmp_path_factory.mktemp("two-workers"), f"http://127.0.0.1:{free_port()}"
    limits = dict(RATE_LIMIT_READS_PER_MIN=100_000, RATE_LIMIT_WRITES_PER_MIN=100_000, LOGIN_ATTEMPTS_PER_MIN=100_000)
    return tuple(make_app(state, prom, SESSION_CACHE_S=STALE_S, **limits).test_client() for _ in range(2))


def within_the_cache_time(check) -> None:
    """Wait for ``check()`` to hold, failing if it takes past STALE_S (and a second's margin for a slow machine)."""
    wait_until(check, STALE_S + 1.0, "the change seen by the other worker", 0.05)


def test_a_logout_holds_at_once_on_its_worker_and_within_the_cache_time_on_another(two_workers):
    one, two = two_workers
    _, creds = new_user(one)
    tokens = login(one, creds)
    assert works(one, tokens) and works(two, tokens)  # both have read the session
    assert one.post("/api/v1/auth/logout", headers=bearer(tokens["access_token"])).status_code == 200
    assert not works(one, tokens)
    within_the_cache_time(lambda: not works(two, tokens))


def test_a_demoted_admin_loses_the_role_at_once_on_its_worker_and_within_the_cache_time_on_another(two_workers):
    one, two = two_workers
    user_id, creds = new_user(one, role="admin")
    theirs = bearer(login(one, creds)["access_token"])

    def can_write(client) -> bool:
        r = client.post(
            "/api/v1/users",
            json={"email": f"w{next(_n)}@example.com", "password": "x" * 12, "role": "viewer"},
            headers=theirs,
        )
        assert r.status_code in (201, 403), r.get_json()
        return r.status_code == 201

    assert can_write(one) and can_write(two)
    admin = bearer(login(two, ADMIN)["access_token"])
    assert two.patch(f"/api/v1/users/{user_id}", json={"role": "viewer"}, headers=admin).status_code == 200
    assert not can_write(two)
    within_the_cache_time(lambda: not can_write(one))
    assert works(one, {"access_token": theirs["Authorization"].removeprefix("Bearer ")})  # a viewer now, still in


@pytest.mark.parametrize("days", [90, 30])
def test_the_audit_log_keeps_its_retention_and_purges_itself(tmp_path, days):
    """AUDIT-002: 90 days by default (FLEETWATCH_AUDIT_RETENTION_DAYS); any worker's next audit write purges."""
    from datetime import timedelta

    from gateway.db import AuditEvent, db, utcnow

    app = make_app(
        tmp_path, f"http://127.0.0.1:{free_port()}", **({} if days == 90 else {"AUDIT_RETENTION_DAYS": days})
    )
    client = app.test_client()
    with app.app_context():
        for age, action in ((days + 1, "too_old"), (days - 1, "kept")):
            db.session.add(AuditEvent(at=utcnow() - timedelta(days=age), action=action, details={}))
        db.session.commit()
    admin = bearer(login(client, ADMIN)["access_token"])  # a login is audited
    actions = {e["action"] for e in client.get("/api/v1/audit?limit=1000", headers=admin).get_json()["events"]}
    assert "kept" in actions and "login" in actions
    assert "too_old" not in actions
