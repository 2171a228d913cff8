"""The gateway's own state: SQLite by default, PostgreSQL by DATABASE_URL; no time series live here."""

from __future__ import annotations

import os
import secrets
from datetime import UTC, datetime
from pathlib import Path

from flask import current_app
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Integer,
    LargeBinary,
    String,
    UniqueConstraint,
    event,
    false,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


db = SQLAlchemy(model_class=Base)


def utcnow() -> datetime:
    return datetime.now(UTC)


class Stamped:
    """Integer key for the database, ``<prefix>-NNN`` for the API (the spec's ids look so)."""

    # Without AUTOINCREMENT SQLite hands a deleted row's key to the next insert,
    # and a new rule would inherit the old one's id, events and audit trail.
    __table_args__ = {"sqlite_autoincrement": True}
    pk: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str | None] = mapped_column(String(64), unique=True, index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class User(Stamped, db.Model):
    __tablename__ = "users"
    prefix = "user"
    email: Mapped[str] = mapped_column(String(254), unique=True)
    password_hash: Mapped[str] = mapped_column(String(100))
    role: Mapped[str] = mapped_column(String(16))  # "viewer" | "admin"
    status: Mapped[str] = mapped_column(String(16), default="active")  # "active" | "disabled"


class LoginSession(db.Model):
    """One login: its access and refresh tokens carry the id; logout revokes both at once.

    Each refresh hands out a new refresh token and only the newest is honoured
    (``refresh_id``): an older one coming back means a copy is in other hands,
    and the session ends.
    """

    __tablename__ = "login_sessions"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=lambda: secrets.token_hex(16))
    user_pk: Mapped[int] = mapped_column(Integer, index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    refresh_id: Mapped[str | None] = mapped_column(String(32))


class ApiKey(Stamped, db.Model):
    __tablename__ = "api_keys"
    prefix = "key"
    name: Mapped[str] = mapped_column(String(100))
    # The key is 32 random bytes: a SHA-256 of it cannot be brute-forced and,
    # unlike bcrypt, costs microseconds on every agent request.
    key_hash: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    key_prefix: Mapped[str] = mapped_column(String(12))
    created_by: Mapped[str | None] = mapped_column(String(64))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The host ids it speaks for (gateway/key_scope.py): one id, a pattern with * (gpu-*), or * for every host.
    host_pattern: Mapped[str] = mapped_column(String(64))
    allow_discovery: Mapped[bool] = mapped_column(Boolean, default=False)  # may add hosts not in the inventory
    max_hosts: Mapped[int | None] = mapped_column(Integer)  # None: API_KEY_MAX_HOSTS
    max_series: Mapped[int | None] = mapped_column(Integer)  # None: API_KEY_MAX_SERIES
    # How many api_key_hosts and api_key_series rows it has: its budgets' use, without a count(*) of them.
    hosts_used: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    series_used: Mapped[int] = mapped_column(Integer, default=0, server_default="0")

    @property
    def host_id(self) -> str | None:
        """The one host a key is bound to; None for a pattern."""
        return None if "*" in self.host_pattern else self.host_pattern


class KeyHost(db.Model):
    """A host an API key has pushed or beaten for: its host budget, shared by every worker."""

    __tablename__ = "api_key_hosts"
    key_pk: Mapped[int] = mapped_column(Integer, primary_key=True)
    host_id: Mapped[str] = mapped_column(String(64), primary_key=True)


class KeySeries(db.Model):
    """A series an API key has created (a digest of its labels): its series budget, shared by every worker."""

    __tablename__ = "api_key_series"
    key_pk: Mapped[int] = mapped_column(Integer, primary_key=True)
    series: Mapped[str] = mapped_column(String(32), primary_key=True)


class HostSeries(db.Model):
    """A series a host has created, through any key (a digest of its labels): its label budget, for every worker."""

    __tablename__ = "host_series"
    host_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    series: Mapped[str] = mapped_column(String(32), primary_key=True)


class HostSeriesCount(db.Model):
    """How many host_series rows a host has: its label budget's use, without a count(*) of them."""

    __tablename__ = "host_series_counts"
    host_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    series_used: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class Host(Stamped, db.Model):
    __tablename__ = "hosts"
    prefix = "host"
    hostname: Mapped[str] = mapped_column(String(253), index=True)
    ips: Mapped[list] = mapped_column(JSON, default=list)
    tags: Mapped[dict] = mapped_column(JSON, default=dict)
    has_gpu: Mapped[bool] = mapped_column(Boolean, default=False)
    agent_version: Mapped[str | None] = mapped_column(String(64))
    exporter: Mapped[str | None] = mapped_column(String(300))  # HOST:PORT Prometheus scrapes
    # Its agent pushes its points (gateway/ingest.py): Prometheus does not scrape it, and its
    # last_seen_at is what says it is alive.
    pushes: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # How it came into the inventory: "api", "push" (its agent's first push), "import" (CSV), "local"
    # (the machine `fleetwatch up` runs on); the host list adds "discovered" ones from Prometheus.
    source: Mapped[str] = mapped_column(String(16), default="api", server_default="api")
    last_seen_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class AuditEvent(db.Model):
    __tablename__ = "audit_log"
    pk: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    user_id: Mapped[str | None] = mapped_column(String(64), index=True)
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str | None] = mapped_column(String(300))
    ip: Mapped[str | None] = mapped_column(String(64))
    details: Mapped[dict] = mapped_column(JSON, default=dict)


