"""The gateway's configuration: every default in one place, and importing the gateway does nothing."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import gateway
from gateway.app import DEFAULTS, read_config

GATEWAY = Path(gateway.__file__).parent


def test_settings_come_from_defaults_then_the_environment_then_test_config(monkeypatch, tmp_path):
    monkeypatch.setenv("FLEETWATCH_INGEST_MAX_POINTS", "7")
    monkeypatch.setenv("FLEETWATCH_PROMETHEUS_URL", "http://prom.example:9090/")
    monkeypatch.setenv("FLEETWATCH_ACCESS_TOKEN_TTL", "60")
    monkeypatch.delenv("DATABASE_URL", raising=False)
    config = read_config({"STATE_DIR": str(tmp_path), "INGEST_PAST_S": 60})
    assert (config["INGEST_MAX_POINTS"], config["INGEST_PAST_S"], config["INGEST_FUTURE_S"]) == (7, 60, 300)
    assert config["ACCESS_TOKEN_TTL"].total_seconds() == 60
    # Settings derived from others when left empty.
    assert config["REMOTE_WRITE_URL"] == "http://prom.example:9090/api/v1/write"
    assert config["SQLALCHEMY_DATABASE_URI"] == f"sqlite:///{tmp_path.resolve() / 'gateway.db'}"
    monkeypatch.setenv("DATABASE_URL", "postgresql://db.example/fleet")
    assert read_config()["SQLALCHEMY_DATABASE_URI"] == "postgresql://db.example/fleet"
    assert read_config({"SQLALCHEMY_DATABASE_URI": "sqlite://"})["SQLALCHEMY_DATABASE_URI"] == "sqlite://"


def test_every_setting_the_gateway_reads_has_its_default_in_the_app_factory():
    read, elsewhere = set(), set()
    for path in GATEWAY.glob("*.py"):
        text = path.read_text()
        read |= set(re.findall(r'config\[\s*"([A-Z][A-Z0-9_]+)"\s*\]', text))
        if path.name != "app.py":  # a default written beside its use is a second place to look for it
            elsewhere |= {
                f"{path.name}: {m}" for m in re.findall(r"config\.get\([^)]*\)|os\.environ\.get\([^)]*\)", text)
            }
    assert read, "no setting found: the pattern no longer matches how the gateway reads its settings"
    assert read - set(DEFAULTS) == set()
    # Neither is a setting: a one-off input of create-user, and prometheus_client's own variable.
    assert elsewhere <= {
        'cli.py: os.environ.get("FLEETWATCH_NEW_USER_PASSWORD")',
        'observability.py: os.environ.get("PROMETHEUS_MULTIPROC_DIR")',
    }


def test_importing_the_gateway_imports_no_metrics_library():
    # prometheus_client picks its multiprocess mode when first imported: gateway.cli must be
    # able to import the package and read the configuration before it sets PROMETHEUS_MULTIPROC_DIR.
    code = "import sys, gateway, gateway.app, gateway.cli; print(sorted({'prometheus_client'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
