"""The live-update log on both databases: ids in commit order across concurrent writers, purge, the watcher's lease."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest

from fleetwatch.testing.api import make_app
from fleetwatch.testing.waits import free_port
from gateway import event_log
from gateway.db import Lease, StreamEvent, db


@pytest.fixture(params=["sqlite", "postgresql"])
def app(request, tmp_path):
    overrides = (
        {}
        if request.param == "sqlite"
        else {"SQLALCHEMY_DATABASE_URI": request.getfixturevalue("postgres").new_database()}
    )
    return make_app(tmp_path, f"http://127.0.0.1:{free_port()}", **overrides)


def test_concurrent_appenders_commit_in_id_order(app):
    """A reader that has passed an id never misses a lower one committed later (the PostgreSQL table lock)."""
    seen: list[int] = []
    stop = threading.Event()

    def reader():
        with app.app_context():
            cursor = 0
            while not stop.is_set():
                rows = event_log.read_after(cursor)
                db.session.rollback()  # a fresh snapshot each round
                seen.extend(r[0] for r in rows)
                cursor = rows[-1][0] if rows else cursor

    def writer(n: int):
        with app.app_context():
            for i in range(n):
                event_log.append(event_log.HOST_STATUS, {"host_id": f"h{i}", "status": "ok"})
                time.sleep(0.001)  # hold the transaction open a moment, as a webhook does
                db.session.commit()

    follow = threading.Thread(target=reader)
    follow.start()
    writers = [threading.Thread(target=writer, args=(30,)) for _ in range(4)]
    for t in writers:
        t.start()
    for t in writers:
        t.join()
    time.sleep(0.3)
    stop.set()
    follow.join()
    with app.app_context():
        everything = [r[0] for r in event_log.read_after(0, limit=1000)]
    assert len(everything) == 120
    assert seen == everything, "the reader skipped or repeated an event"


def test_purge_keeps_the_newest_rows_and_drops_old_ones(app):
    with app.app_context():
        for i in range(10):
            event_log.append(event_log.ALERT_EVENT, {"id": f"event-{i}"})
        db.session.commit()
        newest = event_log.last_id()
        assert event_log.purge(timedelta(days=1), keep_rows=4) == 6
        db.session.commit()
        assert [r[0] for r in event_log.read_after(0)] == list(range(newest - 3, newest + 1))
        assert event_log.oldest_id() == newest - 3
        db.session.execute(db.update(StreamEvent).values(at=StreamEvent.at - timedelta(days=2)))
        assert event_log.purge(timedelta(days=1), keep_rows=100) == 4
        db.session.commit()
        assert event_log.read_after(0) == [] and event_log.last_id() == 0
        # Ids go on from where they were: a client's Last-Event-ID never points at a newer event.
        event_log.append(event_log.ALERT_EVENT, {"id": "event-new"})
        db.session.commit()
        assert event_log.last_id() > newest


def test_one_lease_holder_until_its_lease_runs_out(app):
    with app.app_context():
        assert event_log.hold_lease("status-watch", "worker-a", 30)
        assert not event_log.hold_lease("status-watch", "worker-b", 30)
        assert event_log.hold_lease("status-watch", "worker-a", 30)  # renewed
        db.session.execute(db.update(Lease).values(expires_at=time.time() - 1))  # worker-a died
        db.session.commit()
        assert event_log.hold_lease("status-watch", "worker-b", 30)
        assert not event_log.hold_lease("status-watch", "worker-a", 30)
