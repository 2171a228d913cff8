"""Who may do what: every endpoint against every kind of caller, and the token lifecycle."""

from __future__ import annotations

import time

import jwt
import pytest

from fleetwatch.testing.api import ADMIN, VIEWER, bearer, login

# (method, path, body, who may: "viewer" or "admin")
ENDPOINTS = [
    ("GET", "/api/v1/hosts", None, "viewer"),
    ("POST", "/api/v1/hosts", {"hostname": "matrix.example.com"}, "admin"),
    ("GET", "/api/v1/hosts/{host}", None, "viewer"),
    ("PATCH", "/api/v1/hosts/{host}", {"tags": {"role": "web"}}, "admin"),
    ("DELETE", "/api/v1/hosts/{doomed}", None, "admin"),
    ("GET", "/api/v1/metrics/catalog", None, "viewer"),
    ("GET", "/api/v1/metrics/query?host_id={host}&metric=cpu.load1&range=15m", None, "viewer"),
    ("GET", "/api/v1/users", None, "admin"),
    (
        "POST",
        "/api/v1/users",
        {"email": "new-{n}@example.com", "password": "long-enough-pw", "role": "viewer"},
        "admin",
    ),
    ("PATCH", "/api/v1/users/{viewer}", {"role": "viewer"}, "admin"),
    ("GET", "/api/v1/api-keys", None, "admin"),
    ("POST", "/api/v1/api-keys", {"name": "agents"}, "admin"),
    ("DELETE", "/api/v1/api-keys/{key}", None, "admin"),
    ("GET", "/api/v1/audit", None, "admin"),
    ("GET", "/api/v1/alerts/rules", None, "viewer"),
    ("GET", "/api/v1/alerts/events?state=firing", None, "viewer"),
    ("GET", "/api/v1/alerts/history", None, "viewer"),
    ("GET", "/api/v1/agents/config", None, "viewer"),
    ("PUT", "/api/v1/agents/config", {"interval_s": 5}, "admin"),
    ("POST", "/api/v1/auth/logout", None, "viewer"),
]
CALLERS = ["none", "viewer", "admin", "expired", "other_key", "alg_none"]
_counter = iter(range(10**6))


def forged(claims: dict, kind: str) -> str:
    if kind == "other_key":
        return jwt.encode(claims, "not-our-key-" * 4, algorithm="HS256")
    # alg "none": an unsigned token with our claims.
    return jwt.encode(claims, None, algorithm="none")


def headers_for(client, caller: str) -> dict:
    if caller == "none":
        return {}
    creds = ADMIN if caller in ("admin", "other_key", "alg_none") else VIEWER
    tokens = login(client, creds)
    if caller in ("viewer", "admin"):
        return bearer(tokens["access_token"])
    claims = jwt.decode(tokens["access_token"], options={"verify_signature": False})
    if caller == "expired":
        return bearer(expired_token(client, claims))
    return bearer(forged(claims, caller))


def expired_token(client, claims: dict) -> str:
    from gateway.db import secret

    with client.application.app_context():
        key = secret("jwt")
    now = int(time.time())
    return jwt.encode({**claims, "iat": now - 3600, "exp": now - 60}, key, algorithm="HS256")


def fill(client, text: str, admin_headers: dict) -> str:
    n = next(_counter)
    if "{host}" in text or "{doomed}" in text:
        r = client.post("/api/v1/hosts", json={"hostname": f"h{n}.example.com"}, headers=admin_headers)
        text = text.replace("{host}", r.get_json()["id"]).replace("{doomed}", r.get_json()["id"])
    if "{viewer}" in text:
        users = client.get("/api/v1/users?limit=1000", headers=admin_headers).get_json()["users"]
        text = text.replace("{viewer}", next(u["id"] for u in users if u["email"] == VIEWER[0]))
    if "{key}" in text:
        text = text.replace(
            "{key}", client.post("/api/v1/api-keys", json={"name": "k"}, headers=admin_headers).get_json()["id"]
        )
    return text.replace("{n}", str(n))


@pytest.mark.parametrize("caller", CALLERS)
@pytest.mark.parametrize("method,path,body,role", ENDPOINTS, ids=[f"{m} {p.split('?')[0]}" for m, p, _, _ in ENDPOINTS])
def test_authorization_matrix(client, method, path, body, role, caller):
    admin_headers = bearer(login(client, ADMIN)["access_token"])
    path = fill(client, path, admin_headers)
    body = {k: fill(client, v, admin_headers) if isinstance(v, str) else v for k, v in (body or {}).items()} or None
    r = client.open(path, method=method, json=body, headers=headers_for(client, caller))
    error = (r.get_json() or {}).get("error", {})
    if caller in ("none", "expired", "other_key", "alg_none"):
        assert r.status_code == 401, r.get_json()
        assert error["code"] == "UNAUTHORIZED"
    elif caller == "viewer" and role == "admin":
        assert r.status_code == 403, r.get_json()
        assert error["code"] == "FORBIDDEN"
    else:
        assert 200 <= r.status_code < 300, r.get_json()


