"""Security review findings (issue 13): access policy on every route × method, bad input never a 500."""

from __future__ import annotations

import base64
import hashlib
import os
import re
import socket
import ssl
import stat
import subprocess
import sys
import time
import warnings

import bcrypt
import jwt
import pytest

from fleetwatch.testing.api import ADMIN, VIEWER, bearer, login, make_app
from fleetwatch.testing.tls import self_signed_certificate
from fleetwatch.testing.waits import free_port
from gateway.db import Host, User, db, secret
from rules_compiler.catalog import THROTTLE_REASONS, UnknownMetric, name_pattern, resolve, valid_names

# What each route may be called by; HEAD is judged as GET. Anything not listed is
# VIEWER for reads and ADMIN for writes (the gateway's deny-by-default rule).
PUBLIC = {
    ("POST", "/api/v1/auth/login"),
    ("POST", "/api/v1/auth/refresh"),
    ("GET", "/health"),
    ("GET", "/ready"),
    ("GET", "/v1/health"),
    ("GET", "/metrics"),  # a scrape token, not a user: tested on its own below
    ("POST", "/api/v1/alerts/webhook"),  # Alertmanager's bearer token, checked in the view
    ("GET", "/api/v1/reports/download/<name>"),  # the link's signature is the permission
    ("GET", "/api/v1/reports/runs/<run_id>/files/<name>"),  # so for a scheduled report's files
}
AGENT = {
    ("POST", "/api/v1/ingest/metrics"),
    ("POST", "/api/v1/ingest/heartbeat"),
    ("POST", "/v1/jobs"),  # the Slurm side pushes jobs with an agent key
    ("PATCH", "/v1/jobs/<job_id>"),
    ("POST", "/v1/jobs/<job_id>/metrics"),
}
ADMIN_READS = {
    ("GET", "/api/v1/users"),
    ("GET", "/api/v1/api-keys"),
    ("GET", "/api/v1/audit"),
    ("GET", "/api/v1/reports/schedules"),
    ("GET", "/api/v1/reports/schedules/<schedule_id>"),
    ("GET", "/api/v1/reports/schedules/<schedule_id>/runs"),
    ("GET", "/api/v1/privacy/process-masking"),  # the patterns themselves name what is hidden
}
VIEWER_WRITES = {("POST", "/api/v1/auth/logout"), ("POST", "/api/v1/auth/password")}
WRITES = {"POST", "PUT", "PATCH", "DELETE"}


@pytest.fixture(scope="module")
def sec_app(tmp_path_factory):
    """The gateway in-process with no Prometheus behind it: these tests are about the gateway's own rules."""
    app = make_app(
        tmp_path_factory.mktemp("gateway-sec"),
        f"http://127.0.0.1:{free_port()}",
        RATE_LIMIT_READS_PER_MIN=100_000,
        RATE_LIMIT_WRITES_PER_MIN=100_000,
        LOGIN_ATTEMPTS_PER_MIN=100_000,
    )
    client = app.test_client()
    admin = bearer(login(client, ADMIN)["access_token"])
    r = client.post("/api/v1/users", json={"email": VIEWER[0], "password": VIEWER[1], "role": "viewer"}, headers=admin)
    assert r.status_code == 201, r.get_json()
    return app


@pytest.fixture
def client(sec_app):
    return sec_app.test_client()


def expected_policy(method: str, rule: str) -> str:
    method = "GET" if method == "HEAD" else method
    rule = re.sub(r"<(?:\w+:)?(\w+)>", r"<\1>", rule)  # <string:job_id> is <job_id>
    if rule.startswith("/api/docs") or rule == "/api/openapi.json" or (method, rule) in PUBLIC:
        return "public"
    if (method, rule) in AGENT:
        return "agent"
    if (method, rule) in ADMIN_READS:
        return "admin"
    if (method, rule) in VIEWER_WRITES:
        return "viewer"
    return "admin" if method in WRITES else "viewer"


def callers(client) -> dict[str, dict]:
    admin = bearer(login(client, ADMIN)["access_token"])
    key = client.post(
        "/api/v1/api-keys", json={"name": "policy-walk", "host_pattern": "*", "allow_discovery": True}, headers=admin
    ).get_json()["key"]
    return {
        "anonymous": {},
        "viewer": bearer(login(client, VIEWER)["access_token"]),
        "admin": admin,
        "agent": {"X-API-Key": key},
    }


