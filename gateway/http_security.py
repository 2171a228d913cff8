"""HTTP hardening on every answer: trusted proxies, HSTS, nosniff, no-store, and a CSP for the API docs.

Behind a reverse proxy the client's address is in X-Forwarded-For, which anyone
can write: it is believed only from FLEETWATCH_PROXY_HOPS hops (werkzeug's
ProxyFix), never by default, so a forged header cannot dodge the login limits.
"""

from __future__ import annotations

import base64
import hashlib
import re

from flask import Flask, Response, request
from werkzeug.middleware.proxy_fix import ProxyFix

HSTS = "max-age=31536000"  # TLS-002, as the spec writes it
INLINE_SCRIPT = re.compile(rb"<script>(.*?)</script>", re.DOTALL)


def init_app(app: Flask) -> None:
    """Trust the configured proxies and add the security headers to every answer."""
    hops = int(app.config["PROXY_HOPS"])
    if hops > 0:
        # remote_addr is then the client's, not the proxy's: login limits per client, the audit log true;
        # and a TLS proxy's X-Forwarded-Proto makes the answer HTTPS, so it carries HSTS.
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops)
    app.after_request(_headers)


def _headers(response: Response) -> Response:
    headers = response.headers
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("X-Frame-Options", "DENY")
    headers.setdefault("Referrer-Policy", "no-referrer")  # export links carry their signature
    if request.is_secure:  # TLS here, or at a trusted proxy (X-Forwarded-Proto)
        headers.setdefault("Strict-Transport-Security", HSTS)
    if request.path.startswith("/api/v1/"):
        # Tokens, users, audit, exports: nothing a shared cache or the browser's disk should keep.
        headers.setdefault("Cache-Control", "no-store")
    if request.path.rstrip("/") == "/api/docs" and response.mimetype == "text/html":
        headers["Content-Security-Policy"] = _docs_policy(response.get_data())
    return response


def _docs_policy(page: bytes) -> str:
    """Swagger UI's page: its scripts and styles from here only, its one inline script by its hash."""
    hashes = " ".join(
        f"'sha256-{base64.b64encode(hashlib.sha256(body).digest()).decode()}'" for body in INLINE_SCRIPT.findall(page)
    )
    return (
        f"default-src 'none'; script-src 'self' {hashes}; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; connect-src 'self'; font-src 'self'; "
        "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    )
