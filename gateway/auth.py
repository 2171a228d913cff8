"""Who is calling and may they: JWTs, API keys, roles, per-user rate limits (logging in: sessions.py).

Access is decided for every request in one ``before_request`` hook, deny by
default: a view is readable by viewers and writable by admins unless it says
otherwise with ``@access(...)``, so a forgotten decorator cannot open a hole.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import logging
import time
from dataclasses import dataclass
from datetime import timedelta

import bcrypt
import jwt
import marshmallow as ma
from flask import current_app, g, request
from sqlalchemy import delete, text

from gateway.db import AuditEvent, db, secret, utcnow
from gateway.errors import Forbidden, Unauthorized
from gateway.key_scope import KeyScope
from gateway.lookup_cache import lookup_cache
from gateway.ratelimit import count_request

log = logging.getLogger(__name__)

PUBLIC, VIEWER, ADMIN, AGENT = "public", "viewer", "admin", "agent"
WRITES = {"POST", "PUT", "PATCH", "DELETE"}
API_KEY_PREFIX = "fwk_"


@dataclass(frozen=True)
class Principal:
    kind: str  # "user" | "api_key"
    id: str
    role: str  # "viewer" | "admin" | "agent"
    email: str | None = None
    session_id: str | None = None
    scope: object = None  # an API key's KeyScope (gateway/key_scope.py): the hosts it speaks for


def access(policy: str):
    """Mark a view method's access policy: PUBLIC, VIEWER, ADMIN or AGENT."""

    def mark(fn):
        fn.access_policy = policy
        fn._apidoc = {**getattr(fn, "_apidoc", {}), "access": policy}  # for the OpenAPI document
        return fn

    return mark


# How the OpenAPI document shows each policy: the scheme Swagger UI's Authorize button fills, and who.
SECURITY_SCHEMES = {
    "bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
    "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
}
_SECURITY = {PUBLIC: [], VIEWER: [{"bearerAuth": []}], ADMIN: [{"bearerAuth": []}], AGENT: [{"apiKey": []}]}
_WHO = {
    PUBLIC: "none (no login)",
    VIEWER: "Viewer (a bearer access token of a Viewer or an Admin)",
    ADMIN: "Admin (a bearer access token of an Admin)",
    AGENT: "an agent's API key (X-API-Key, or Authorization: Bearer fwk_…)",
}


def default_policy(method: str) -> str:
    return ADMIN if method in WRITES else VIEWER


def document_access(doc: dict, doc_info: dict, method: str) -> dict:
    """Put an operation's security and required role in its OpenAPI ``doc``, from its access policy."""
    policy = doc_info.get("access") or default_policy(method.upper())
    doc["security"] = _SECURITY[policy]
    docstring = doc_info["docstring"]
    docstring["description"] = f"Access: {_WHO[policy]}." + (
        f"\n\n{docstring['description']}" if docstring.get("description") else ""
    )
    if policy != PUBLIC:
        error = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
        responses = doc.setdefault("responses", {})
        responses.setdefault("401", {"description": "no or a bad token/key", **error})
        responses.setdefault("403", {"description": "the caller's role may not do this", **error})
    return doc


# bcrypt reads at most 72 bytes (and bcrypt>=4.1 raises past them: a 500 at login). New hashes are
# bcrypt over base64(SHA-256(password)), marked so: every byte counts, whatever the length. Hashes
# without the mark (made before) are plain bcrypt, checked as they were made.
PREHASHED = "$fws$"
BCRYPT_MAX_BYTES = 72
PASSWORD_MAX_CHARS = 1024


def _prehash(password: str) -> bytes:
    return base64.b64encode(hashlib.sha256(password.encode()).digest())  # 44 bytes, no NUL


def password_field(min_chars: int, **kwargs) -> ma.fields.String:
    """A password as every schema takes it: ``min_chars`` to 1,024 characters."""
    return ma.fields.String(validate=ma.validate.Length(min=min_chars, max=PASSWORD_MAX_CHARS), **kwargs)


