"""Report schedules (REQ-REPORT-001, REQ-EXPORT-002): what to report, when, to whom; their runs and files.

Admins only, reads included (a schedule lists people's addresses); every
change is audited. The scheduler (gateway/scheduler.py) makes the runs.
"""

from __future__ import annotations

from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import marshmallow as ma
from flask import current_app, g, request
from flask.views import MethodView
from sqlalchemy import func

from gateway import scheduler
from gateway.auth import ADMIN, PUBLIC, access, audit
from gateway.db import Host, ReportFile, ReportRun, ReportSchedule, add_with_id, db
from gateway.errors import ApiError, Blueprint, NotFound
from gateway.hosts import Tags
from gateway.report_calendar import EVERY, WEEKDAYS, next_after, previous
from gateway.report_data import REPORTABLE
from gateway.report_job import MEDIA, download_link
from gateway.reports import LINK_TTL_S, verify_link
from gateway.schemas import Page, PageArgs, UtcDateTime, page, utc_text

blp = Blueprint(
    "report-schedules", __name__, url_prefix="/api/v1/reports", description="Scheduled reports (PDF, CSV) by email"
)

DEFAULT_METRICS = ["cpu.utilization", "mem.used_pct", "gpu.utilization", "gpu.memory_used_pct", "disk.used_pct"]


def _zone(name: str) -> None:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ma.ValidationError(f"unknown time zone {name!r}; use an IANA name such as Europe/Berlin") from None


class ScopeSchema(ma.Schema):
    tags = Tags(metadata={"description": "hosts carrying all of these tags"})
    hosts = ma.fields.List(ma.fields.String(validate=ma.validate.Length(1, 64)), validate=ma.validate.Length(1, 5000))

    @ma.validates_schema
    def _one_kind(self, data, **_):
        if "tags" in data and "hosts" in data:
            raise ma.ValidationError("give tags or hosts, not both", "scope")


class CalendarSchema(ma.Schema):
    every = ma.fields.String(required=True, validate=ma.validate.OneOf(EVERY))
    weekday = ma.fields.String(validate=ma.validate.OneOf(WEEKDAYS), metadata={"description": "every week: mon…sun"})
    day = ma.fields.Integer(validate=ma.validate.Range(1, 28), metadata={"description": "every month: 1…28"})
    time = ma.fields.String(
        required=True,
        validate=ma.validate.Regexp(r"^([01]\d|2[0-3]):[0-5]\d$", error="expected HH:MM, 00:00 to 23:59"),
    )
    timezone = ma.fields.String(load_default="UTC", validate=_zone, metadata={"example": "Europe/Berlin"})

    @ma.validates_schema
    def _fits_every(self, data, **_):
        if data.get("every") == "week" and "weekday" not in data:
            raise ma.ValidationError("a weekly schedule needs its weekday (mon…sun)", "weekday")
        if data.get("every") != "week" and "weekday" in data:
            raise ma.ValidationError("weekday is for weekly schedules", "weekday")
        if data.get("every") != "month" and "day" in data:
            raise ma.ValidationError("day is for monthly schedules", "day")


class ScheduleSchema(ma.Schema):
    id = ma.fields.String(dump_only=True)
    name = ma.fields.String(
        required=True,
        # It becomes the email's subject: a line break there would forge headers.
        validate=[
            ma.validate.Length(1, 200),
            ma.validate.Regexp(r"^[^\x00-\x1f\x7f]*$", error="no control characters (line breaks, tabs)"),
        ],
    )
    scope = ma.fields.Nested(ScopeSchema, load_default=dict, metadata={"description": "none: every host"})
    metrics = ma.fields.List(
        ma.fields.String(validate=ma.validate.OneOf(REPORTABLE)),
        load_default=lambda: list(DEFAULT_METRICS),
        validate=ma.validate.Length(1, 20),
    )
    schedule = ma.fields.Nested(CalendarSchema, required=True)
    formats = ma.fields.List(
        ma.fields.String(validate=ma.validate.OneOf(list(MEDIA))),
        load_default=lambda: list(MEDIA),
        validate=ma.validate.Length(1, 2),
    )
    recipients = ma.fields.List(ma.fields.Email(), load_default=list, validate=ma.validate.Length(max=50))
    next_run_at = ma.fields.Function(lambda s: utc_text(s.next_run_at), dump_only=True)
    created_at = UtcDateTime(dump_only=True)
    updated_at = UtcDateTime(dump_only=True)