def allowed(policy: str, caller: str) -> bool:
    return {
        "viewer": caller in ("viewer", "admin"),
        "admin": caller == "admin",
        "agent": caller == "agent",
    }[policy]


def test_every_route_and_method_is_judged_by_its_policy(client, sec_app):
    """Finding 1: HEAD is GET for the policy (no admin-only answer, nor its size, to a viewer)."""
    who = callers(client)
    checked = 0
    for rule in sec_app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = rule.rule.replace("<path:filename>", "swagger-ui.css")
        path = re.sub(r"<(?:\w+:)?\w+>", "no-such-id", path)
        for method in sorted(rule.methods - {"OPTIONS"}):
            policy = expected_policy(method, rule.rule)
            for caller, headers in who.items():
                # logout ends the session: a fresh token each time keeps the others valid
                if rule.rule == "/api/v1/auth/logout" and caller in ("viewer", "admin"):
                    headers = bearer(login(client, VIEWER if caller == "viewer" else ADMIN)["access_token"])
                r = client.open(path, method=method, headers=headers, buffered=False)
                if r.mimetype == "text/event-stream":  # /api/v1/stream never ends: its status is the answer
                    r.close()
                    where = f"{caller} {method} {rule.rule} -> {r.status_code} (a stream)"
                else:
                    where = f"{caller} {method} {rule.rule} -> {r.status_code} {r.get_data(as_text=True)[:200]}"
                checked += 1
                if method == "HEAD":
                    get = client.open(path, method="GET", headers=headers, buffered=False)
                    get.close()
                    assert r.status_code == get.status_code, where
                    assert r.get_data() == b"", where
                    if r.status_code in (401, 403):
                        assert r.headers.get("Content-Length") in (None, get.headers.get("Content-Length")), where
                assert r.status_code != 500, where  # 503: no Prometheus here
                if policy == "public":
                    continue  # the view itself checks its token or signature, if any
                if allowed(policy, caller):
                    assert r.status_code not in (401, 403), where
                elif caller in ("anonymous", "agent") or policy == "agent":
                    assert r.status_code == 401, where
                else:
                    assert r.status_code == 403, where
    assert checked > 200


def test_a_viewer_gets_no_admin_list_by_head(client):
    viewer = bearer(login(client, VIEWER)["access_token"])
    for path in ("/api/v1/users", "/api/v1/api-keys", "/api/v1/audit"):
        r = client.head(path, headers=viewer)
        assert r.status_code == 403, path


def error_of(r, status: int) -> dict:
    """The answer's error, after checking its status and the spec's error shape."""
    body = r.get_json()
    assert r.status_code == status, (r.status_code, body)
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "details"}, body
    return body["error"]


LONG = "pässwörd-" * 8  # 80 characters, 96 bytes in UTF-8: past bcrypt's 72


def test_a_password_past_72_bytes_counts_whole_and_is_never_a_500(client):
    """Finding 11: bcrypt raised ValueError (500) at login, user creation and password change."""
    admin = bearer(login(client, ADMIN)["access_token"])
    r = client.post("/api/v1/auth/login", json={"email": ADMIN[0], "password": "x" * 100})
    error_of(r, 401)
    r = client.post(
        "/api/v1/users", json={"email": "long@example.com", "password": LONG, "role": "viewer"}, headers=admin
    )
    assert r.status_code == 201, r.get_json()
    login(client, ("long@example.com", LONG))
    same_first_72_bytes = LONG[:-1] + "X"
    r = client.post("/api/v1/auth/login", json={"email": "long@example.com", "password": same_first_72_bytes})
    error_of(r, 401)  # bcrypt alone would have let it in
    r = client.patch(
        f"/api/v1/users/{r_id(client, 'long@example.com', admin)}", json={"password": LONG * 2}, headers=admin
    )
    assert r.status_code == 200, r.get_json()
    login(client, ("long@example.com", LONG * 2))
    r = client.post("/api/v1/users", json={"email": "huge@example.com", "password": "x" * 1025, "role": "viewer"},
                    headers=admin)  # fmt: skip
    error_of(r, 400)
    # A hash made before (plain bcrypt) still opens; a long password against it is a 401, not a 500.
    with client.application.app_context():
        user = db.session.execute(db.select(User).filter_by(email="long@example.com")).scalar_one()
        user.password_hash = bcrypt.hashpw(b"legacy-password-1", bcrypt.gensalt(4)).decode()
        db.session.commit()
    login(client, ("long@example.com", "legacy-password-1"))
    error_of(client.post("/api/v1/auth/login", json={"email": "long@example.com", "password": LONG}), 401)


