"""Report schedules come due inside the gateway: one thread per worker wakes up, the DB decides who runs.

Exactly one run per occurrence whatever the number of workers or replicas:
a worker claims an occurrence by moving the schedule's ``next_run_at`` on
with ``UPDATE … WHERE next_run_at = <what it read>``; of several racing
workers one UPDATE changes a row and the others find it moved (SQLite
serialises writers, PostgreSQL re-checks the WHERE after the row lock), and
``report_runs`` is unique on (schedule, occurrence) besides. The claimed run
is then taken like any pending run (a manual one too) under a lease: a worker
that dies mid-report leaves the lease to run out, and another takes it over.

After downtime the newest missed occurrence is run once, not once per missed
period. Workers wake every REPORT_SCHEDULER_TICK_S (30 s), so a report goes
out well within the 5 minutes of AC-BE-007; the clock is
``app.extensions["report_clock"]`` (Unix seconds), replaceable in tests.
"""

from __future__ import annotations

import logging
import os
import threading
import time

from flask import Flask, current_app
from sqlalchemy import update
from sqlalchemy.exc import IntegrityError

from gateway.db import ReportFile, ReportRun, ReportSchedule, add_with_id, db, utcnow
from gateway.report_calendar import latest_due, next_after, previous
from gateway.report_job import build, deliver, is_on, store_files

log = logging.getLogger(__name__)

ACTIVE = ("pending", "running")


def init_app(app: Flask) -> None:
    """The clock of the schedules and this process's (not yet started) scheduler thread."""
    offset = float(app.config["REPORT_CLOCK_OFFSET_S"])
    app.extensions["report_clock"] = lambda: int(time.time() + offset)
    app.extensions["report_scheduler"] = Scheduler(app)


def wake(app: Flask) -> None:
    """Ask this process's scheduler to look now (a run was just asked for)."""
    app.extensions["report_scheduler"].wake.set()


class Scheduler:
    """The thread of one worker; started after the fork (gunicorn's post_worker_init), never in the master."""

    def __init__(self, app: Flask):
        self.app = app
        self.wake = threading.Event()
        self._pid: int | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        with self._lock:
            if self._pid == os.getpid() or not is_on(self.app.config["REPORT_SCHEDULER"]):
                return
            with self.app.app_context():
                # The master's pooled connections came along with the fork: never share them.
                db.engine.dispose(close=False)
            self._pid = os.getpid()
            threading.Thread(target=self._loop, name="report-scheduler", daemon=True).start()
            log.info("report scheduler started", extra={"pid": self._pid})

    def _loop(self) -> None:
        interval = min(60.0, float(self.app.config["REPORT_SCHEDULER_TICK_S"]))
        while True:
            try:
                tick(self.app)
            except Exception:  # a DB or Prometheus outage must not end the thread
                log.exception("report scheduler tick failed")
            self.wake.wait(interval)
            self.wake.clear()


def tick(app: Flask) -> list[str]:
    """Claim what is due, then take and run each pending run; return the ids of the runs this call made."""
    with app.app_context():
        now = app.extensions["report_clock"]()
        claim_due(now)
        done = []
        limit = int(app.config["REPORT_MAX_ATTEMPTS"])
        for pk, lease, attempts in db.session.execute(
            db.select(ReportRun.pk, ReportRun.lease_until, ReportRun.attempts).where(
                ReportRun.status.in_(ACTIVE), ReportRun.lease_until <= now
            )
        ).all():
            if attempts >= limit:  # its last worker died with it (a failure ends as "failed" by itself)
                give_up(pk, lease)
            elif take(pk, lease, now) and (made := execute(pk, now)):
                done.append(made)
        if now - app.extensions.get("report_purged_at", 0) > 3600:  # a write: not on every tick
            purge(now)
            app.extensions["report_purged_at"] = now
        db.session.remove()
        return done