class RateCounter(db.Model):
    """Requests in the current window per user and kind; in the DB so every worker shares it."""

    __tablename__ = "rate_counters"
    key: Mapped[str] = mapped_column(String(128), primary_key=True)
    window_start: Mapped[float] = mapped_column(db.Float)
    count: Mapped[int] = mapped_column(Integer)


class Secret(db.Model):
    """Keys that sign tokens and download links: made once, kept, so a restart logs nobody out."""

    __tablename__ = "secrets"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(128))


class Setting(db.Model):
    """What admins set through the API as one JSON document per name, e.g. "agent": what agents are told."""

    __tablename__ = "settings"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[dict] = mapped_column(JSON, default=dict)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)
    updated_by: Mapped[str | None] = mapped_column(String(64))


class AlertRuleRow(Stamped, db.Model):
    """An alert rule as the API shows it; ``rules_compiler.alerts.to_rule`` parses it for compiling."""

    __tablename__ = "alert_rules"
    prefix = "rule"
    name: Mapped[str] = mapped_column(String(200))
    expression: Mapped[str] = mapped_column(String(2000))
    duration: Mapped[str] = mapped_column(String(16))
    scope: Mapped[dict] = mapped_column(JSON, default=dict)
    channels: Mapped[list] = mapped_column(JSON, default=list)
    severity: Mapped[str] = mapped_column(String(16), default="warning")
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    # "host": one notification per host (and rule); "rule": one listing every host of the rule.
    group_by: Mapped[str] = mapped_column(String(8), default="host", server_default="host")
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)


class AlertEvent(Stamped, db.Model):
    """One firing of one rule on one subject, from Alertmanager's webhook: firing → (acknowledged) → resolved."""

    __tablename__ = "alert_events"
    __table_args__ = (UniqueConstraint("fingerprint", "started_at"), Stamped.__table_args__)
    prefix = "event"
    fingerprint: Mapped[str] = mapped_column(String(32), index=True)  # Alertmanager's, from the labels
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    state: Mapped[str] = mapped_column(String(16), index=True)  # firing | acknowledged | resolved
    rule_id: Mapped[str | None] = mapped_column(String(64), index=True)
    rule_name: Mapped[str] = mapped_column(String(200), default="")
    host_id: Mapped[str | None] = mapped_column(String(253), index=True)
    severity: Mapped[str] = mapped_column(String(16), default="warning")
    value: Mapped[float | None] = mapped_column(db.Float)
    summary: Mapped[str] = mapped_column(String(1000), default="")
    labels: Mapped[dict] = mapped_column(JSON, default=dict)
    acknowledged_by: Mapped[str | None] = mapped_column(String(254))
    acknowledged_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    silence_id: Mapped[str | None] = mapped_column(String(64))
    # The silence (maintenance window) that muted it when it fired: recorded, not notified.
    silenced_by: Mapped[str | None] = mapped_column(String(64))


class AlertSilence(Stamped, db.Model):
    """A silence or maintenance window (rules_compiler/silences.py); Alertmanager holds the silences made of it."""

    __tablename__ = "alert_silences"
    prefix = "silence"
    scope: Mapped[dict] = mapped_column(JSON, default=dict)  # {"hosts": [], "tags": {}, "rule_ids": []}
    starts_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    ends_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), index=True)
    recurring: Mapped[dict | None] = mapped_column(JSON)
    comment: Mapped[str] = mapped_column(String(500), default="")
    author: Mapped[str] = mapped_column(String(254), default="")
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)
    # Alertmanager's silences made for its windows: [{"id", "starts_at", "ends_at", "matchers"}]. Every
    # worker reconciles; a write goes through only at the version it read (see gateway/alert_silences.py).
    am_silences: Mapped[list] = mapped_column(JSON, default=list)
    version: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


