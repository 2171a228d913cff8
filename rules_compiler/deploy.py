"""The compiler's edge: install generated rules and Alertmanager config, reload both, confirm.

Each file is written beside its target, checked with the real promtool /
amtool, and only then renamed over the live one; Prometheus and Alertmanager
are reloaded and Prometheus is asked which rule revision it runs. Should any
step after the rename fail, the previous files go back and are reloaded, so
what is in force is always a set that passed the checks. One lock file
serialises deployments from every gateway worker; gateway replicas on
PostgreSQL pass a lock of their own (``lock``: an advisory lock in the DB).
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import orjson
import urllib3
import yaml

from rules_compiler import group_phase
from rules_compiler.alerts import GROUP, LAG, is_alert_group
from rules_compiler.notify_templates import templates_name
from rules_compiler.recording import GROUP as LAYER_GROUP


class DeployFailed(Exception):
    """Nothing changed: ``status`` 400 when the files were refused, 503 when a service did not take them."""

    def __init__(self, message: str, details: dict | None = None, status: int = 503):
        super().__init__(message)
        self.message = message
        self.details = details or {}
        self.status = status


@dataclass
class AlertDeployer:
    rules_path: Path
    alertmanager_path: Path
    prometheus_url: str
    alertmanager_url: str
    promtool: str = "promtool"
    amtool: str = "amtool"
    timeout_s: float = 10.0
    lock: Callable[[], AbstractContextManager] | None = None  # None: a lock file beside the rules (one machine)
    # Another rule evaluator (docs/backends.md): "vmalert" checks with `vmalert -dryRun`;
    # its rules API and the URLs reloaded when they are not Prometheus's own.
    dialect: str = "prometheus"
    vmalert: str = "vmalert"
    rules_url: str = ""  # empty: prometheus_url
    reload_urls: tuple[str, ...] = ()  # empty: (prometheus_url,)

    def __post_init__(self):
        self._http = urllib3.PoolManager(timeout=urllib3.Timeout(connect=2.0, read=self.timeout_s), retries=False)
        self.rules_url = self.rules_url or self.prometheus_url
        self.reload_urls = tuple(self.reload_urls) or (self.prometheus_url,)
        self._evaluator = "vmalert" if self.dialect == "vmalert" else "Prometheus"

    def _rules_check(self, path: Path) -> list[str]:
        if self.dialect == "vmalert":
            return [self.vmalert, "-dryRun", f"-rule={path}"]
        return [self.promtool, "check", "rules", str(path)]

    @contextmanager
    def locked(self):
        """Held across read-compile-install, so concurrent writers install complete sets in turn."""
        if self.lock is not None:
            with self.lock():
                yield
            return
        self.rules_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.rules_path.parent / ".alerts.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def group_name(self, interval_s: float) -> str:
        """The alert group's name, for the phase LAG after the layer's group, from where Prometheus's
        rules API says the two files lie (and the alert file beside the layer's before it has one).

        GROUP for vmalert (which starts groups at its own phases) and where the layer's group is not
        loaded; the name of the group installed now where Prometheus does not answer.
        """
        if self.dialect == "vmalert":
            return GROUP
        groups = self._rule_groups()
        if groups is None:
            return self._installed_group()
        layer = next((g for g in groups if g["name"] == LAYER_GROUP), None)
        if layer is None:
            return GROUP
        ours = next((g["file"] for g in groups if is_alert_group(g["name"])), None)
        rule_file = ours or str(PurePosixPath(layer["file"]).with_name(self.rules_path.name))
        after = (group_phase.offset_s(layer["file"], LAYER_GROUP, layer["interval"]), layer["interval"])
        return group_phase.name_lagging(rule_file, GROUP, interval_s, after, LAG)

    def _rule_groups(self, **fields: str) -> list[dict] | None:
        """The evaluator's rule groups (its rules API, ``fields`` as parameters); None where it does not answer."""
        try:
            r = self._http.request("GET", f"{self.rules_url.rstrip('/')}/api/v1/rules", fields=fields)
            return orjson.loads(r.data)["data"]["groups"] if r.status == 200 else None
        except (urllib3.exceptions.HTTPError, orjson.JSONDecodeError, KeyError):
            return None

    def _installed_group(self) -> str:
        try:
            groups = yaml.safe_load(self.rules_path.read_text())["groups"]
        except (OSError, yaml.YAMLError, KeyError, TypeError):
            return GROUP
        return next((g["name"] for g in groups if is_alert_group(g.get("name", ""))), GROUP)

    def templates_path(self, templates_text: str) -> Path:
        """Where the notification templates ``templates_text`` go: named by content, beside the config."""
        return self.alertmanager_path.parent / "templates" / templates_name(templates_text)

    def deploy(
        self, rules_text: str, alertmanager_text: str, revision: str, rule_count: int, templates_text: str = ""
    ) -> None:
        """Check, install, reload and confirm; call inside ``locked()``.

        ``templates_text`` goes to ``templates_path(templates_text)``, which the config
        names: a new file beside the live one, so amtool checks the config with it and
        the config in force never points at templates it was not checked with.

        Raises:
            DeployFailed: nothing installed (400: a check refused it; 503: a service did not reload).
        """
        templates = self.templates_path(templates_text) if templates_text else None
        if templates is not None and not templates.exists():
            templates.parent.mkdir(parents=True, exist_ok=True)
            _write_private(templates.with_name(f".{templates.name}.staged"), templates_text.encode())
            os.replace(templates.with_name(f".{templates.name}.staged"), templates)
        rules_tmp = self._stage(self.rules_path, rules_text)
        alertmanager_tmp = self._stage(self.alertmanager_path, alertmanager_text)
        staged = [
            (rules_tmp, self.rules_path, self._rules_check(rules_tmp)),
            (alertmanager_tmp, self.alertmanager_path, [self.amtool, "check-config", str(alertmanager_tmp)]),
        ]
        try:
            for tmp, _, check in staged:
                self._check(check, tmp)
        except DeployFailed:
            for tmp, _, _ in staged:
                tmp.unlink(missing_ok=True)
            raise
        previous = {target: target.read_bytes() if target.exists() else None for _, target, _ in staged}
        for tmp, target, _ in staged:
            os.replace(tmp, target)
        try:
            for url in self.reload_urls:
                self._reload(url, self._evaluator)
            self._reload(self.alertmanager_url, "Alertmanager")
            self._confirm(revision, rule_count)
        except DeployFailed:
            self._restore(previous)
            raise
        if templates is not None:  # the previous config's templates are needed no more
            for old in templates.parent.glob("fleetwatch-*.tmpl"):
                if old != templates:
                    old.unlink(missing_ok=True)

    def _stage(self, target: Path, text: str) -> Path:
        # Beside the target (same filesystem, so the rename is atomic) and not
        # matching Prometheus's rules/*.yml glob while it is unchecked.
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.staged")
        _write_private(tmp, text.encode())
        return tmp

    def _check(self, argv: list[str], staged: Path) -> None:
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise DeployFailed(f"{Path(argv[0]).name} could not run: {exc}", {"command": argv[:2]}) from None
        if done.returncode != 0:
            output = (done.stdout + done.stderr).replace(str(staged.parent) + "/", "")
            raise DeployFailed(
                f"{Path(argv[0]).name} refused the generated file", {"output": output.strip()[-2000:]}, status=400
            )

    def _reload(self, url: str, name: str) -> None:
        try:
            r = self._http.request("POST", f"{url.rstrip('/')}/-/reload")
        except urllib3.exceptions.HTTPError as exc:
            raise DeployFailed(f"{name} does not answer", {"url": url, "reason": exc.__class__.__name__}) from None
        if r.status != 200:
            raise DeployFailed(
                f"{name} did not reload", {"url": url, "status": r.status, "body": r.data[:500].decode()}
            )

    def _confirm(self, revision: str, rule_count: int) -> None:
        """Wait until the evaluator's rules API reports exactly the installed group at ``revision``."""
        deadline = time.monotonic() + self.timeout_s
        seen = None
        while time.monotonic() < deadline:
            groups = self._rule_groups(type="alert")
            if groups is not None:
                ours = [g for g in groups if is_alert_group(g["name"])]
                rules = ours[0]["rules"] if ours else []
                seen = {rule.get("annotations", {}).get("fleet_revision") for rule in rules}
                if len(rules) == rule_count and (rule_count == 0 or seen == {revision}):
                    return
            time.sleep(0.05)
        raise DeployFailed(
            f"{self._evaluator} did not take the new rules", {"expected": revision, "seen": sorted(seen or [])}
        )

    def _restore(self, previous: dict[Path, bytes | None]) -> None:
        for target, content in previous.items():
            if content is None:
                target.unlink(missing_ok=True)
            else:
                tmp = target.with_name(f".{target.name}.restore")
                _write_private(tmp, content)
                os.replace(tmp, target)
        for url in (*self.reload_urls, self.alertmanager_url):
            try:
                self._http.request("POST", f"{url.rstrip('/')}/-/reload")
            except urllib3.exceptions.HTTPError:
                pass  # it is down: it reads the restored files when it starts


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to a file only its owner can read: the Alertmanager config holds SMTP and webhook secrets."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
