"""The gateway as tests and benches drive it: the app in-process, and logins over HTTP or through a test client."""

from __future__ import annotations

import json
import time
from pathlib import Path

import requests

from fleetwatch.testing.waits import free_port

ADMIN = ("admin@example.com", "admin-password-123")
VIEWER = ("viewer@example.com", "viewer-password-123")


def make_app(state_dir: Path, prometheus_url: str, **overrides):
    """The gateway app in-process on ``state_dir`` and ``prometheus_url``, with ADMIN and test settings."""
    from gateway.app import create_app

    config = {
        "TESTING": True,
        "STATE_DIR": str(state_dir),
        "SQLALCHEMY_DATABASE_URI": f"sqlite:///{state_dir}/gateway-{overrides.pop('db_name', 'test')}.db",
        "PROMETHEUS_URL": prometheus_url,
        # Nothing listens there: an in-process app never reloads a real Alertmanager.
        "ALERTMANAGER_URL": f"http://127.0.0.1:{free_port()}",
        "BCRYPT_ROUNDS": 4,  # bcrypt's minimum: tests log in hundreds of times
        "ADMIN_EMAIL": ADMIN[0],
        "ADMIN_PASSWORD": ADMIN[1],
        "LOG_JSON": False,
        "QUERY_CACHE_TTL_S": 0.0,
        **overrides,
    }
    return create_app(config)


def login(client, creds: tuple[str, str] = ADMIN) -> dict:
    """Log in through a Flask test client; the token answer."""
    r = client.post("/api/v1/auth/login", json={"email": creds[0], "password": creds[1]})
    assert r.status_code == 200, r.get_json()
    return r.get_json()


def relay_key(client, name: str = "k") -> str:
    """A relay API key (every host, discovery on) made by ADMIN through a Flask test client."""
    r = client.post(
        "/api/v1/api-keys",
        json={"name": name, "host_pattern": "*", "allow_discovery": True},
        headers=bearer(login(client, ADMIN)["access_token"]),
    )
    assert r.status_code == 201, r.get_json()
    return r.get_json()["key"]


def bearer(token: str) -> dict:
    """The Authorization header for ``token``."""
    return {"Authorization": f"Bearer {token}"}


def http_login(url: str, creds: tuple[str, str] = ADMIN, verify: bool | str = True) -> dict:
    """Log in to a gateway over HTTP; the Authorization header of the token it gives."""
    r = requests.post(
        f"{url}/api/v1/auth/login", json={"email": creds[0], "password": creds[1]}, timeout=30, verify=verify
    )
    assert r.status_code == 200, r.text
    return bearer(r.json()["access_token"])


def api_session(url: str, creds: tuple[str, str] = ADMIN, verify: bool | str = True) -> requests.Session:
    """A requests session logged in to the gateway at ``url``; ``session.base`` is that URL."""
    s = requests.Session()
    s.verify = verify
    s.headers.update(http_login(url, creds, verify))
    s.base = url
    return s


def api_key(session: requests.Session, name: str = "agents") -> str:
    """A new API key for agents, made by an admin's session."""
    # verify given again: requests lets REQUESTS_CA_BUNDLE override a session's own (psf/requests#3829).
    r = session.post(
        f"{session.base}/api/v1/api-keys",
        json={"name": name, "host_pattern": "*", "allow_discovery": True},
        timeout=30,
        verify=session.verify,
    )
    assert r.status_code == 201, r.text
    return r.json()["key"]


def targets_once(state_dir: Path, check, timeout_s: float = 5.0) -> list[dict]:
    """The gateway's file_sd targets once ``check(targets)`` holds, or as they are after ``timeout_s``.

    A burst of inventory changes is written once, at the end of the gateway's
    TARGETS_WRITE_GAP_S: the file may trail a change by that much.
    """
    path = Path(state_dir) / "file_sd" / "hosts.json"
    deadline = time.monotonic() + timeout_s
    while True:
        targets = json.loads(path.read_text()) if path.exists() else []
        if check(targets) or time.monotonic() > deadline:
            return targets
        time.sleep(0.05)