def test_viewer_cannot_delete_hosts(client):
    """AC-BE-005."""
    admin, viewer = bearer(login(client, ADMIN)["access_token"]), bearer(login(client, VIEWER)["access_token"])
    host = client.post("/api/v1/hosts", json={"hostname": "keep.example.com"}, headers=admin).get_json()["id"]
    r = client.delete(f"/api/v1/hosts/{host}", headers=viewer)
    assert r.status_code == 403
    assert client.get(f"/api/v1/hosts/{host}?range=15m", headers=viewer).status_code == 200


def test_login_answers_as_the_spec_shows(client):
    body = login(client, ADMIN)
    assert body["token"].startswith("Bearer ey")
    assert body["role"] == "Admin"
    assert body["expires_at"].endswith("Z")
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == 15 * 60
    refresh = jwt.decode(body["refresh_token"], options={"verify_signature": False})
    assert refresh["exp"] - refresh["iat"] == 7 * 86400


def test_wrong_password_is_401_and_audited(client):
    r = client.post("/api/v1/auth/login", json={"email": ADMIN[0], "password": "wrong-password"})
    assert r.status_code == 401
    assert r.get_json()["error"] == {"code": "UNAUTHORIZED", "message": "wrong email or password", "details": {}}
    admin = bearer(login(client, ADMIN)["access_token"])
    events = client.get("/api/v1/audit?action=login_failed", headers=admin).get_json()["events"]
    assert events and events[0]["target"] == ADMIN[0]


def test_refresh_then_logout_revokes_both_tokens(client):
    tokens = login(client, VIEWER)
    r = client.post("/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert r.status_code == 200
    fresh = r.get_json()["access_token"]
    assert client.get("/api/v1/hosts", headers=bearer(fresh)).status_code == 200
    assert client.post("/api/v1/auth/logout", headers=bearer(fresh)).get_json() == {"status": "ok"}
    assert client.get("/api/v1/hosts", headers=bearer(tokens["access_token"])).status_code == 401
    again = client.post("/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert again.status_code == 401


def test_an_access_token_is_not_a_refresh_token(client):
    tokens = login(client, VIEWER)
    r = client.post("/api/v1/auth/refresh", json={"refresh_token": tokens["access_token"]})
    assert r.status_code == 401


def test_disabled_user_is_locked_out_at_once(client):
    admin = bearer(login(client, ADMIN)["access_token"])
    created = client.post(
        "/api/v1/users",
        json={"email": "temp@example.com", "password": "temporary-pass-1", "role": "viewer"},
        headers=admin,
    ).get_json()
    token = login(client, ("temp@example.com", "temporary-pass-1"))["access_token"]
    assert client.patch(f"/api/v1/users/{created['id']}", json={"status": "disabled"}, headers=admin).status_code == 200
    assert client.get("/api/v1/hosts", headers=bearer(token)).status_code == 401
    assert (
        client.post(
            "/api/v1/auth/login", json={"email": "temp@example.com", "password": "temporary-pass-1"}
        ).status_code
        == 401
    )


def test_api_key_is_shown_once_and_stored_hashed(client):
    from gateway.db import ApiKey, db

    admin = bearer(login(client, ADMIN)["access_token"])
    created = client.post("/api/v1/api-keys", json={"name": "rack-7"}, headers=admin).get_json()
    assert created["key"].startswith("fwk_") and len(created["key"]) > 40
    listed = client.get("/api/v1/api-keys?limit=1000", headers=admin).get_json()["api_keys"]
    assert all("key" not in k for k in listed)
    with client.application.app_context():
        row = db.session.execute(db.select(ApiKey).filter_by(id=created["id"])).scalar_one()
        assert created["key"] not in (row.key_hash, row.key_prefix)


def test_api_key_is_not_a_user_token(client):
    admin = bearer(login(client, ADMIN)["access_token"])
    key = client.post("/api/v1/api-keys", json={"name": "agent"}, headers=admin).get_json()["key"]
    assert client.get("/api/v1/hosts", headers={"X-API-Key": key}).status_code == 401
    assert client.get("/api/v1/hosts", headers=bearer(key)).status_code == 401


def test_admin_changes_are_audited(client):
    admin = bearer(login(client, ADMIN)["access_token"])
    host = client.post("/api/v1/hosts", json={"hostname": "audited.example.com"}, headers=admin).get_json()["id"]
    client.delete(f"/api/v1/hosts/{host}", headers=admin)
    events = client.get("/api/v1/audit?limit=20", headers=admin).get_json()["events"]
    actions = {(e["action"], e["target"]) for e in events}
    assert {("host_create", host), ("host_delete", host)} <= actions
    assert all(e["user_id"] and e["at"] for e in events)
