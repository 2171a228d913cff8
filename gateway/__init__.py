"""The fleetwatch gateway: the REST API of the product spec, over Prometheus, with its own state in a DB."""

from __future__ import annotations

import logging
import os
from datetime import timedelta
from pathlib import Path

from flask import Flask, request, send_from_directory

log = logging.getLogger(__name__)


def create_app(test_config: dict | None = None) -> Flask:
    """Build the app: defaults, then FLEETWATCH_* environment variables, then ``test_config``."""
    from gateway import agents, alerts, auth, hosts, ingest, metrics, observability, processes, reports, users
    from gateway.db import User, db, secret
    from gateway.errors import Api
    from gateway.promql import Prometheus
    from gateway.ratelimit import counters_for
    from gateway.report_schedules import blp as report_schedules_blp
    from gateway.scheduler import init_app as init_report_scheduler
    from gateway.schema_migrations import migrate
    from gateway.series import Tiers
    from rules_compiler.deploy import AlertDeployer

    app = Flask(__name__)
    state_dir = Path(os.environ.get("FLEETWATCH_STATE_DIR", "state")).resolve()
    app.config.from_mapping(
        STATE_DIR=str(state_dir),
        SQLALCHEMY_DATABASE_URI=os.environ.get("DATABASE_URL") or f"sqlite:///{state_dir / 'gateway.db'}",
        PROMETHEUS_URL="http://127.0.0.1:9090",
        # The downsampled tier (rules_compiler/downsampling.py); empty: the raw tier answers every range.
        LONGTERM_URL="",  # empty: the raw tier answers every range; `fleetwatch up` sets it
        SCRAPE_INTERVAL="5s",  # the raw tier's step
        RAW_RETENTION="7d",
        LONGTERM_RETENTION="90d",
        PROMETHEUS_TIMEOUT_S=10.0,
        QUERY_CACHE_TTL_S=2.0,
        ACCESS_TOKEN_TTL=timedelta(minutes=15),
        REFRESH_TOKEN_TTL=timedelta(days=7),
        BCRYPT_ROUNDS=12,
        API_KEY_CACHE_S=5.0,  # how long a worker trusts an API key it checked (revocation delay)
        RATE_LIMIT_READS_PER_MIN=60,
        RATE_LIMIT_WRITES_PER_MIN=30,
        LOGIN_ATTEMPTS_PER_MIN=20,
        MAX_CONTENT_LENGTH=1024 * 1024,
        EXPORTER_PORT=9101,
        # Alerting: where Alertmanager is, and where it reaches this gateway's webhook.
        ALERTMANAGER_URL="http://127.0.0.1:9093",
        GATEWAY_URL="http://127.0.0.1:8080",
        GATEWAY_CA_FILE="",  # what Alertmanager trusts for GATEWAY_URL; `serve --certfile` sets its certificate
        PROMTOOL="promtool",
        AMTOOL="amtool",
        ALERT_EVALUATION_INTERVAL_S=30,
        ALERT_GROUP_WAIT="5s",
        ALERT_GROUP_INTERVAL="5m",
        ALERT_REPEAT_INTERVAL="4h",
        ALERT_EVENTS_GROUP_INTERVAL="10s",
        ALERT_ACK_SILENCE_S=86400,
        ALERT_DEFAULT_CHANNELS="",
        SMTP_SMARTHOST="",
        SMTP_FROM="fleetwatch@localhost",
        SMTP_AUTH_USERNAME="",
        SMTP_AUTH_PASSWORD="",
        SMTP_REQUIRE_TLS=True,
        # Scheduled reports (docs/reports.md): one thread per worker, the DB decides who runs.
        REPORT_SCHEDULER=True,  # false: this gateway makes no reports (another replica does)
        REPORT_SCHEDULER_TICK_S=30,  # how often each worker looks for due reports (at most 60)
        REPORT_LEASE_S=180,  # a worker that holds a run longer than this is taken for dead
        REPORT_MAX_ATTEMPTS=3,
        REPORT_ATTACH_MAX_BYTES=10 * 1024 * 1024,  # larger reports are emailed as links
        REPORT_LINK_TTL_S=7 * 86400,  # how long an emailed link works
        REPORT_KEEP_S=90 * 86400,  # report files kept this long after their period
        REPORT_CLOCK_OFFSET_S=0,  # tests only: shifts the schedules' clock
        ADMIN_EMAIL=None,
        ADMIN_PASSWORD=None,
        LOG_LEVEL="INFO",
        LOG_JSON=True,
        API_TITLE="fleetwatch",
        API_VERSION="v1",
        OPENAPI_VERSION="3.0.3",
        OPENAPI_URL_PREFIX="/api",
        OPENAPI_JSON_PATH="openapi.json",
        OPENAPI_SWAGGER_UI_PATH="/docs",
        # Served from the swagger-ui-bundle package, not a CDN: air-gapped clusters get docs too.
        OPENAPI_SWAGGER_UI_URL="/api/docs/assets/",
    )
    app.config.from_prefixed_env("FLEETWATCH")
    if test_config:
        app.config.from_mapping(test_config)
    for key in ("ACCESS_TOKEN_TTL", "REFRESH_TOKEN_TTL"):
        if not isinstance(app.config[key], timedelta):  # from the environment: seconds
            app.config[key] = timedelta(seconds=float(app.config[key]))
    if app.config["LOG_JSON"]:
        observability.setup_logging(app.config["LOG_LEVEL"])
    Path(app.config["STATE_DIR"]).mkdir(parents=True, exist_ok=True)

    db.init_app(app)
    app.extensions["prometheus"] = Prometheus(
        app.config["PROMETHEUS_URL"], app.config["PROMETHEUS_TIMEOUT_S"], app.config["QUERY_CACHE_TTL_S"]
    )
    app.extensions["rate_counters"] = counters_for(app)
    app.extensions["alertmanager"] = alerts.Alertmanager(app.config["ALERTMANAGER_URL"])
    app.extensions["alert_deployer"] = AlertDeployer(
        rules_path=Path(app.config["STATE_DIR"]) / "rules" / "fleet-alerts.yml",
        alertmanager_path=Path(app.config["STATE_DIR"]) / "alertmanager" / "alertmanager.yml",
        prometheus_url=app.config["PROMETHEUS_URL"],
        alertmanager_url=app.config["ALERTMANAGER_URL"],
        promtool=app.config["PROMTOOL"],
        amtool=app.config["AMTOOL"],
    )
    longterm = app.config["LONGTERM_URL"]
    app.extensions["tiers"] = Tiers.from_config(
        app.config,
        app.extensions["prometheus"],
        Prometheus(longterm, app.config["PROMETHEUS_TIMEOUT_S"], app.config["QUERY_CACHE_TTL_S"]) if longterm else None,
    )
    request_metrics = observability.RequestMetrics(app)
    app.extensions["request_metrics"] = request_metrics

    api = Api(app)
    for module in (observability, auth, users, hosts, metrics, processes, reports, alerts, ingest, agents):
        api.register_blueprint(module.blp)
    api.register_blueprint(report_schedules_blp)
    init_report_scheduler(app)  # its thread starts in each worker: gateway/cli.py
    _serve_swagger_assets(app)

    app.before_request(auth.authorize)
    app.before_request(_require_json_body)

    with app.app_context():
        migrate(db.engine)
        request_metrics.watch_db(db.engine)
        _bootstrap_admin(app, db, User)
        # Made now: made inside a rule write, secret() would commit that write's session early.
        secret("alertmanager-webhook")

    return app