def hash_password(password: str) -> str:
    rounds = current_app.config["BCRYPT_ROUNDS"]
    return PREHASHED + bcrypt.hashpw(_prehash(password), bcrypt.gensalt(rounds)).decode()


@functools.lru_cache(maxsize=4)
def _dummy_hash(rounds: int) -> str:
    # Checked for an unknown email at the same cost as a real hash: no user enumeration by timing.
    return PREHASHED + bcrypt.hashpw(b"not a password", bcrypt.gensalt(rounds)).decode()


def check_password(password: str, hashed: str | None) -> bool:
    stored = hashed or _dummy_hash(current_app.config["BCRYPT_ROUNDS"])
    if stored.startswith(PREHASHED):
        ok = bcrypt.checkpw(_prehash(password), stored.removeprefix(PREHASHED).encode())
    else:  # a hash from before PREHASHED: plain bcrypt, which never held more than 72 bytes
        raw = password.encode()
        ok = len(raw) <= BCRYPT_MAX_BYTES and bcrypt.checkpw(raw, stored.encode())
    return ok and hashed is not None


def hash_api_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def audit(action: str, target: str | None = None, **details) -> None:
    """Record an admin action or login in the audit log (and the JSON log)."""
    principal = g.get("principal")
    user_id = details.pop("user_id", None) or (principal.id if principal else None)
    db.session.add(AuditEvent(user_id=user_id, action=action, target=target, ip=request.remote_addr, details=details))
    # AUDIT-002: each write drops what is past retention, in the same transaction. A condition
    # the DB checks, not a timer in one worker: it holds for any number of workers and replicas,
    # and on the `at` index it costs next to nothing when there is nothing to drop.
    cutoff = utcnow() - timedelta(days=float(current_app.config["AUDIT_RETENTION_DAYS"]))
    db.session.execute(delete(AuditEvent).where(AuditEvent.at < cutoff))
    log.info(
        "audit %s", action, extra={"user_id": user_id, "action": action, "target": target, "ip": request.remote_addr}
    )


def _policy(method: str) -> str | None:
    view = current_app.view_functions.get(request.endpoint)
    if view is None:
        return None  # no such route: Flask answers 404/405 in our error shape
    if request.blueprint == "api-docs":
        return PUBLIC  # flask-smorest's OpenAPI document and Swagger UI
    if method == "HEAD":
        # Flask answers HEAD with the GET view: it must pass GET's check, or its status
        # and Content-Length tell a viewer what an admin-only list holds.
        method = "GET"
    fn = getattr(getattr(view, "view_class", None), method.lower(), view)
    return getattr(fn, "access_policy", getattr(view, "access_policy", default_policy(method)))


def authorize() -> None:
    """before_request: authenticate, check the role, count the request against the user's limit."""
    if request.method == "OPTIONS":
        return
    policy = _policy(request.method)
    if policy in (None, PUBLIC):
        return
    principal = _api_key_principal() if policy == AGENT else _token_principal()
    if policy == ADMIN and principal.role != "admin":
        raise Forbidden("this action needs the admin role", {"role": principal.role})
    g.principal = principal
    if principal.kind == "user":
        kind = "write" if request.method in WRITES else "read"
        limit = current_app.config[f"RATE_LIMIT_{kind.upper()}S_PER_MIN"]
        count_request(f"{principal.id}:{kind}", limit)


# Views a browser reaches with EventSource, which cannot set headers: they also take ?access_token=.
QUERY_TOKEN_ENDPOINTS: set[str] = set()