def private_file(path: Path) -> Path:
    """``path``, made empty if missing, mode 0600 whatever the umask: the gateway's files hold secrets."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    path.chmod(0o600)
    return path


def private_dir(path: Path, mode: int = 0o700) -> Path:
    """``path``, made if missing, mode 0700 (or ``mode``) whatever the umask."""
    path.mkdir(mode=mode, parents=True, exist_ok=True)
    path.chmod(mode)
    return path


def make_state_private(state_dir: Path, database_uri: str) -> None:
    """The state dir 0711 and a SQLite DB 0600 (SQLite gives its -wal and -shm the DB file's mode).

    0711, not 0700: others may pass through (to a PostgreSQL cluster there, run as the postgres user)
    but list nothing; each secret in it is 0600 and the exports and secrets directories 0700.
    """
    private_dir(state_dir, 0o711)
    url = make_url(database_uri)
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        db_path = Path(url.database)
        for path in (db_path, db_path.with_name(db_path.name + "-wal"), db_path.with_name(db_path.name + "-shm")):
            if path == db_path or path.exists():  # a DB made before this release has them 0644
                private_file(path)


class ReportSchedule(Stamped, db.Model):
    """A report an admin asked for on a calendar: what (scope, metrics, formats), when, to whom."""

    __tablename__ = "report_schedules"
    prefix = "schedule"
    name: Mapped[str] = mapped_column(String(200))
    scope: Mapped[dict] = mapped_column(JSON, default=dict)  # {} | {"tags": {...}} | {"hosts": [...]}
    metrics: Mapped[list] = mapped_column(JSON, default=list)
    schedule: Mapped[dict] = mapped_column(JSON, default=dict)  # {"every", "weekday", "day", "time", "timezone"}
    formats: Mapped[list] = mapped_column(JSON, default=list)
    recipients: Mapped[list] = mapped_column(JSON, default=list)
    # Unix seconds (64-bit: past 2038) of the next occurrence; workers claim a run by moving it on (scheduler.py).
    next_run_at: Mapped[int] = mapped_column(BigInteger, index=True)
    created_by: Mapped[str | None] = mapped_column(String(64))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)


class ReportRun(Stamped, db.Model):
    """One report of one schedule: pending → running → sent | done | failed; a lease says who works on it."""

    __tablename__ = "report_runs"
    # One scheduled run per occurrence, whoever claims it; manual runs have no due time (NULLs never collide).
    __table_args__ = (UniqueConstraint("schedule_pk", "due_at"), Stamped.__table_args__)
    prefix = "run"
    schedule_pk: Mapped[int] = mapped_column(Integer, index=True)
    trigger: Mapped[str] = mapped_column(String(16))  # "schedule" | "manual"
    due_at: Mapped[int | None] = mapped_column(BigInteger)  # Unix seconds of the occurrence; None: asked by hand
    period_start: Mapped[int] = mapped_column(BigInteger)  # Unix seconds; the report covers (start, end]
    period_end: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16), index=True)
    error: Mapped[str | None] = mapped_column(String(2000))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    lease_until: Mapped[int] = mapped_column(BigInteger, default=0)  # Unix seconds; past it, any worker may take it
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    delivery: Mapped[str | None] = mapped_column(String(16))  # "attachments" | "links" | None (no recipients)


class ReportFile(db.Model):
    """A rendered report, in the DB so that any worker or replica serves its download link."""

    __tablename__ = "report_files"
    pk: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_pk: Mapped[int] = mapped_column(Integer, index=True)
    name: Mapped[str] = mapped_column(String(200))
    media_type: Mapped[str] = mapped_column(String(64))
    content: Mapped[bytes] = mapped_column(LargeBinary)


def add_with_id(row: Stamped, public_id: str | None = None) -> Stamped:
    """Insert ``row`` and give it ``public_id`` or ``<prefix>-NNN`` from its key."""
    db.session.add(row)
    db.session.flush()
    row.id = public_id or f"{row.prefix}-{row.pk:03d}"
    return row


SECRET_SETTINGS = {"jwt": "JWT_SECRET"}  # secrets an operator may give instead of the DB's


def configured_secret(name: str) -> str:
    """A secret setting: FLEETWATCH_<NAME> itself, or what the file FLEETWATCH_<NAME>_FILE names holds; else ''."""
    config = current_app.config
    if config[name]:
        return str(config[name])
    path = config[f"{name}_FILE"]
    return secret_file(Path(path)) if path else ""


def secret_file(path: Path) -> str:
    """The secret held in ``path``: made (random, 0600, in a 0700 folder) by whichever process comes first."""
    if not path.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another worker, replica or `fleetwatch up` made it meanwhile
        else:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(32) + "\n")
    return path.read_text().strip()


def secret(name: str) -> str:
    """The named secret: from its setting if given (SECRET_SETTINGS), else made on first use and kept in the DB."""
    # Secrets never change once made: read each once per process and app.
    cache = current_app.extensions.setdefault("secrets", {})
    if name not in cache:
        setting = SECRET_SETTINGS.get(name)
        cache[name] = (configured_secret(setting) if setting else "") or _stored_secret(name)
    return cache[name]


def _stored_secret(name: str) -> str:
    found = db.session.get(Secret, name)
    if found is not None:
        return found.value
    db.session.add(Secret(name=name, value=secrets.token_urlsafe(48)))
    try:
        db.session.commit()
    except IntegrityError:  # another worker made it first: theirs wins
        db.session.rollback()
    return db.session.get(Secret, name).value


@event.listens_for(Engine, "connect")
def _sqlite_pragmas(dbapi_connection, _record) -> None:
    # WAL lets readers go on while one worker writes; busy_timeout makes
    # concurrent writers from several gunicorn workers wait instead of failing.
    if type(dbapi_connection).__module__.startswith("sqlite3"):
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=10000")
        # In WAL mode NORMAL cannot corrupt the DB; a power cut may lose the last
        # commits (a rate counter, a login), and each request stops paying an fsync.
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()


class Job(Stamped, db.Model):
    """An HPC job (seed 004): Slurm's, synced from Prometheus (gateway/job_sync.py), or posted by another scheduler."""

    __tablename__ = "jobs"
    prefix = "job"
    scheduler: Mapped[str] = mapped_column(String(32), default="external")  # "slurm" | "external"
    user: Mapped[str] = mapped_column(String(64), default="", index=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    account: Mapped[str] = mapped_column(String(64), default="")
    partition: Mapped[str] = mapped_column(String(64), default="", index=True)
    state: Mapped[str] = mapped_column(String(16), default="pending", index=True)
    # ",a,b," so that "runs on node X" is one LIKE on every database.
    nodes: Mapped[str] = mapped_column(String(4000), default=",")
    cpus: Mapped[int | None] = mapped_column(Integer)
    gpus: Mapped[int | None] = mapped_column(Integer)
    memory_bytes: Mapped[float | None] = mapped_column(db.Float)  # requested or allocated
    time_limit_s: Mapped[int | None] = mapped_column(Integer)
    submit_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    start_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), index=True)
    end_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), index=True)
    # The newest usage (from the sync or a push): what hpc_job_* on /metrics shows.
    cpu_usage_pct: Mapped[float | None] = mapped_column(db.Float)
    memory_usage_bytes: Mapped[float | None] = mapped_column(db.Float)
    gpu_usage_pct: Mapped[float | None] = mapped_column(db.Float)
    # An ended job's measured figures (gateway/job_efficiency.py), kept past Prometheus's retention.
    summary: Mapped[dict] = mapped_column(JSON, default=dict)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)


