"""The app factory: the gateway's whole configuration, its clients, its blueprints.

Importing this module imports Flask and nothing of the gateway: the views are
imported inside ``create_app``. ``gateway.cli`` relies on that; see the note
there on PROMETHEUS_MULTIPROC_DIR.
"""

from __future__ import annotations

import logging
import os
import threading
from datetime import timedelta
from pathlib import Path

from flask import Config, Flask, current_app, request, send_from_directory

log = logging.getLogger(__name__)

# Every setting and its default, in one place. Each can be set by FLEETWATCH_<NAME>
# in the environment (JSON-parsed: 5, 2.5, true; text otherwise), or by ``test_config``.
DEFAULTS = {
    "STATE_DIR": "state",  # the gateway's files: DB, rule files, file_sd targets, exports
    "METRICS_DIR": "",  # the workers' request metrics; empty: <STATE_DIR>/gateway-metrics (one per replica)
    "SQLALCHEMY_DATABASE_URI": "",  # empty: $DATABASE_URL, else sqlite:///<STATE_DIR>/gateway.db
    # Serving (fleetwatch-gateway serve; its flags win over these).
    "BIND": "127.0.0.1:8080",
    "WORKERS": 2,
    "THREADS": 8,
    "CERTFILE": "",  # serve HTTPS with this certificate and KEYFILE
    "KEYFILE": "",
    # Proxies in front that append the client's address to X-Forwarded-For (HAProxy: 1). Trusted for
    # that many hops (X-Forwarded-For, -Proto, -Host: gateway/http_security.py), so only set it where
    # clients cannot reach the gateway but through them.
    "PROXY_HOPS": 0,
    # Prometheus and the tiers of history (rules_compiler/downsampling.py).
    "PROMETHEUS_URL": "http://127.0.0.1:9090",
    "LONGTERM_URL": "",  # the downsampled tier; empty: the raw tier answers every range; `fleetwatch up` sets it
    "SCRAPE_INTERVAL": "5s",  # the raw tier's step
    "RAW_RETENTION": "7d",
    "LONGTERM_RETENTION": "90d",
    "PROMETHEUS_TIMEOUT_S": 10.0,
    # A Prometheus whose exporters carry no host_id label (one set up without fleetwatch): "instance" or
    # "nodename", as its rule files derive it (`fleetwatch rules --host-id-from`, docs/hosts.md); empty: ours.
    "HOST_ID_FROM": "",
    "QUERY_CACHE_TTL_S": 2.0,
    # Users, tokens, limits.
    "ACCESS_TOKEN_TTL": timedelta(minutes=15),  # from the environment: seconds
    "REFRESH_TOKEN_TTL": timedelta(days=7),  # from the environment: seconds
    "BCRYPT_ROUNDS": 12,
    "API_KEY_CACHE_S": 5.0,  # how long a worker trusts an API key it checked (revocation delay)
    # How long a worker trusts a login session it checked: a logout, a disabled or demoted user through
    # another worker or replica is honoured within it (through the same worker: at once). 0: every request.
    "SESSION_CACHE_S": 5.0,
    "KNOWN_HOST_CACHE_S": 5.0,  # how long a worker trusts that a host id is in the inventory (metric queries)
    "API_KEY_MAX_HOSTS": 10_000,  # hosts one API key may push for, unless the key sets max_hosts
    "API_KEY_MAX_SERIES": 1_000_000,  # series one API key may create, unless the key sets max_series
    "API_KEY_ADMITTED_S": 30.0,  # how long a worker trusts what the DB admitted for a key (revocation, budgets)
    "PROCESS_MASKING_CACHE_S": 5.0,  # how long a worker uses the masking policy it read (PRIV-002)
    "RATE_LIMIT_READS_PER_MIN": 60,
    "RATE_LIMIT_WRITES_PER_MIN": 30,
    # A worker takes this share of a limit from the shared counter in one write (at least 1 request: limits
    # under 100 are counted exactly); up to (workers - 1) × that many may be refused early, never more let in.
    "RATE_LIMIT_BATCH_FRACTION": 0.01,
    "LOGIN_ATTEMPTS_PER_MIN": 20,
    # Security (docs/security.md): login backoff per account, the scrape token (proxies: PROXY_HOPS).
    "LOGIN_FAILURES_BEFORE_BACKOFF": 5,  # then 1 s, 2 s, 4 s… between tries, up to LOGIN_BACKOFF_MAX_S
    "LOGIN_BACKOFF_MAX_S": 900,
    "METRICS_TOKEN": "",  # or METRICS_TOKEN_FILE; neither: /metrics answers loopback callers only
    "METRICS_TOKEN_FILE": "",
    "JWT_SECRET": "",  # or JWT_SECRET_FILE; neither: a key made once and kept in the DB
    "JWT_SECRET_FILE": "",
    "AUDIT_RETENTION_DAYS": 90,  # AUDIT-002; older entries go with the next audited action
    "MAX_CONTENT_LENGTH": 1024 * 1024,
    "ADMIN_EMAIL": None,  # the first admin, made on a start that finds none
    "ADMIN_PASSWORD": None,
    # Hosts that Prometheus scrapes.
    "EXPORTER_PORT": 9101,
    # The machine `fleetwatch up` runs on, as JSON {"id", "hostname", "ips", "has_gpu", "exporter"}; the
    # stack sets it from what its exporter found, and the gateway adds that host on its first start.
    "LOCAL_HOST": None,
    "TARGETS_WRITE_GAP_S": 0.5,  # file_sd/hosts.json: written at most once per gap, per worker (0: every change)
    "HOSTS_IMPORT_MAX_BYTES": 16 * 1024 * 1024,  # a CSV import's body (MAX_CONTENT_LENGTH is for JSON)
    # Push ingest (gateway/ingest.py).
    "REMOTE_WRITE_URL": "",  # empty: PROMETHEUS_URL's /api/v1/write
    "INGEST_MAX_BODY_BYTES": 4 * 1024 * 1024,
    "INGEST_MAX_POINTS": 20_000,  # per request
    "INGEST_MAX_INFLIGHT_POINTS": 100_000,  # per worker process; beyond it: 503 (backpressure)
    "INGEST_SERIES_PER_HOST": 5_000,  # label budget: distinct series one host may create
    "INGEST_WRITE_BATCH": 5_000,  # samples per remote-write request
    "INGEST_WRITE_TIMEOUT_S": 5.0,
    "INGEST_MAX_SPLIT_WRITES": 32,  # remote writes a request may spend finding the points Prometheus refuses
    "INGEST_PAST_S": 3600,  # ts window [now - past, now + future] (§11.2)
    "INGEST_FUTURE_S": 300,
    "HEARTBEAT_EVERY_S": 15,  # how often a worker writes its pushing hosts' last_seen_at, all in one go
    "PUSHER_RECHECK_S": 60,  # how long a worker trusts that a host id is a pushing host's
    # Alerting: where Alertmanager is, and where it reaches this gateway's webhook.
    "ALERTMANAGER_URL": "http://127.0.0.1:9093",
    "ALERTMANAGER_LOG": "",  # its log, read for each channel's last failure; empty: <STATE_DIR>/logs/alertmanager.log
    "GATEWAY_URL": "http://127.0.0.1:8080",
    "GATEWAY_CA_FILE": "",  # what Alertmanager trusts for GATEWAY_URL; `serve --certfile` sets its certificate
    "PROMTOOL": "promtool",
    # Another backend (docs/backends.md): who evaluates the alert rules, where its rules API answers, what
    # a deploy reloads (comma-separated base URLs; /-/reload is appended). Empty: PROMETHEUS_URL's.
    "RULES_DIALECT": "prometheus",  # "vmalert": files without keep_firing_for, checked by `vmalert -dryRun`
    "VMALERT": "vmalert",
    "RULES_URL": "",
    "RELOAD_URLS": "",
    "AMTOOL": "amtool",
    "ALERT_EVALUATION_INTERVAL_S": 30,
    "ALERT_GROUP_WAIT": "5s",
    "ALERT_GROUP_INTERVAL": "5m",
    "ALERT_REPEAT_INTERVAL": "4h",
    "ALERT_EVENTS_GROUP_INTERVAL": "10s",
    "ALERT_ACK_SILENCE_S": 86400,
    "ALERT_DEFAULT_CHANNELS": "",  # comma-separated channels of the starter rules
    # Silences (gateway/alert_silences.py): how far ahead a recurring window's occurrences become
    # Alertmanager silences, and how often each worker re-makes what Alertmanager lost (0: never).
    "ALERT_SILENCE_AHEAD_S": 86400,
    "ALERT_SILENCE_RECONCILE_S": 60,
    # Notifications: messages a minute per channel from rules grouped per rule (0: no limit), and the
    # links they carry: the gateway as people reach it (empty: GATEWAY_URL) and Grafana.
    "ALERT_CHANNEL_MAX_PER_MIN": 30,
    "PUBLIC_URL": "",
    "GRAFANA_URL": "http://127.0.0.1:3000",
    # Webhook/Slack receivers on internal addresses allowed anyway: comma-separated names, IPs, CIDRs.
    "CHANNEL_ALLOW_HOSTS": "",
    "SMTP_SMARTHOST": "",
    "SMTP_FROM": "fleetwatch@localhost",
    "SMTP_AUTH_USERNAME": "",
    "SMTP_AUTH_PASSWORD": "",
    "SMTP_REQUIRE_TLS": True,
    # HPC jobs (gateway/jobs.py): how often Slurm's are synced from Prometheus, how far back, how many on /metrics.
    "JOBS_SYNC_S": 15.0,
    "JOBS_SYNC_LOOKBACK_S": 86400,
    "JOBS_METRICS_MAX": 1000,
    # Live updates (gateway/stream.py, docs/live-updates.md).
    "STREAM_MAX_PER_WORKER": 250,  # open streams one worker holds (each a thread beyond THREADS); then 503
    "STREAM_POLL_S": 1.0,  # how often a worker reads new events from the log for its streams
    "STREAM_STATUS_POLL_S": 5.0,  # how often the lease holder compares host statuses
    "STREAM_HEARTBEAT_S": 15.0,
    "STREAM_EVENTS_KEEP_S": 86400,  # purge older events; a Last-Event-ID older than that gets `reset`
    "STREAM_EVENTS_KEEP_ROWS": 100_000,
    # Scheduled reports (docs/reports.md): one thread per worker, the DB decides who runs.
    "REPORT_SCHEDULER": True,  # false: this gateway makes no reports (another replica does)
    "REPORT_SCHEDULER_TICK_S": 30,  # how often each worker looks for due reports (at most 60)
    "REPORT_LEASE_S": 180,  # a worker that holds a run longer than this is taken for dead
    "REPORT_MAX_ATTEMPTS": 3,
    "REPORT_ATTACH_MAX_BYTES": 10 * 1024 * 1024,  # larger reports are emailed as links
    "REPORT_LINK_TTL_S": 7 * 86400,  # how long an emailed link works
    "REPORT_KEEP_S": 90 * 86400,  # report files kept this long after their period
    "REPORT_CLOCK_OFFSET_S": 0,  # tests only: shifts the schedules' clock
    # Logs and the API's documentation.
    "LOG_LEVEL": "INFO",
    "LOG_JSON": True,
    "API_TITLE": "fleetwatch",
    "API_VERSION": "v1",
    "OPENAPI_VERSION": "3.0.3",
    "OPENAPI_URL_PREFIX": "/api",
    "OPENAPI_JSON_PATH": "openapi.json",
    "OPENAPI_SWAGGER_UI_PATH": "/docs",
    # Served from the swagger-ui-bundle package, not a CDN: air-gapped clusters get docs too.
    "OPENAPI_SWAGGER_UI_URL": "/api/docs/assets/",
}


