"""HTTP hardening: which reverse proxies are trusted.

Behind a reverse proxy the client's address is in X-Forwarded-For, which anyone
can write: it is believed only from FLEETWATCH_TRUSTED_PROXIES hops (werkzeug's
ProxyFix), never by default, so a forged header cannot dodge the login limits.
"""

from __future__ import annotations

from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix


def init_app(app: Flask) -> None:
    """Trust the configured proxies."""
    hops = int(app.config["TRUSTED_PROXIES"])
    if hops > 0:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops)