def request_token() -> str:
    """The request's access token: Authorization's bearer, or ``?access_token=`` on QUERY_TOKEN_ENDPOINTS."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token:
        return token
    if request.endpoint in QUERY_TOKEN_ENDPOINTS and request.args.get("access_token"):
        return request.args["access_token"]
    raise Unauthorized("missing bearer token", {"header": "Authorization: Bearer <token>"})


def _token_principal() -> Principal:
    """The user of the request's token; token and session are remembered by this worker for SESSION_CACHE_S.

    Every request of a user needs them; verified and read from the DB each
    time, they were over a third of a short query's own cost. The price: a session
    ended, a user disabled or demoted through another worker or replica still
    works as before for up to SESSION_CACHE_S (5 s); through this worker, at
    once (``forget_sessions``). The token's expiry is checked every time.
    """
    token = request_token()
    sessions = lookup_cache("sessions", "SESSION_CACHE_S")
    hit = sessions.get(token)
    if hit is not None and time.time() < hit[1]:
        return hit[0]
    claims = decode_token(token, "access")
    principal = live_session(claims)
    sessions.put(token, (principal, claims["exp"]))
    return principal


def forget_sessions() -> None:
    """A session, a role or a status changes: this worker stops trusting the sessions it read, at once."""
    lookup_cache("sessions", "SESSION_CACHE_S").forget_all()


def live_session(claims: dict) -> Principal:
    """The user of a verified token, read from the DB: if its login session is not revoked and the user not disabled."""
    # One plain row, not two ORM entities: this runs for every request.
    row = db.session.execute(
        text(
            "SELECT s.revoked_at, u.id, u.role, u.email, u.status FROM login_sessions s "
            "JOIN users u ON u.pk = s.user_pk WHERE s.id = :sid"
        ),
        {"sid": claims["sid"]},
    ).first()
    if row is None or row.revoked_at is not None:
        raise Unauthorized("session ended; log in again")
    if row.status != "active":
        raise Unauthorized("user disabled")
    return Principal("user", row.id, row.role, row.email, claims["sid"])


def _api_key_principal() -> Principal:
    """The agent behind an API key; a valid key is remembered by this worker for API_KEY_CACHE_S.

    An agent's key comes with every push, up to thousands a second: looking it
    up in the DB each time took a fifth of the ingest path. The price is that a
    revoked key still works for up to API_KEY_CACHE_S (5 s) in the other workers;
    the worker that revokes it forgets it at once.
    """
    key = request.headers.get("X-API-Key") or request.headers.get("Authorization", "").removeprefix("Bearer ")
    if not key.startswith(API_KEY_PREFIX):
        raise Unauthorized("missing API key", {"header": "X-API-Key: <key>"})
    digest = hash_api_key(key)
    known = lookup_cache("api_keys", "API_KEY_CACHE_S")
    principal = known.get(digest)
    if principal is not None:
        return principal
    row = db.session.execute(
        text(
            "SELECT pk, id, revoked_at, host_pattern, allow_discovery, max_hosts, max_series "
            "FROM api_keys WHERE key_hash = :digest"
        ),
        {"digest": digest},
    ).first()
    if row is None or row.revoked_at is not None:
        raise Unauthorized("invalid or revoked API key")
    scope = KeyScope(row.pk, row.host_pattern, bool(row.allow_discovery), row.max_hosts, row.max_series)
    principal = Principal("api_key", row.id, AGENT, scope=scope)
    known.put(digest, principal)
    return principal


def forget_api_key(key_hash: str) -> None:
    """Revoked: this worker stops honouring the key at once (the others within API_KEY_CACHE_S)."""
    lookup_cache("api_keys", "API_KEY_CACHE_S").forget(key_hash)


def issue_token(user: Principal, kind: str, ttl: timedelta, **extra) -> tuple[str, int]:
    """A signed token for ``user``'s login session; returns it with its expiry (Unix seconds)."""
    now = int(time.time())
    exp = now + int(ttl.total_seconds())
    claims = {"sub": user.id, "sid": user.session_id, "typ": kind, "role": user.role, "iat": now, "exp": exp, **extra}
    return jwt.encode(claims, secret("jwt"), algorithm="HS256"), exp


def decode_token(token: str, kind: str) -> dict:
    """Verify signature (HS256 only: "alg": "none" and key confusion are refused), expiry and type."""
    try:
        claims = jwt.decode(
            token, secret("jwt"), algorithms=["HS256"], options={"require": ["exp", "iat", "sub", "sid", "typ"]}
        )
    except jwt.ExpiredSignatureError:
        raise Unauthorized("token expired") from None
    except jwt.InvalidTokenError:
        raise Unauthorized("invalid token") from None
    if claims["typ"] != kind:
        raise Unauthorized(f"expected an {kind} token")
    return claims