def read_config(test_config: dict | None = None) -> Config:
    """DEFAULTS, then FLEETWATCH_* environment variables, then ``test_config``; values derived from others filled in."""
    config = Config(os.getcwd(), DEFAULTS)
    config.from_prefixed_env("FLEETWATCH")
    if test_config:
        config.from_mapping(test_config)
    for key in ("ACCESS_TOKEN_TTL", "REFRESH_TOKEN_TTL"):
        if not isinstance(config[key], timedelta):  # from the environment: seconds
            config[key] = timedelta(seconds=float(config[key]))
    state_dir = Path(config["STATE_DIR"]).resolve()
    config["STATE_DIR"] = str(state_dir)
    if not config["SQLALCHEMY_DATABASE_URI"]:
        config["SQLALCHEMY_DATABASE_URI"] = os.environ.get("DATABASE_URL") or f"sqlite:///{state_dir / 'gateway.db'}"
    if not config["REMOTE_WRITE_URL"]:
        config["REMOTE_WRITE_URL"] = config["PROMETHEUS_URL"].rstrip("/") + "/api/v1/write"
    return config


def create_app(test_config: dict | None = None) -> Flask:
    """Build the app: configuration (``read_config``), clients on ``app.extensions``, blueprints, the schema."""
    # Imported here, not at the top: importing gateway.observability imports prometheus_client,
    # which must come after gateway.cli has set PROMETHEUS_MULTIPROC_DIR (see gateway/cli.py).
    from gateway import (
        agents,
        alert_deliveries,
        alert_events,
        alert_rules,
        alert_silences,
        auth,
        cluster,
        compat_alerts,
        compat_metrics,
        host_import,
        hosts,
        http_security,
        ingest,
        jobs,
        locks,
        metrics,
        observability,
        process_masking,
        processes,
        report_schedules,
        reports,
        sessions,
        stream,
        users,
    )
    from gateway.alert_channels import WEBHOOK_SECRET
    from gateway.alertmanager import Alertmanager
    from gateway.budget_rows import AdmittedSeries
    from gateway.db import HostSeries, HostSeriesCount, db, make_state_private, secret
    from gateway.errors import Api
    from gateway.inventory import TargetsWriter, register_local_host
    from gateway.key_scope import KeyBudgets
    from gateway.last_seen import LastSeen
    from gateway.point_store import PointStore
    from gateway.promql import Prometheus
    from gateway.ratelimit import ReservedRequests, counters_for
    from gateway.scheduler import init_app as init_report_scheduler
    from gateway.schema_migrations import migrate
    from gateway.series import Tiers
    from gateway.status_watch import StatusWatch
    from rules_compiler.deploy import AlertDeployer

    app = Flask(__name__)
    app.config.update(read_config(test_config))
    config = app.config
    if config["LOG_JSON"]:
        observability.setup_logging(config["LOG_LEVEL"])
    state_dir = Path(config["STATE_DIR"])
    make_state_private(state_dir, config["SQLALCHEMY_DATABASE_URI"])

    db.init_app(app)
    sqlite = config["SQLALCHEMY_DATABASE_URI"].startswith("sqlite:")
    prometheus = Prometheus(config["PROMETHEUS_URL"], config["PROMETHEUS_TIMEOUT_S"], config["QUERY_CACHE_TTL_S"])
    longterm = config["LONGTERM_URL"]
    app.extensions.update(
        prometheus=prometheus,
        tiers=Tiers.from_config(
            config,
            prometheus,
            Prometheus(longterm, config["PROMETHEUS_TIMEOUT_S"], config["QUERY_CACHE_TTL_S"]) if longterm else None,
        ),
        rate_counters=counters_for(app),
        rate_reserved=ReservedRequests(),
        alertmanager=Alertmanager(config["ALERTMANAGER_URL"]),
        alert_deployer=AlertDeployer(
            rules_path=state_dir / "rules" / "fleet-alerts.yml",
            alertmanager_path=state_dir / "alertmanager" / "alertmanager.yml",
            prometheus_url=config["PROMETHEUS_URL"],
            alertmanager_url=config["ALERTMANAGER_URL"],
            promtool=config["PROMTOOL"],
            amtool=config["AMTOOL"],
            # Replicas share the DB, not a lock file: they take turns on an advisory lock.
            lock=None if sqlite else lambda: locks.held(db.engine, locks.DEPLOY),
            dialect=config["RULES_DIALECT"],
            vmalert=config["VMALERT"],
            rules_url=config["RULES_URL"],
            reload_urls=tuple(u.strip() for u in str(config["RELOAD_URLS"]).split(",") if u.strip()),
        ),
        # Per worker process: pushed points in flight, pushing hosts' last-seen notes, label budgets.
        point_store=PointStore(config),
        last_seen=LastSeen(),
        # What the DB admitted into hosts' label budgets (~60 bytes a series; past 1,000,000 it starts over).
        host_series=AdmittedSeries(HostSeries, HostSeriesCount.__table__.c.series_used, 1_000_000),
        targets_writer=TargetsWriter(app),
        # Per worker: its streams' reader of the event log, its bound on streams, the status watcher
        # (started in each gunicorn worker: gateway/cli.py).
        stream_slots=threading.BoundedSemaphore(config["STREAM_MAX_PER_WORKER"]),
        key_budgets=KeyBudgets(),
    )
    app.extensions.update(stream_tail=stream.Tail(app), status_watch=StatusWatch(app))
    request_metrics = observability.RequestMetrics(app)
    app.extensions["request_metrics"] = request_metrics

    api = Api(app)
    for module in (
        observability,
        sessions,
        users,
        hosts,
        host_import,
        metrics,
        processes,
        reports,
        report_schedules,
        alert_rules,
        alert_events,
        alert_silences,
        alert_deliveries,
        ingest,
        agents,
        stream,
        compat_metrics,
        compat_alerts,
        cluster,
        jobs,
        process_masking,
    ):
        api.register_blueprint(module.blp)
    init_report_scheduler(app)  # its thread starts in each worker: gateway/cli.py
    _serve_swagger_assets(app)

    http_security.init_app(app)
    app.before_request(auth.authorize)
    app.before_request(_require_json_body)

    with app.app_context():
        with locks.held(db.engine, locks.STARTUP):  # replicas started together migrate in turn
            migrate(db.engine)
            _bootstrap_admin(app)
            if config["LOCAL_HOST"]:
                register_local_host(config["LOCAL_HOST"])
        request_metrics.watch_db(db.engine)
        app.extensions["targets_writer"].write()  # what the DB holds, whatever a stopped worker left unwritten
        # Made now: made inside a rule write, secret() would commit that write's session early.
        secret(WEBHOOK_SECRET)

    return app


def _require_json_body() -> None:
    from gateway.errors import ApiError

    if request.method in ("POST", "PUT", "PATCH") and request.content_length and not request.is_json:
        view = current_app.view_functions.get(request.endpoint)
        method = getattr(getattr(view, "view_class", None), request.method.lower(), view)
        types = getattr(method, "body_types", ("application/json",))  # gateway.schemas.accepts
        if request.mimetype in types:
            return
        raise ApiError(
            f"send the body with Content-Type: {' or '.join(types)}",
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


def _bootstrap_admin(app: Flask) -> None:
    """The first admin comes from FLEETWATCH_ADMIN_EMAIL/PASSWORD on a start that finds none."""
    from gateway.db import User, db
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
