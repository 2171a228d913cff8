"""The inventory's edges: the file_sd targets Prometheus scrapes, and the machine `fleetwatch up` runs on.

The targets file holds every scraped host, so writing it costs as much as the
fleet is large. Each worker writes it at once after a change when it has not
written it for TARGETS_WRITE_GAP_S, and otherwise once at the end of that gap
for every change made meanwhile: registering hosts one by one costs one write
per gap, not one per host (bench/hosts_import.py measures it).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
import time
from pathlib import Path

from flask import Flask, current_app

from gateway.db import Host, Setting, add_with_id, db

log = logging.getLogger(__name__)

LOCAL_HOST_SETTING = "local-host"  # its row says the local host was registered once: a deleted one stays deleted


class TargetsWriter:
    """Per worker process: rewrites file_sd/hosts.json from the DB, coalescing bursts of changes."""

    def __init__(self, app: Flask):
        self.app = app
        self.gap_s = float(app.config["TARGETS_WRITE_GAP_S"])
        self._lock = threading.Lock()
        self._last = 0.0
        self._pending: threading.Timer | None = None

    def changed(self) -> None:
        """The inventory changed (and is committed): write now, or at the end of the current gap."""
        with self._lock:
            if self._pending is not None:
                return  # a write is due and will read this change from the DB
            wait = self._last + self.gap_s - time.monotonic()
            if wait > 0:
                self._pending = threading.Timer(wait, self._deferred)
                self._pending.daemon = True
                self._pending.start()
                return
            self._last = time.monotonic()
        self.write()

    def _deferred(self) -> None:
        with self._lock:
            self._pending = None
            self._last = time.monotonic()
        with self.app.app_context():
            try:
                self.write()
            except Exception:
                log.exception("file_sd targets not written")

    def write(self) -> None:
        """Every scraped host's exporter as a target labelled with its host_id; Prometheus re-reads the file."""
        port = self.app.config["EXPORTER_PORT"]
        path = Path(self.app.config["STATE_DIR"]) / "file_sd" / "hosts.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        # One writer at a time across workers, each reading the DB inside the lock: the last
        # file written is never older than the last change committed before it was read.
        with open(path.parent / ".hosts.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            rows = db.session.execute(
                db.select(Host.id, Host.exporter, Host.ips, Host.hostname).where(~Host.pushes).order_by(Host.pk)
            ).all()
            db.session.rollback()  # a read-only transaction: no lock held on SQLite past here
            targets = [
                {"targets": [r.exporter or f"{(r.ips or [r.hostname])[0]}:{port}"], "labels": {"host_id": r.id}}
                for r in rows
            ]
            tmp = path.with_name(f".hosts.json.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(targets, separators=(",", ":")) + "\n")
            os.replace(tmp, path)


def targets_changed() -> None:
    """Call after committing a change to the scraped hosts."""
    current_app.extensions["targets_writer"].changed()


def register_local_host(spec: dict) -> None:
    """Put the machine `fleetwatch up` monitors in the inventory on the first start; keep its address current.

    ``spec`` comes from the stack (FLEETWATCH_LOCAL_HOST): id (the host_id its exporter is
    scraped under), hostname, ips, has_gpu, exporter.
    """
    fields = {k: spec[k] for k in ("hostname", "ips", "has_gpu", "exporter") if k in spec}
    host = db.session.execute(db.select(Host).filter_by(id=spec["id"])).scalar_one_or_none()
    if db.session.get(Setting, LOCAL_HOST_SETTING) is None:
        if host is None:
            host = add_with_id(Host(tags={}, source="local", **fields), spec["id"])
            log.info("the local host is in the inventory", extra={"host_id": host.id})
        db.session.add(Setting(name=LOCAL_HOST_SETTING, value={"id": spec["id"]}))
    elif host is not None and host.source == "local":
        for key, value in fields.items():  # another port, a new address, a GPU added since
            setattr(host, key, value)
    db.session.commit()
