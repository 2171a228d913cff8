"""A throwaway PostgreSQL server for the gateway's PostgreSQL tests."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

from fleetwatch import postgres
from fleetwatch.testing.waits import free_port


class Postgres:
    """A throwaway PostgreSQL server (Debian's) on a loopback port, its data in a temp dir."""

    def __init__(self):
        self.bin = postgres.binaries()
        self.dir = Path(tempfile.mkdtemp(prefix="fleetwatch-pg-"))
        postgres.own_directory(self.dir)
        self.port = free_port()

    def _run(self, *argv: str) -> None:
        subprocess.run([*postgres.as_server_user(), *argv], check=True, capture_output=True)

    def start(self):
        postgres.initdb(self.dir / "data", durable=False)
        options = " ".join(postgres.server_options(self.port, self.dir, durable=False))
        self._run(
            str(self.bin / "pg_ctl"),
            "-D",
            str(self.dir / "data"),
            "-o",
            options,
            "-l",
            str(self.dir / "log"),
            "-w",
            "start",
        )
        return self

    def stop(self):
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.dir / "data"), "-m", "immediate", "stop")
        shutil.rmtree(self.dir, ignore_errors=True)

    def new_database(self) -> str:
        """A fresh database's SQLAlchemy URL."""
        name = f"t{uuid.uuid4().hex[:12]}"
        postgres.create_database("127.0.0.1", self.port, name)
        return postgres.url("127.0.0.1", self.port, name)