def r_id(client, email: str, admin: dict) -> str:
    users = client.get("/api/v1/users?limit=1000", headers=admin).get_json()["users"]
    return next(u["id"] for u in users if u["email"] == email)


@pytest.mark.parametrize("path", ["/api/v1/api-keys", "/api/v1/audit", "/api/v1/alerts/events", "/api/v1/users",
                                  "/api/v1/hosts", "/api/v1/alerts/rules", "/api/v1/alerts/history"])  # fmt: skip
@pytest.mark.parametrize("field", ["offset", "limit"])
def test_paging_past_sqlite_integers_is_400(client, path, field):
    """Finding 11: an offset of 2**63 and more was an OverflowError (500) in SQLite's driver."""
    admin = bearer(login(client, ADMIN)["access_token"])
    for value in (2**63, 2**64 + 5, 10**30):
        r = client.get(f"{path}?{field}={value}", headers=admin)
        error = error_of(r, 400)
        assert field in error["details"].get("query", {}), error


def test_tag_names_starting_with_two_underscores_are_refused(client):
    """Finding 12: `__` names are Prometheus's own and reached fleet_host_info."""
    admin = bearer(login(client, ADMIN)["access_token"])
    r = client.post("/api/v1/hosts", json={"hostname": "tags.example.com", "tags": {"__name__": "x"}}, headers=admin)
    assert "tags" in error_of(r, 400)["details"]["json"]
    r = client.post("/api/v1/hosts", json={"hostname": "tags.example.com", "tags": {"__meta": "x"}}, headers=admin)
    error_of(r, 400)
    with client.application.app_context():
        assert not db.session.execute(db.select(Host).filter_by(hostname="tags.example.com")).first()
    r = client.post("/api/v1/hosts", json={"hostname": "tags.example.com", "tags": {"_rack": "7"}}, headers=admin)
    assert r.status_code == 201, r.get_json()


@pytest.mark.parametrize(
    "method,path,caller",
    [
        ("POST", "/api/v1/hosts", "admin"),
        ("POST", "/api/v1/auth/login", "anonymous"),
        ("POST", "/api/v1/alerts/rules", "admin"),
        ("POST", "/api/v1/ingest/metrics", "agent"),
        ("POST", "/api/v1/alerts/webhook", "alertmanager"),
    ],
)
def test_deeply_nested_json_is_a_400(client, method, path, caller):
    """Finding 12: 100,000 nested lists blew Python's recursion limit in the JSON parser: a 500."""
    if caller == "alertmanager":
        with client.application.app_context():
            headers = bearer(secret("alertmanager-webhook"))
    else:
        headers = callers(client)[caller]
    body = "[" * 100_000 + "]" * 100_000
    r = client.open(path, method=method, data=body, content_type="application/json", headers=headers)
    error_of(r, 400)


def test_metrics_without_a_token_answer_only_loopback(client):
    """Finding 12: /metrics lists every host and tag; with no scrape token set, only loopback may read it."""
    r = client.get("/metrics")
    assert r.status_code == 200 and b"fleet_host_info" in r.data
    assert client.get("/metrics", environ_base={"REMOTE_ADDR": "::ffff:127.0.0.1"}).status_code == 200  # dual stack
    assert client.get("/metrics", environ_base={"REMOTE_ADDR": "::1"}).status_code == 200
    for addr in ("10.1.2.3", "::ffff:10.1.2.3", "2001:db8::1"):
        r = client.get("/metrics", environ_base={"REMOTE_ADDR": addr})
        assert "FLEETWATCH_METRICS_TOKEN" in error_of(r, 403)["message"], addr
        assert b"fleet_host_info" not in r.data