def _require_json_body() -> None:
    from gateway.errors import ApiError

    if request.method in ("POST", "PUT", "PATCH") and request.content_length and not request.is_json:
        raise ApiError(
            "send the body as JSON (Content-Type: application/json)",
            {"content_type": request.content_type or ""},
            status=415,
        )


def _serve_swagger_assets(app: Flask) -> None:
    import swagger_ui_bundle

    from gateway.auth import PUBLIC

    def assets(filename: str):
        return send_from_directory(swagger_ui_bundle.swagger_ui_path, filename)

    assets.access_policy = PUBLIC
    app.add_url_rule("/api/docs/assets/<path:filename>", "swagger_assets", assets)


def _bootstrap_admin(app: Flask, db, User) -> None:
    """The first admin comes from FLEETWATCH_ADMIN_EMAIL/PASSWORD on a start that finds none."""
    from gateway.users import create_user

    if db.session.execute(db.select(User.pk).filter_by(role="admin")).first():
        return
    email, password = app.config["ADMIN_EMAIL"], app.config["ADMIN_PASSWORD"]
    if not email or not password:
        log.warning(
            "no admin exists: set FLEETWATCH_ADMIN_EMAIL and FLEETWATCH_ADMIN_PASSWORD, "
            "or run `fleetwatch-gateway create-user --role admin EMAIL`"
        )
        return
    create_user(email, password, "admin")
    db.session.commit()
    log.info("created the first admin", extra={"email": email})