class JobSync(db.Model):
    """When the Slurm job sync last ran: the worker whose UPDATE moves it claims the next run."""

    __tablename__ = "job_sync"
    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    ran_at: Mapped[float] = mapped_column(db.Float)  # Unix time


class StreamEvent(db.Model):
    """The live-update log (gateway/event_log.py): what every stream of every worker reads, in ``pk`` order."""

    __tablename__ = "stream_events"
    __table_args__ = {"sqlite_autoincrement": True}  # an id is never handed out twice, even after a purge
    pk: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    kind: Mapped[str] = mapped_column(String(32))  # host.status | alert.event
    payload: Mapped[dict] = mapped_column(JSON, default=dict)
    admin_extra: Mapped[dict | None] = mapped_column(JSON)  # fields only admins' streams carry


class HostStatusSeen(db.Model):
    """Each host's status as the status watcher last recorded it: what a change is measured against."""

    __tablename__ = "host_status_seen"
    host_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    status: Mapped[str] = mapped_column(String(16))
    reasons: Mapped[list] = mapped_column(JSON, default=list)
    changed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Lease(db.Model):
    """Who does a fleet-wide chore now (one holder among all workers and replicas) and until when."""

    __tablename__ = "leases"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(128))
    expires_at: Mapped[float] = mapped_column(db.Float)  # Unix seconds
    done_at: Mapped[float | None] = mapped_column(db.Float)  # Unix seconds: the chore's last finished round
