"""One report run from start to inbox: the scope's hosts, the numbers, the alerts, the files, the email.

The files are kept in the DB (``report_files``) so that any worker or replica
serves their signed links. A report larger than REPORT_ATTACH_MAX_BYTES goes
out as links instead of attachments.
"""

from __future__ import annotations

import functools
import re
import smtplib
import ssl
import time
from datetime import UTC, datetime
from email.message import EmailMessage
from typing import NamedTuple

from flask import current_app
from sqlalchemy import or_

from gateway.db import AlertEvent, Host, ReportFile, ReportRun, ReportSchedule, db
from gateway.report_data import collect
from gateway.report_render import AlertLine, HostAlerts, Report, local_time, render_csv, render_pdf
from gateway.reports import signature
from gateway.schemas import utc_text

MEDIA = {"pdf": "application/pdf", "csv": "text/csv"}


def scope_hosts(scope: dict) -> tuple[list[tuple[str, str]], bool]:
    """(host_id, hostname) of the scope's hosts by id, and whether the scope is the whole fleet."""
    rows = db.session.execute(db.select(Host.id, Host.hostname, Host.tags).order_by(Host.id)).all()
    if scope.get("hosts"):
        wanted = set(scope["hosts"])
        return [(r.id, r.hostname) for r in rows if r.id in wanted], False
    tags = scope.get("tags") or {}
    chosen = [(r.id, r.hostname) for r in rows if all((r.tags or {}).get(k) == v for k, v in tags.items())]
    return chosen, not tags


def scope_text(scope: dict) -> str:
    if scope.get("hosts"):
        return "hosts " + ", ".join(scope["hosts"][:10]) + (" …" if len(scope["hosts"]) > 10 else "")
    if scope.get("tags"):
        return "tags " + ", ".join(f"{k}={v}" for k, v in sorted(scope["tags"].items()))
    return "every host"


def alert_summary(host_ids: list[str], whole_fleet: bool, start: int, end: int):
    """Alerts that were firing at some time in (start, end]: by rule, and per host."""
    start_dt, end_dt = (datetime.fromtimestamp(t, UTC) for t in (start, end))
    query = db.select(AlertEvent).where(
        AlertEvent.started_at <= end_dt, or_(AlertEvent.ended_at.is_(None), AlertEvent.ended_at > start_dt)
    )
    if not whole_fleet:
        query = query.where(AlertEvent.host_id.in_(host_ids))
    by_rule: dict[tuple[str, str], list[int]] = {}
    by_host: dict[str, HostAlerts] = {}
    for event in db.session.execute(query).scalars():
        began = _aware(event.started_at)
        lasted = int(((_aware(event.ended_at) if event.ended_at else end_dt) - began).total_seconds())
        unacked = int(event.acknowledged_at is None)
        line = by_rule.setdefault((event.rule_name or event.rule_id or "?", event.severity), [0, 0, 0])
        line[0], line[1], line[2] = line[0] + 1, max(line[1], lasted), line[2] + unacked
        if event.host_id:
            seen = by_host.get(event.host_id, HostAlerts(0, 0, 0))
            by_host[event.host_id] = HostAlerts(
                seen.fired + 1, seen.unacknowledged + unacked, max(seen.longest_s, lasted)
            )
    lines = [AlertLine(rule, sev, *counts) for (rule, sev), counts in by_rule.items()]
    return sorted(lines, key=lambda a: (-a.fired, a.rule)), by_host


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)  # SQLite hands back naive UTC


def build(schedule: ReportSchedule, run: ReportRun, now: int) -> Report:
    """The report of ``run``: numbers from Prometheus, alerts from the DB."""
    hosts, whole_fleet = scope_hosts(schedule.scope)
    ids = [h for h, _ in hosts]
    data = collect(
        current_app.extensions["tiers"],
        None if whole_fleet else ids,
        schedule.metrics,
        run.period_start,
        run.period_end,
        now,
    )
    alerts, host_alerts = alert_summary(ids, whole_fleet, run.period_start, run.period_end)
    return Report(
        schedule.name, scope_text(schedule.scope), schedule.schedule["timezone"], hosts, data, alerts, host_alerts
    )


class Rendered(NamedTuple):
    name: str
    media_type: str
    content: bytes


