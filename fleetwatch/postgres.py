"""Debian's PostgreSQL run from a directory of its own: `fleetwatch up --gateways N` and the tests' throwaway one.

PostgreSQL refuses to run as root: as root, it runs as the package's postgres
user, which then owns its directory (and must be able to reach it).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
from pathlib import Path

USER = "fleetwatch"  # the superuser initdb makes; trust authentication, loopback or socket only


def binaries() -> Path:
    """The newest installed PostgreSQL's bin directory.

    Raises:
        FileNotFoundError: PostgreSQL is not installed.
    """
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if not found:
        raise FileNotFoundError("PostgreSQL is not installed: scripts/system-deps.sh installs Debian's postgresql")
    return Path(found[-1]).parent


def as_server_user() -> list[str]:
    """The prefix that runs a command as the postgres user when we are root; nothing otherwise."""
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


def own_directory(directory: Path) -> None:
    """Make ``directory`` the server user's (as root) so that initdb and the server may write there."""
    directory.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        shutil.chown(directory, "postgres")


def initdb(data: Path, durable: bool = True) -> None:
    """An empty cluster in ``data`` (UTF-8, ``USER`` its superuser) unless one is there already."""
    if (data / "PG_VERSION").exists():
        return
    argv = [*as_server_user(), str(binaries() / "initdb"), "-D", str(data), "-A", "trust", "-U", USER, "-E", "UTF8"]
    subprocess.run(argv if durable else [*argv, "--no-sync"], check=True, capture_output=True)


def server_options(port: int, socket_dir: Path, host: str = "127.0.0.1", durable: bool = True) -> list[str]:
    """The server's flags: its port, its socket in ``socket_dir``, TCP on ``host``; fsync off unless ``durable``."""
    options = ["-p", str(port), "-k", str(socket_dir), "-c", f"listen_addresses={host}"]
    return options if durable else [*options, "-c", "fsync=off"]


def url(host: str, port: int, database: str) -> str:
    """The SQLAlchemy URL of ``database`` on that server."""
    return f"postgresql+psycopg://{USER}@{host}:{port}/{database}"


def create_database(host: str, port: int, name: str) -> bool:
    """Create database ``name`` (a plain identifier) unless it exists; whether it was made."""
    import psycopg

    with psycopg.connect(f"host={host} port={port} user={USER} dbname=postgres", autocommit=True) as c:
        if c.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            return False
        c.execute(f'CREATE DATABASE "{name}"')
    return True


def answers(host: str, port: int) -> bool:
    """Whether the server takes connections."""
    import psycopg

    try:
        with psycopg.connect(f"host={host} port={port} user={USER} dbname=postgres", connect_timeout=1):
            return True
    except psycopg.OperationalError:
        return False