def claim_due(now: int) -> None:
    """Each schedule past its next_run_at: one worker moves it on and records the pending run."""
    due_rows = db.session.execute(
        db.select(ReportSchedule.pk, ReportSchedule.next_run_at, ReportSchedule.schedule).where(
            ReportSchedule.next_run_at <= now
        )
    ).all()
    db.session.rollback()  # each claim in a transaction of its own, begun by its UPDATE
    for pk, seen, calendar in due_rows:
        due = latest_due(calendar, seen, now)
        moved = db.session.execute(
            update(ReportSchedule)
            .where(ReportSchedule.pk == pk, ReportSchedule.next_run_at == seen)
            .values(next_run_at=next_after(calendar, now))
            .execution_options(synchronize_session=False)
        )
        if moved.rowcount != 1:
            db.session.rollback()  # another worker claimed it
            continue
        add_with_id(
            ReportRun(
                schedule_pk=pk,
                trigger="schedule",
                due_at=due,
                period_start=previous(calendar, due),
                period_end=due,
                status="pending",
                lease_until=0,
                attempts=0,
            )
        )
        try:
            db.session.commit()
            log.info("report run claimed", extra={"schedule_pk": pk, "due_at": due, "pid": os.getpid()})
        except IntegrityError:
            db.session.rollback()


def take(pk: int, lease_seen: int, now: int) -> bool:
    """Lease a pending run (or one whose worker's lease ran out) to this worker; False if another got it."""
    taken = db.session.execute(
        update(ReportRun)
        .where(ReportRun.pk == pk, ReportRun.lease_until == lease_seen, ReportRun.status.in_(ACTIVE))
        .values(
            status="running",
            lease_until=now + int(current_app.config["REPORT_LEASE_S"]),
            attempts=ReportRun.attempts + 1,
            started_at=utcnow(),
        )
        .execution_options(synchronize_session=False)
    )
    db.session.commit()
    return taken.rowcount == 1


def give_up(pk: int, lease_seen: int) -> None:
    """A run whose every attempt ended with its worker: failed, not taken again and again."""
    db.session.execute(
        update(ReportRun)
        .where(ReportRun.pk == pk, ReportRun.lease_until == lease_seen, ReportRun.status.in_(ACTIVE))
        .values(status="failed", error="gave up: the workers making it stopped", finished_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    db.session.commit()


def execute(pk: int, now: int) -> str | None:
    """Make and send the report of a leased run; a failure is retried a minute later, up to REPORT_MAX_ATTEMPTS."""
    config = current_app.config
    run = db.session.get(ReportRun, pk)
    schedule = db.session.get(ReportSchedule, run.schedule_pk)
    try:
        if schedule is None:
            raise RuntimeError("the schedule was deleted")
        report = build(schedule, run, now)
        files = store_files(schedule, run, report)
        run.delivery = deliver(schedule, run, report, files)
        run.status, run.error, run.finished_at = ("sent" if run.delivery else "done"), None, utcnow()
        db.session.commit()
        log.info("report run finished", extra={"run": run.id, "delivery": run.delivery})
    except Exception as exc:  # noqa: BLE001 - any failure is the run's error, recorded and retried
        db.session.rollback()
        run = db.session.get(ReportRun, pk)
        if run is None:  # its schedule was deleted meanwhile, runs and all
            return None
        final = run.attempts >= int(config["REPORT_MAX_ATTEMPTS"]) or schedule is None
        run.status = "failed" if final else "pending"
        run.lease_until = now + 60
        run.error = f"{exc.__class__.__name__}: {exc}"[:2000]
        if final:
            run.finished_at = utcnow()
        db.session.commit()
        log.warning("report run failed", extra={"run": run.id, "error": run.error, "final": final})
    return run.id


def purge(now: int) -> None:
    """Forget the files of runs older than REPORT_KEEP_S; the runs themselves stay listed."""
    keep_s = int(current_app.config["REPORT_KEEP_S"])
    old = db.select(ReportRun.pk).where(ReportRun.period_end < now - keep_s)
    db.session.execute(db.delete(ReportFile).where(ReportFile.run_pk.in_(old)))
    db.session.commit()