@pytest.mark.parametrize("how", ["setting", "file"])
def test_metrics_with_a_token_want_it_from_everyone(tmp_path, how):
    token = "scrape-" + "x" * 40
    if how == "file":
        (tmp_path / "metrics-token").write_text(token + "\n")
        setting = {"METRICS_TOKEN_FILE": str(tmp_path / "metrics-token")}
    else:
        setting = {"METRICS_TOKEN": token}
    client = make_app(tmp_path, f"http://127.0.0.1:{free_port()}", **setting).test_client()
    for headers in ({}, bearer("wrong"), {"Authorization": token}):
        error_of(client.get("/metrics", headers=headers), 401)
    for addr in ("127.0.0.1", "10.1.2.3"):
        r = client.get("/metrics", headers=bearer(token), environ_base={"REMOTE_ADDR": addr})
        assert r.status_code == 200 and b"api_requests_total" in r.data


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_state_is_private_whatever_the_umask(tmp_path, stack):
    """Finding 2: gateway.db (signing key, sessions), ratelimit.db, their -wal/-shm and exports were 0644."""
    state = tmp_path / "state"
    old = os.umask(0o022)
    try:
        app = make_app(state, stack.urls()["prometheus"])
        client = app.test_client()
        admin = bearer(login(client, ADMIN)["access_token"])  # the rate-limit store is made by a login
        host = client.post("/api/v1/hosts", json={"hostname": "perm.example.com"}, headers=admin).get_json()["id"]
        r = client.post("/api/v1/reports/export", json={"host_id": host, "metric": "cpu.load1", "range": "15m"},
                        headers=admin)  # fmt: skip
        assert r.status_code == 200, r.get_json()
    finally:
        os.umask(old)
    assert mode(state) == 0o711  # others pass through, list nothing
    made = [p for p in state.rglob("*") if p.is_file()]
    names = {p.name for p in made}
    assert {"gateway-test.db", "gateway-test.db-wal", "ratelimit.db", "ratelimit.db-wal"} <= names, names
    assert any(p.suffix == ".csv" for p in made), names
    for p in made:
        if p.suffix in (".db", ".csv") or p.name.endswith(("-wal", "-shm")):
            assert mode(p) == 0o600, (p, oct(mode(p)))
    for d in (state / "exports",):
        assert mode(d) == 0o700, d


def test_fleetwatch_up_keeps_its_logs_and_state_private(stack):
    state = stack.config.state_dir
    assert mode(state) == 0o711  # others pass through, list nothing
    logs = list((state / "logs").glob("*.log"))
    assert logs and all(mode(p) == 0o600 for p in logs), [(p.name, oct(mode(p))) for p in logs]
    assert mode(state / "secrets" / "metrics-token") == 0o600
    assert mode(state / "gateway.db") == 0o600


def test_the_jwt_key_may_come_from_a_file(tmp_path):
    (tmp_path / "jwt-key").write_text("k" * 64 + "\n")
    client = make_app(
        tmp_path, f"http://127.0.0.1:{free_port()}", JWT_SECRET_FILE=str(tmp_path / "jwt-key")
    ).test_client()
    token = login(client, ADMIN)["access_token"]
    assert jwt.decode(token, "k" * 64, algorithms=["HS256"])["typ"] == "access"


@pytest.mark.parametrize("proxies", [0, 1])
def test_x_forwarded_for_counts_only_from_a_trusted_proxy(tmp_path, proxies):
    """Finding 10: behind a proxy every client shared one login bucket; without one, XFF is a free pass."""
    client = make_app(
        tmp_path, f"http://127.0.0.1:{free_port()}", LOGIN_ATTEMPTS_PER_MIN=3, PROXY_HOPS=proxies
    ).test_client()
    wrong = {"email": "who@example.com", "password": "wrong"}
    codes = [
        client.post("/api/v1/auth/login", json=wrong, headers={"X-Forwarded-For": f"198.51.100.{i}"}).status_code
        for i in range(4)
    ]
    assert codes == ([401] * 4 if proxies else [401, 401, 401, 429])
    admin = bearer(login(client, ADMIN)["access_token"]) if proxies else None
    if proxies:  # the address the audit log keeps is the client's, not the proxy's
        events = client.get("/api/v1/audit?action=login_failed", headers=admin).get_json()["events"]
        assert events[0]["ip"] == "198.51.100.3"


def test_security_headers_on_every_answer(client):
    """nosniff everywhere; no-store on what the API answers (tokens, lists); HSTS only over HTTPS."""
    admin = bearer(login(client, ADMIN)["access_token"])
    answers = {
        "health": client.get("/health"),
        "unauthenticated": client.get("/api/v1/hosts"),
        "not found": client.get("/no/such/page"),
        "hosts": client.get("/api/v1/hosts", headers=admin),
        "login": client.post("/api/v1/auth/login", json={"email": ADMIN[0], "password": ADMIN[1]}),
        "docs": client.get("/api/docs"),
        "spec": client.get("/api/openapi.json"),
    }
    for name, r in answers.items():
        assert r.headers["X-Content-Type-Options"] == "nosniff", name
        assert r.headers["X-Frame-Options"] == "DENY", name
        assert "Strict-Transport-Security" not in r.headers, name  # plain HTTP: HSTS would be ignored
    for name in ("unauthenticated", "hosts", "login"):
        assert answers[name].headers["Cache-Control"] == "no-store", name
    https = client.get("/health", base_url="https://localhost")
    assert https.headers["Strict-Transport-Security"] == "max-age=31536000"


