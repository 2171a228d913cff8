"""The agent's API key: never sent over plain http:// to another machine unless asked, and kept out of argv."""

from __future__ import annotations

import subprocess
import sys

import pytest

from exporter.agent import AgentConfig
from exporter.cli import agent_config, build_parser


def config_of(*argv: str, env: dict | None = None) -> AgentConfig:
    return agent_config(build_parser().parse_args(["--hostname=h1", *argv]), env or {})


def test_plain_http_to_another_machine_is_refused_unless_insecure(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "exporter.cli", "--push", "http://gw.example.com:8080", "--api-key", "fwk_x",
         "--buffer", str(tmp_path / "b.db"), "--no-gpu", "--no-processes"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 2 and "--insecure" in r.stderr and "http://gw.example.com" in r.stderr, r.stderr
    assert config_of("--push=http://gw.example.com", "--api-key=fwk_x", "--insecure").insecure
    assert config_of("--push=https://gw.example.com", "--api-key=fwk_x").push == "https://gw.example.com"
    assert config_of("--push=http://127.0.0.1:8080", "--api-key=fwk_x")  # loopback: nothing crosses a network
    with pytest.raises(ValueError, match="insecure"):
        AgentConfig(push="http://10.0.0.5:8080", api_key="fwk_x", host_id="h1")


def test_the_key_comes_from_a_private_file_or_the_environment(tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text("fwk_from_file\n")
    key_file.chmod(0o644)
    with pytest.raises(ValueError, match="chmod 600"):
        config_of("--push=https://gw.example.com", f"--api-key-file={key_file}")
    key_file.chmod(0o600)
    assert config_of("--push=https://gw.example.com", f"--api-key-file={key_file}").api_key == "fwk_from_file"
    from_env = config_of("--push=https://gw.example.com", env={"FLEETWATCH_API_KEY": "fwk_env"})
    assert from_env.api_key == "fwk_env"
    yaml_file = tmp_path / "agent.yml"
    yaml_file.write_text(f"push: https://gw.example.com\napi_key_file: {key_file}\n")
    assert config_of(f"--config={yaml_file}").api_key == "fwk_from_file"
    with pytest.raises(ValueError, match="API key"):
        config_of("--push=https://gw.example.com")