class ScheduleListSchema(Page):
    schedules = ma.fields.List(ma.fields.Nested(ScheduleSchema))


class FileSchema(ma.Schema):
    name = ma.fields.String()
    format = ma.fields.String()
    size_bytes = ma.fields.Integer()
    download_url = ma.fields.String()
    expires_at = ma.fields.String()


class RunSchema(ma.Schema):
    id = ma.fields.String()
    schedule_id = ma.fields.String()
    trigger = ma.fields.String(metadata={"description": "schedule | manual"})
    status = ma.fields.String(metadata={"description": "pending | running | sent | done (no recipients) | failed"})
    error = ma.fields.String(allow_none=True)
    attempts = ma.fields.Integer()
    delivery = ma.fields.String(allow_none=True, metadata={"description": "attachments | links"})
    due_at = ma.fields.String(allow_none=True)
    period_start = ma.fields.String()
    period_end = ma.fields.String()
    created_at = UtcDateTime()
    started_at = UtcDateTime(allow_none=True)
    finished_at = UtcDateTime(allow_none=True)
    files = ma.fields.List(ma.fields.Nested(FileSchema))


class RunListSchema(Page):
    runs = ma.fields.List(ma.fields.Nested(RunSchema))


def _get_schedule(schedule_id: str) -> ReportSchedule:
    found = db.session.execute(db.select(ReportSchedule).filter_by(id=schedule_id)).scalar_one_or_none()
    if found is None:
        raise NotFound(f"no report schedule {schedule_id}", {"id": schedule_id})
    return found


def _checked(body: dict) -> dict:
    """The body with its metrics deduplicated, after the checks a schema cannot make.

    Raises:
        ApiError: a scope host that does not exist, or recipients while no SMTP server is set (400).
    """
    wanted = body["scope"].get("hosts") or []
    known = set(db.session.execute(db.select(Host.id).where(Host.id.in_(wanted))).scalars()) if wanted else set()
    if missing := [h for h in wanted if h not in known]:
        raise ApiError(f"unknown hosts in scope: {', '.join(missing[:10])}", {"scope.hosts": missing})
    if body["recipients"] and not current_app.config["SMTP_SMARTHOST"]:
        raise ApiError(
            "emailing reports needs an SMTP server: set FLEETWATCH_SMTP_SMARTHOST (host:port) on the gateway",
            {"recipients": body["recipients"]},
        )
    return {**body, "metrics": list(dict.fromkeys(body["metrics"]))}


def _now() -> int:
    return current_app.extensions["report_clock"]()


@blp.route("/schedules")
class Schedules(MethodView):
    @access(ADMIN)
    @blp.arguments(PageArgs, location="query")
    @blp.response(200, ScheduleListSchema)
    def get(self, args):
        """List report schedules."""
        rows, meta = page(db.select(ReportSchedule).order_by(ReportSchedule.pk), args, db.session)
        return {"schedules": rows, **meta}

    @blp.arguments(ScheduleSchema)
    @blp.response(201, ScheduleSchema)
    def post(self, body):
        """Create a report schedule; its first run is at the next occurrence of its time."""
        body = _checked(body)
        row = add_with_id(
            ReportSchedule(**body, next_run_at=next_after(body["schedule"], _now()), created_by=g.principal.id)
        )
        audit("report_schedule_create", row.id, name=row.name, schedule=row.schedule)
        db.session.commit()
        return row