def test_hsts_behind_a_trusted_tls_proxy(tmp_path):
    client = make_app(tmp_path, f"http://127.0.0.1:{free_port()}", PROXY_HOPS=1).test_client()
    r = client.get("/health", headers={"X-Forwarded-Proto": "https"})
    assert r.headers["Strict-Transport-Security"] == "max-age=31536000"


def test_the_docs_page_has_a_csp_its_own_scripts_pass(client):
    """Swagger UI still works under the policy: its scripts are same-origin, its one inline script is hashed."""
    r = client.get("/api/docs")
    policy = dict(part.strip().split(" ", 1) for part in r.headers["Content-Security-Policy"].split(";"))
    page = r.get_data()
    inline = re.findall(rb"<script>(.*?)</script>", page, re.DOTALL)
    assert inline
    for body in inline:
        digest = base64.b64encode(hashlib.sha256(body).digest()).decode()
        assert f"'sha256-{digest}'" in policy["script-src"]
    for src in re.findall(rb'<script src="([^"]+)"', page) + re.findall(rb'<link href="([^"]+)"', page):
        assert src.startswith(b"/") and not src.startswith(b"//"), src  # 'self'
        assert client.get(src.decode()).status_code == 200, src
    assert "'unsafe-eval'" not in policy["script-src"] and "'unsafe-inline'" not in policy["script-src"]
    assert policy["connect-src"] == "'self'" and policy["frame-ancestors"] == "'none'"


@pytest.mark.integration
def test_the_gateway_serves_tls_12_and_up_with_modern_ciphers_only(tmp_path):
    """TLS-001/002 with `fleetwatch-gateway serve --certfile`: old protocols and weak suites are refused."""
    cert, key = self_signed_certificate(tmp_path)
    port = free_port()
    env = {**os.environ, "FLEETWATCH_STATE_DIR": str(tmp_path / "state"), "FLEETWATCH_BCRYPT_ROUNDS": "4",
           "FLEETWATCH_PROMETHEUS_URL": f"http://127.0.0.1:{free_port()}"}  # fmt: skip
    argv = [sys.executable, "-m", "gateway.cli", "serve", f"--bind=127.0.0.1:{port}", "--workers=1",
            f"--certfile={cert}", f"--keyfile={key}"]  # fmt: skip
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def handshake(**settings) -> str | None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.load_verify_locations(cert)
        context.set_ciphers(settings.pop("ciphers", "DEFAULT") + ":@SECLEVEL=0")  # let the client offer old things
        with warnings.catch_warnings():  # TLS 1.0/1.1 are deprecated: that is the point
            warnings.simplefilter("ignore", DeprecationWarning)
            for name, value in settings.items():
                setattr(context, name, value)
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
                with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                    tls.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                    answer = b""
                    while chunk := tls.recv(65536):
                        answer += chunk
                    return answer.decode()
        except (ssl.SSLError, ConnectionError):
            return None

    try:
        deadline = time.monotonic() + 30
        while (modern := handshake()) is None:  # refused until gunicorn listens
            assert proc.poll() is None and time.monotonic() < deadline, "the gateway did not start"
            time.sleep(0.2)
        assert modern and " 200 " in modern.splitlines()[0]
        assert "Strict-Transport-Security: max-age=31536000" in modern
        assert handshake(maximum_version=ssl.TLSVersion.TLSv1_2, ciphers="ECDHE-RSA-AES128-GCM-SHA256")
        assert handshake(maximum_version=ssl.TLSVersion.TLSv1_1, minimum_version=ssl.TLSVersion.TLSv1_1) is None
        # no forward secrecy, or CBC (Python's default server list still takes ECDHE-RSA-AES*-SHA256/384)
        for weak in ("AES128-SHA", "AES256-GCM-SHA384", "ECDHE-RSA-AES128-SHA256", "ECDHE-RSA-AES256-SHA384"):
            assert handshake(maximum_version=ssl.TLSVersion.TLSv1_2, ciphers=weak) is None, weak
    finally:
        proc.terminate()
        proc.wait(20)