def store_files(schedule: ReportSchedule, run: ReportRun, report: Report) -> list[Rendered]:
    """Render each format of the schedule, then keep them with the run (replacing an earlier attempt's) and commit.

    Rendered first and written in one short transaction: on SQLite a write holds
    the whole DB, and every other request of every worker would wait for it.
    """
    slug = re.sub(r"[^A-Za-z0-9]+", "-", schedule.name).strip("-").lower()[:60] or "report"
    day = time.strftime("%Y-%m-%d", time.gmtime(run.period_end))
    render = {"pdf": render_pdf, "csv": render_csv}
    files = [Rendered(f"{slug}-{day}.{fmt}", MEDIA[fmt], render[fmt](report)) for fmt in schedule.formats]
    db.session.execute(db.delete(ReportFile).where(ReportFile.run_pk == run.pk))
    db.session.add_all(ReportFile(run_pk=run.pk, **f._asdict()) for f in files)
    db.session.commit()
    return files


def download_link(run_id: str, name: str, ttl_s: int, base: str | None = None) -> tuple[str, int]:
    """A signed link to one file of a run and its expiry (Unix seconds): no login, the signature is the permission.

    ``base``: the gateway's URL as the caller reached it; by default GATEWAY_URL (for emails).
    """
    expires = int(time.time() + ttl_s)
    base = (base or current_app.config["GATEWAY_URL"]).rstrip("/")
    sig = signature(f"{run_id}/{name}", expires)
    return f"{base}/api/v1/reports/runs/{run_id}/files/{name}?expires={expires}&sig={sig}", expires


def deliver(schedule: ReportSchedule, run: ReportRun, report: Report, files: list[Rendered]) -> str | None:
    """Email the report to the schedule's recipients: attached, or as links when too large. Returns how."""
    if not schedule.recipients:
        return None
    c = current_app.config
    tz = report.timezone
    period = f"{local_time(run.period_start, tz)} to {local_time(run.period_end, tz)} ({tz})"
    msg = EmailMessage()
    msg["Subject"] = f"{schedule.name}: {period}"
    msg["From"] = c["SMTP_FROM"]
    msg["To"] = ", ".join(schedule.recipients)
    lines = [
        f"{schedule.name}, {report.scope}: {len(report.hosts)} hosts, {period}.",
        f"Alerts fired: {sum(a.fired for a in report.alerts)}.",
        "",
    ]
    too_big = sum(len(f.content) for f in files) > int(c["REPORT_ATTACH_MAX_BYTES"])
    if too_big:
        ttl = int(c["REPORT_LINK_TTL_S"])
        lines.append(
            f"The report is too large to attach; download it (links valid until {utc_text(time.time() + ttl)}):"
        )
        lines += [download_link(run.id, f.name, ttl)[0] for f in files]
    else:
        lines.append("The report is attached: " + ", ".join(f.name for f in files) + ".")
    msg.set_content("\n".join(lines))
    if not too_big:
        for f in files:
            maintype, subtype = f.media_type.split("/")
            msg.add_attachment(f.content, maintype=maintype, subtype=subtype, filename=f.name)
    _send(msg)
    return "links" if too_big else "attachments"


def _send(msg: EmailMessage) -> None:
    c = current_app.config
    host, _, port = (c["SMTP_SMARTHOST"] or "").rpartition(":")
    if not host:
        raise RuntimeError("no SMTP server: set FLEETWATCH_SMTP_SMARTHOST (host:port)")
    # Port 465 speaks TLS from the first byte, as Alertmanager treats it; others may STARTTLS.
    # The server's certificate is verified (smtplib's own default would not), as Alertmanager does.
    tls = ssl.create_default_context()
    implicit_tls = port == "465"
    connect = functools.partial(smtplib.SMTP_SSL, context=tls) if implicit_tls else smtplib.SMTP
    with connect(host.strip("[]"), int(port), timeout=30) as smtp:  # "[::1]:25"
        if is_on(c["SMTP_REQUIRE_TLS"]) and not implicit_tls:
            smtp.starttls(context=tls)
        if c["SMTP_AUTH_USERNAME"]:
            smtp.login(c["SMTP_AUTH_USERNAME"], c["SMTP_AUTH_PASSWORD"])
        smtp.send_message(msg)


def is_on(value) -> bool:
    """A flag from config: a bool, or its text from the environment."""
    return value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes", "on")