@blp.route("/schedules/<schedule_id>")
class ScheduleItem(MethodView):
    @access(ADMIN)
    @blp.response(200, ScheduleSchema)
    def get(self, schedule_id):
        """One report schedule."""
        return _get_schedule(schedule_id)

    @blp.arguments(ScheduleSchema)
    @blp.response(200, ScheduleSchema)
    def put(self, body, schedule_id):
        """Replace a report schedule; a new time moves its next run."""
        row = _get_schedule(schedule_id)
        body = _checked(body)
        if body["schedule"] != row.schedule:
            row.next_run_at = next_after(body["schedule"], _now())
        for key, value in body.items():
            setattr(row, key, value)
        audit("report_schedule_update", row.id, name=row.name, schedule=row.schedule)
        db.session.commit()
        return row

    @blp.response(204)
    def delete(self, schedule_id):
        """Delete a report schedule with its runs and their files."""
        row = _get_schedule(schedule_id)
        runs = db.select(ReportRun.pk).where(ReportRun.schedule_pk == row.pk)
        db.session.execute(db.delete(ReportFile).where(ReportFile.run_pk.in_(runs)))
        db.session.execute(db.delete(ReportRun).where(ReportRun.schedule_pk == row.pk))
        db.session.delete(row)
        audit("report_schedule_delete", schedule_id, name=row.name)
        db.session.commit()


@blp.route("/schedules/<schedule_id>/run")
class RunNow(MethodView):
    @blp.response(202, RunSchema)
    def post(self, schedule_id):
        """Make a report now, over the length of one period up to now; a worker's scheduler takes it at once."""
        row = _get_schedule(schedule_id)
        now = _now()
        span = next_after(row.schedule, now) - previous(row.schedule, next_after(row.schedule, now))
        run = add_with_id(
            ReportRun(
                schedule_pk=row.pk,
                trigger="manual",
                period_start=now - span,
                period_end=now,
                status="pending",
                lease_until=0,
                attempts=0,
            )
        )
        audit("report_run", row.id, run=run.id)
        db.session.commit()
        scheduler.wake(current_app)
        return _run_view(run, row.id)


@blp.route("/schedules/<schedule_id>/runs")
class Runs(MethodView):
    @access(ADMIN)
    @blp.arguments(PageArgs, location="query")
    @blp.response(200, RunListSchema)
    def get(self, args, schedule_id):
        """A schedule's runs, newest first: time, status, error and signed download links (valid 1 h)."""
        row = _get_schedule(schedule_id)
        query = db.select(ReportRun).where(ReportRun.schedule_pk == row.pk).order_by(ReportRun.pk.desc())
        runs, meta = page(query, args, db.session)
        return {"runs": [_run_view(r, row.id) for r in runs], **meta}


def _run_view(run: ReportRun, schedule_id: str) -> dict:
    files = db.session.execute(
        db.select(ReportFile.name, func.length(ReportFile.content)).where(ReportFile.run_pk == run.pk)
    ).all()
    links = [(name, size, *download_link(run.id, name, LINK_TTL_S, request.host_url)) for name, size in files]
    return {
        **{k: getattr(run, k) for k in ("id", "trigger", "status", "error", "attempts", "delivery")},
        **{k: getattr(run, k) for k in ("created_at", "started_at", "finished_at")},
        "schedule_id": schedule_id,
        "due_at": utc_text(run.due_at) if run.due_at is not None else None,
        "period_start": utc_text(run.period_start),
        "period_end": utc_text(run.period_end),
        "files": [
            {"name": n, "format": n.rsplit(".", 1)[-1], "size_bytes": s, "download_url": u, "expires_at": utc_text(e)}
            for n, s, u, e in links
        ],
    }


@blp.route("/runs/<run_id>/files/<name>")
class RunFile(MethodView):
    @access(PUBLIC)
    def get(self, run_id, name):
        """Download a report file by its signed link (no login: the signature is the permission)."""
        verify_link(f"{run_id}/{name}", "ask for the run's links again")
        found = db.session.execute(
            db.select(ReportFile)
            .join(ReportRun, ReportRun.pk == ReportFile.run_pk)
            .where(ReportRun.id == run_id, ReportFile.name == name)
        ).scalar_one_or_none()
        if found is None:
            raise NotFound("this report is no longer kept")
        return current_app.response_class(
            found.content,
            mimetype=found.media_type,
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
        )
