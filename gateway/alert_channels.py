"""Where alert notifications go: a rule's channels, checked against and mapped onto the configured delivery.

A channel (``email:ops@example.com``, ``slack:https://…#ops``, …) becomes an
Alertmanager receiver; ``delivery()`` is everything those receivers need from
the gateway's configuration (SMTP, grouping, and the gateway's own webhook
that records events).
"""

from __future__ import annotations

from flask import current_app

from gateway.db import secret
from rules_compiler.alertmanager import Delivery, undeliverable
from rules_compiler.alerts import parse_channel
from rules_compiler.notify_templates import render_templates

WEBHOOK_PATH = "/api/v1/alerts/webhook"  # where Alertmanager posts events; gateway/alert_events.py serves it
WEBHOOK_SECRET = "alertmanager-webhook"  # the bearer token Alertmanager proves itself with


def delivery(templates_file: str = "") -> Delivery:
    """How this gateway's configuration delivers notifications, for the Alertmanager config."""
    c = current_app.config
    return Delivery(
        events_url=c["GATEWAY_URL"].rstrip("/") + WEBHOOK_PATH,
        events_token=secret(WEBHOOK_SECRET),
        events_ca_file=c["GATEWAY_CA_FILE"] or "",
        smtp_smarthost=c["SMTP_SMARTHOST"] or "",
        smtp_from=c["SMTP_FROM"],
        smtp_auth_username=c["SMTP_AUTH_USERNAME"] or "",
        smtp_auth_password=c["SMTP_AUTH_PASSWORD"] or "",
        smtp_require_tls=_flag(c["SMTP_REQUIRE_TLS"]),
        group_wait=c["ALERT_GROUP_WAIT"],
        group_interval=c["ALERT_GROUP_INTERVAL"],
        repeat_interval=c["ALERT_REPEAT_INTERVAL"],
        events_group_interval=c["ALERT_EVENTS_GROUP_INTERVAL"],
        templates_file=templates_file,
        channel_max_per_min=int(c["ALERT_CHANNEL_MAX_PER_MIN"]),
        evaluation_interval_s=int(c["ALERT_EVALUATION_INTERVAL_S"]),
    )


def notification_templates() -> str:
    """The notification templates with this gateway's links (FLEETWATCH_PUBLIC_URL, FLEETWATCH_GRAFANA_URL)."""
    c = current_app.config
    return render_templates(c["PUBLIC_URL"] or c["GATEWAY_URL"], c["GRAFANA_URL"])


def normalise_channels(texts: list[str]) -> list[str]:
    """A rule's channels as they will be stored.

    Raises:
        RuleInvalid: a malformed channel.
    """
    return [str(parse_channel(text)) for text in texts]


def channel_warnings(texts: list[str]) -> list[str]:
    """Why some of these (stored) channels deliver nothing with this configuration, e.g. email without SMTP."""
    return undeliverable(tuple(parse_channel(text) for text in texts or ()), delivery())


def default_channels() -> list[str]:
    """The channels of the starter rules: ALERT_DEFAULT_CHANNELS, comma-separated."""
    return [c.strip() for c in current_app.config["ALERT_DEFAULT_CHANNELS"].split(",") if c.strip()]


def _flag(value) -> bool:
    # From the environment a flag is text ("false"); from test_config, a bool.
    return value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes", "on")