def test_the_openapi_document_declares_who_may_call_what(client):
    """Swagger UI gets an Authorize button; each operation says its security and the role it needs."""
    spec = client.get("/api/openapi.json").get_json()
    schemes = spec["components"]["securitySchemes"]
    assert schemes["bearerAuth"] == {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
    assert schemes["apiKey"] == {"type": "apiKey", "in": "header", "name": "X-API-Key"}
    wanted = {"public": [], "viewer": [{"bearerAuth": []}], "admin": [{"bearerAuth": []}], "agent": [{"apiKey": []}]}
    seen = set()
    for path, operations in spec["paths"].items():
        rule = path.replace("{", "<").replace("}", ">")
        for method, operation in operations.items():
            if method == "parameters":  # the path's, not an operation
                continue
            policy = expected_policy(method.upper(), rule)
            seen.add(policy)
            where = f"{method} {path}"
            assert operation["security"] == wanted[policy], where
            role = {"public": "none", "viewer": "Viewer", "admin": "Admin", "agent": "an agent's API key"}[policy]
            assert f"Access: {role}" in operation["description"], where
            if policy != "public":
                assert {"401", "403"} <= set(operation["responses"]), where
    assert seen == set(wanted)


def test_a_405_says_what_is_allowed(client):
    """Found by schemathesis: the error handler dropped werkzeug's Allow header (RFC 9110 wants it)."""
    r = client.open("/health", method="TRACE")
    error_of(r, 405)
    assert set(r.headers["Allow"].replace(" ", "").split(",")) >= {"GET", "HEAD"}


@pytest.mark.parametrize(
    "channel",
    [
        "webhook:http://^e/hook",
        "slack:https://hooks.example.com/a%zz",
        "email:ops\x02@example.com",
        "email:a..b@example.com",
        "email:{{ .x }}@example.com",
    ],
)
def test_a_channel_amtool_would_refuse_is_a_validation_error(client, channel):
    """Found by schemathesis: these passed validation, then amtool refused the whole Alertmanager file."""
    admin = bearer(login(client, ADMIN)["access_token"])
    rule = {"name": "bad channel", "expression": "cpu.utilization > 90", "channels": [channel]}
    error = error_of(client.post("/api/v1/alerts/rules", json=rule, headers=admin), 400)
    assert "channels" in error["details"]["json"], error


def test_what_get_shows_as_exporter_patch_takes(client):
    """Found by schemathesis: a pushing host's exporter reads "push", which its documented pattern refused."""
    admin = bearer(login(client, ADMIN)["access_token"])
    host = client.post("/api/v1/hosts", json={"hostname": "pusher.example.com"}, headers=admin).get_json()["id"]
    r = client.patch(f"/api/v1/hosts/{host}", json={"exporter": "push"}, headers=admin)
    assert r.status_code == 200 and r.get_json()["exporter"] == "push", r.get_json()
    r = client.patch(f"/api/v1/hosts/{host}", json={"exporter": "10.0.0.7:9100"}, headers=admin)
    assert r.get_json()["exporter"] == "10.0.0.7:9100"
    error_of(client.patch(f"/api/v1/hosts/{host}", json={"exporter": "pushy"}, headers=admin), 400)
    spec = client.get("/api/openapi.json").get_json()["components"]["schemas"]["Host"]["properties"]["exporter"]
    assert re.fullmatch(spec["pattern"], "push") and re.fullmatch(spec["pattern"], "10.0.0.7:9100")


def test_the_documented_metric_pattern_is_what_the_catalog_resolves():
    """The OpenAPI pattern for metric names comes from the catalog: every name it resolves, nothing else."""
    pattern = name_pattern()
    names = [n for n in valid_names() if n != "cpu.core.N"] + ["cpu.core.0", "cpu.core.127"]
    names += [f"gpu.throttled.{reason}" for reason in THROTTLE_REASONS]
    for name in names:
        resolve(name)
        assert re.fullmatch(pattern, name), name
    for name in ("cpu.core", "cpu.core.x", "gpu.throttled.nope", "cpu.bogus", "cpu.utilization\n"):
        assert not re.fullmatch(pattern, name), name
        with pytest.raises(UnknownMetric):
            resolve(name)
