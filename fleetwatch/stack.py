"""The local stack: configs rendered into a state directory, services started, watched and stopped.

Prometheus, Alertmanager and the exporter run as child processes in their own
sessions, so a Ctrl-C reaches only the supervisor, which then stops them in
reverse order; each child also gets SIGTERM should the supervisor die.
"""

from __future__ import annotations

import ctypes
import functools
import ipaddress
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import jinja2
import psutil
import requests

from rules_compiler.alertmanager import GENERATED_BY_GATEWAY
from rules_compiler.catalog import CATALOG
from rules_compiler.downsampling import SERIES_PATTERN, layer_pattern, render_downsampling_rules
from rules_compiler.promql import seconds
from rules_compiler.recording import rate_window_for, render_normalisation_rules

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
PR_SET_PDEATHSIG = 1
BATCH_NICE = 10  # the downsampler's and the long-term tier's: see Service.nice


class Ports(NamedTuple):
    prometheus: int = 9090
    alertmanager: int = 9093
    exporter: int = 9101
    gateway: int = 8080
    longterm: int = 9091  # the long-term Prometheus (downsampled tier)
    vmagent: int = 8429  # --backend victoriametrics only
    vmalert: int = 8880
    downsampler: int = 9095  # the Prometheus that downsamples the raw tier's normalised layer

    @classmethod
    def from_base(cls, base: int) -> Ports:
        """N, N+1, … in the order documented in the README."""
        return cls(*(base + i for i in range(len(cls._fields))))


@dataclass
class StackConfig:
    state_dir: Path
    ports: Ports = Ports()
    listen_host: str = "127.0.0.1"  # the gateway and the exporter: what faces the network
    # Prometheus (both tiers) and Alertmanager: their APIs have no authentication (anyone who
    # reaches them can /-/quit, write series, silence alerts), so loopback unless asked.
    backend_host: str = "127.0.0.1"
    scrape_interval: str = "5s"
    evaluation_interval: str = "30s"
    out_of_order_window: str = "1h"
    raw_retention: str = "7d"
    longterm_retention: str = "90d"  # the downsampled tier
    exporter_args: list[str] = field(default_factory=list)
    gateway_workers: int = 2
    gateways: int = 1  # 2+: that many behind HAProxy on PostgreSQL (fleetwatch/replicas.py)
    gateway_env: dict[str, str] = field(default_factory=dict)  # FLEETWATCH_* settings beyond the stack's own
    slurm: bool | None = None  # cluster collector + job accounting: on, off, or the exporter's defaults
    config_dir: Path = REPO_ROOT
    backend: str = "prometheus"  # or "victoriametrics" (fleetwatch/victoria.py)
    # Go's GOGC for the raw-tier Prometheus: 100 (Go's default) collects garbage each time the heap
    # grows by what is live; at 10,000 hosts that took about 45 % of Prometheus's CPU and the small
    # rule groups waited for it. 200 halves that work for about 1.8x the memory (docs/benchmarks.md).
    prometheus_gogc: int = 200
    # A fixed heap goal instead (GOGC=off, GOMEMLIMIT): Go collects when the heap reaches it, however
    # small the live heap it marked last. With GOGC a collection that ends at a small live heap sets a
    # low goal, the next comes sooner and they fall inside the small rule groups; at 10,000 hosts
    # 4500 MiB gave one collection a round and every goal in both runs (docs/benchmarks.md, L1 and L2).
    # It must stay well above the live heap (about 170 KiB a host there), or Go collects without pause.
    prometheus_memory_limit_mib: int = 0  # 0: GOGC governs


class ServiceFailed(RuntimeError):
    """A service did not start, or stopped by itself; the message ends with its log."""


@dataclass
class Service:
    name: str
    argv: list[str]
    ready_url: str
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    verify: bool | str = True  # requests' TLS check of ready_url: a CA file for a self-signed one
    nice: int = 0  # batch work yields the CPU to what alerts and answers
    process: subprocess.Popen | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        # Logs name users, hosts and addresses: the owner's only, whatever the umask.
        fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "ab") as out:
            self.process = subprocess.Popen(
                self.argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **self.env},
                start_new_session=True,
                preexec_fn=functools.partial(_child_setup, self.nice),
            )

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        try:
            wait_http(self.ready_url, self.process, timeout_s, self.verify)
        except ServiceFailed as exc:
            raise ServiceFailed(f"{self.name}: {exc}:\n{self.log_tail()}") from None

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop within %.0f s: killed", self.name, timeout_s)
            self.process.kill()
            self.process.wait()

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def wait_http(
    url: str, process: subprocess.Popen | None = None, timeout_s: float = 60.0, verify: bool | str = True
) -> None:
    """Wait until ``url`` answers 200; fail at once if ``process`` exits first.

    Raises:
        ServiceFailed: the process exited, or the URL did not answer in time.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise ServiceFailed(f"exited with {process.returncode} before {url} answered")
        try:
            if requests.get(url, timeout=1, verify=verify).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise ServiceFailed(f"{url} did not answer within {timeout_s:.0f} s")


def _child_setup(nice: int) -> None:
    # Runs in the child between fork and exec: no orphans if the supervisor is killed.
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if nice:
        os.nice(nice)
        _lower_autogroup(nice)


def _lower_autogroup(nice: int) -> None:
    # Each service starts a session of its own, and where the kernel groups tasks by session
    # (sched_autogroup, on by default in Debian's and most distributions' kernels) a task's
    # nice weighs only against its own session: the session competes with the others at
    # nice 0, so os.nice alone leaves the batch service an equal share of a contended core.
    # Raising the session's nice is allowed unprivileged; a kernel without autogroups has no file.
    try:
        with open("/proc/self/autogroup", "w") as autogroup:
            autogroup.write(str(nice))
    except OSError:
        pass


def find_binary(*names: str) -> str:
    """The first of ``names`` on PATH.

    Raises:
        ServiceFailed: none is installed.
    """
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    raise ServiceFailed(
        f"{names[0]} is not installed: `make run` installs Debian's package, or run `apt-get install {names[0]}`"
    )


# Where Debian's Slurm, older packages and slurmd's configless cache keep slurm.conf.
SLURM_CONF_PATHS = ("/etc/slurm/slurm.conf", "/etc/slurm-llnl/slurm.conf", "/run/slurm/conf/slurm.conf")


def slurm_answers(env: dict[str, str] | None = None, timeout_s: float = 5.0) -> tuple[bool, str]:
    """Whether ``sinfo`` answers here (SLURM_CONF from ``env``), and the start-up line that says so."""
    env_ = env if env is not None else os.environ
    if shutil.which("sinfo", path=env_.get("PATH")) is None:
        return False, "off: no sinfo on PATH"
    # Without a configuration file sinfo asks DNS for one (configless Slurm): not on every `fleetwatch up`.
    if not env_.get("SLURM_CONF") and not any(Path(p).exists() for p in SLURM_CONF_PATHS):
        return False, f"off: no Slurm configuration (SLURM_CONF, {SLURM_CONF_PATHS[0]})"
    try:
        # Bounded: without its configuration file sinfo retries for a minute.
        r = subprocess.run(
            ["sinfo", "-h", "-N", "-o", "%N"], env=env, capture_output=True, text=True, timeout=timeout_s
        )
    except subprocess.TimeoutExpired:
        return False, f"off: sinfo did not answer within {timeout_s:g} s"
    if r.returncode != 0:
        said = (r.stderr.strip().splitlines() or [f"exit {r.returncode}"])[-1]
        return False, f"off: {said}"
    nodes = len(set(r.stdout.split()))
    return True, f"on: sinfo answered ({nodes} node{'s' if nodes != 1 else ''}): cluster state and per-job accounting"


def _slurm_flags(slurm: bool | None) -> list[str]:
    return {True: ["--slurm", "--jobs"], False: ["--no-slurm", "--no-jobs"], None: []}[slurm]


def render_configs(config: StackConfig) -> dict[str, Path]:
    """Write every config the stack reads into the state directory; return their paths by name."""
    state = config.state_dir.resolve()
    state.mkdir(mode=0o711, parents=True, exist_ok=True)
    # The gateway's DB, the scrape token and the logs lie here, each 0600: others list nothing, and
    # pass through only to what runs as another user (the replicas' PostgreSQL).
    state.chmod(0o711)
    for sub in (
        "prometheus/data",
        "downsampler/data",
        "longterm/data",
        "alertmanager/data",
        "rules",
        "file_sd",
        "logs",
    ):
        (state / sub).mkdir(parents=True, exist_ok=True)
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(config.config_dir)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )
    interval_s = seconds(config.scrape_interval)
    # Beside the raw tier's rule files, not among them: the raw tier must not evaluate it.
    downsampling_rules = state / "downsampler" / "fleet-downsampling.yml"
    values = {
        "state_dir": str(state),
        "ports": config.ports,
        "gateway_host": reach(config.listen_host),
        "backend_host": reach(config.backend_host),
        "scrape_interval": config.scrape_interval,
        "scrape_timeout": f"{max(1, int(interval_s * 0.8))}s" if interval_s < 10 else "10s",
        "evaluation_interval": config.evaluation_interval,
        "out_of_order_window": config.out_of_order_window,
        "downsampled_series": SERIES_PATTERN,
        "layer_series": layer_pattern(CATALOG),
        "downsampling_rules": str(downsampling_rules),
        "metrics_token_file": str(_metrics_token(state)),
    }
    paths = {
        "prometheus": state / "prometheus" / "prometheus.yml",
        "alertmanager": state / "alertmanager" / "alertmanager.yml",
    }
    for name, path in paths.items():
        if name == "alertmanager" and path.exists() and path.read_text().startswith(GENERATED_BY_GATEWAY):
            continue  # the gateway's compiled routes and receivers; it re-installs them as it starts
        text = env.get_template(f"{name}/{name}.yml.j2").render(values)
        _write_atomic(path, text)
    for name in ("longterm", "downsampler"):
        paths[name] = state / name / f"{name}.yml"
        _write_atomic(paths[name], env.get_template(f"prometheus/{name}.yml.j2").render(values))
    # The catalog's normalisation layer, evaluated at the scrape interval.
    paths["normalisation_rules"] = state / "rules" / "fleet-normalisation.yml"
    _write_atomic(
        paths["normalisation_rules"],
        render_normalisation_rules(
            CATALOG,
            config.scrape_interval,
            rate_window_for(interval_s),
            from_layer=config.backend != "victoriametrics",
        ),
    )
    paths["downsampling_rules"] = downsampling_rules
    _write_atomic(paths["downsampling_rules"], render_downsampling_rules(CATALOG))
    (state / "rules" / "fleet-downsampling.yml").unlink(missing_ok=True)  # where it lay before the downsampler
    # The local exporter is one more target beside the hosts the gateway will add.
    local = [
        {
            "targets": [f"{reach(config.listen_host)}:{config.ports.exporter}"],
            "labels": {"host_id": socket.gethostname()},
        }
    ]
    paths["local_target"] = state / "file_sd" / "local.json"
    _write_atomic(paths["local_target"], json.dumps(local, indent=2) + "\n")
    if config.backend == "victoriametrics":
        from fleetwatch.victoria import render_vm_configs

        paths.update(render_vm_configs(config, paths))
    return paths


def build_services(config: StackConfig, paths: dict[str, Path]) -> list[Service]:
    """The services in start order."""
    state = config.state_dir.resolve()
    host, ports = config.listen_host, config.ports
    backend, near, near_backend = config.backend_host, reach(host), reach(config.backend_host)
    logs = state / "logs"
    services = [
        Service(
            # Receives only the downsampled series, by remote_write from the raw tier. Started
            # first and so stopped last: the raw tier flushes its remote-write queue on the
            # way down, and would wait up to a minute for a receiver already gone.
            "longterm",
            [
                find_binary("prometheus"),
                f"--config.file={paths['longterm']}",
                f"--storage.tsdb.path={state / 'longterm' / 'data'}",
                f"--storage.tsdb.retention.time={config.longterm_retention}",
                f"--web.listen-address={backend}:{ports.longterm}",
                "--web.enable-lifecycle",
                "--web.enable-remote-write-receiver",
            ],
            f"http://{near_backend}:{ports.longterm}/-/ready",
            logs / "longterm.log",
            # It ingests each level in a burst after the downsampler records it (cores for
            # seconds at 10,000 hosts); arriving seconds later costs a long-range query nothing.
            nice=BATCH_NICE,
        ),
        Service(
            # Receives the normalised layer from the raw tier, downsamples it, sends the levels on.
            # Between the two in start order: each sender stops before its receiver.
            "downsampler",
            [
                find_binary("prometheus"),
                f"--config.file={paths['downsampler']}",
                f"--storage.tsdb.path={state / 'downsampler' / 'data'}",
                # The hourly level reads the last hour (and DELAY) of the layer; a block more is slack.
                "--storage.tsdb.retention.time=4h",
                f"--web.listen-address={backend}:{ports.downsampler}",
                "--web.enable-lifecycle",
                "--web.enable-remote-write-receiver",
            ],
            f"http://{near_backend}:{ports.downsampler}/-/ready",
            logs / "downsampler.log",
            # Its evaluations take seconds of a core each minute (13 s every 5 min at 10,000
            # hosts): where cores are short the raw tier's alert rules must not wait for them.
            nice=BATCH_NICE,
        ),
        Service(
            "prometheus",
            [
                find_binary("prometheus"),
                f"--config.file={paths['prometheus']}",
                f"--storage.tsdb.path={state / 'prometheus' / 'data'}",
                f"--storage.tsdb.retention.time={config.raw_retention}",
                f"--web.listen-address={backend}:{ports.prometheus}",
                "--web.enable-lifecycle",
                "--web.enable-remote-write-receiver",
                # Prometheus 2.42 forgets its Alertmanagers for up to 5 s on every reload
                # (prometheus#13064, fixed in 3.x) and drops what it sends meanwhile;
                # each rule change reloads. Resending at every evaluation bounds the loss
                # to one interval instead of the default minute.
                f"--rules.alert.resend-delay={config.evaluation_interval}",
            ],
            f"http://{near_backend}:{ports.prometheus}/-/ready",
            logs / "prometheus.log",
            env=(
                {"GOGC": "off", "GOMEMLIMIT": f"{config.prometheus_memory_limit_mib}MiB"}
                if config.prometheus_memory_limit_mib
                else {"GOGC": str(config.prometheus_gogc)}
            ),
        ),
        Service(
            "alertmanager",
            [
                # Debian names the binary prometheus-alertmanager; upstream, alertmanager.
                find_binary("prometheus-alertmanager", "alertmanager"),
                f"--config.file={paths['alertmanager']}",
                f"--storage.path={state / 'alertmanager' / 'data'}",
                f"--web.listen-address={backend}:{ports.alertmanager}",
                "--cluster.listen-address=",  # one instance: no gossip port to collide with
            ],
            f"http://{near_backend}:{ports.alertmanager}/-/ready",
            logs / "alertmanager.log",
        ),
        Service(
            "exporter",
            [
                sys.executable,
                "-m",
                "exporter.cli",
                f"--listen={host}:{ports.exporter}",
                *_slurm_flags(config.slurm),
                *config.exporter_args,
            ],  # fmt: skip
            f"http://{near}:{ports.exporter}/metrics",
            logs / "exporter.log",
        ),
        Service(
            "gateway",
            [
                sys.executable,
                "-m",
                "gateway.cli",
                "serve",
                f"--bind={host}:{ports.gateway}",
                f"--workers={config.gateway_workers}",
            ],
            f"http://{near}:{ports.gateway}/health",
            logs / "gateway.log",
            env={
                "FLEETWATCH_STATE_DIR": str(state),
                "FLEETWATCH_PROMETHEUS_URL": f"http://{near_backend}:{ports.prometheus}",
                "FLEETWATCH_LONGTERM_URL": f"http://{near_backend}:{ports.longterm}",
                "FLEETWATCH_SCRAPE_INTERVAL": str(max(1, round(seconds(config.scrape_interval)))),
                "FLEETWATCH_RAW_RETENTION": config.raw_retention,
                "FLEETWATCH_LONGTERM_RETENTION": config.longterm_retention,
                "FLEETWATCH_ALERTMANAGER_URL": f"http://{near_backend}:{ports.alertmanager}",
                "FLEETWATCH_GATEWAY_URL": f"http://{near}:{ports.gateway}",
                "FLEETWATCH_ALERT_EVALUATION_INTERVAL_S": str(max(1, round(seconds(config.evaluation_interval)))),
                "FLEETWATCH_METRICS_TOKEN_FILE": str(_metrics_token(state)),
                "FLEETWATCH_PROMTOOL": find_binary("promtool"),
                "FLEETWATCH_AMTOOL": find_binary("amtool"),
                **config.gateway_env,
            },
        ),
    ]
    if config.backend == "victoriametrics":
        from fleetwatch.victoria import vm_services

        services = vm_services(config, paths, services)
    if config.gateways > 1:
        from fleetwatch.replicas import Layout, replicated

        services = replicated(services, Layout(host, ports.gateway, config.gateways), state)
    return services


class Stack:
    """Starts the services in order and stops them in reverse; usable as a context manager."""

    def __init__(self, config: StackConfig):
        self.config = config
        self.paths = render_configs(config)
        self.services = build_services(config, self.paths)

    def start(self) -> Stack:
        try:
            for service in self.services:
                if service.name.startswith("gateway"):
                    # What the exporter found, now that it runs: the gateway adds this host on its first start.
                    service.env["FLEETWATCH_LOCAL_HOST"] = json.dumps(self.local_host())
                service.start()
                service.wait_ready()
                log.info("%s ready (pid %d)", service.name, service.process.pid)
        except BaseException:
            self.stop()
            raise
        return self

    def local_host(self) -> dict:
        """This machine as a host of the inventory: the host_id its exporter is scraped under (local.json)."""
        exporter = f"{self.config.listen_host}:{self.config.ports.exporter}"
        try:
            text = requests.get(f"http://{exporter}/metrics", timeout=5).text
        except requests.RequestException:
            text = ""
        gpus = re.search(r"^fleet_gpu_devices (\S+)$", text, re.MULTILINE)
        return {
            "id": socket.gethostname(),
            "hostname": socket.gethostname(),
            "ips": _addresses(),
            "has_gpu": bool(gpus and float(gpus.group(1)) > 0),
            "exporter": exporter,
        }

    def stop(self) -> None:
        for service in reversed(self.services):
            service.stop()

    def exited(self) -> Service | None:
        """The first service that stopped by itself, if any."""
        return next((s for s in self.services if s.process and s.process.poll() is not None), None)

    def urls(self) -> dict[str, str]:
        host, ports, backend = reach(self.config.listen_host), self.config.ports, reach(self.config.backend_host)
        return {
            "prometheus": f"http://{backend}:{ports.prometheus}",
            "longterm": f"http://{backend}:{ports.longterm}",
            **({"downsampler": f"http://{backend}:{ports.downsampler}"} if self.config.backend == "prometheus" else {}),
            "alertmanager": f"http://{backend}:{ports.alertmanager}",
            "exporter": f"http://{host}:{ports.exporter}/metrics",
            "gateway": f"http://{host}:{ports.gateway}",
            "api docs": f"http://{host}:{ports.gateway}/api/docs",
            # With --gateways N: the replicas behind HAProxy and their PostgreSQL.
            **{
                s.name: s.ready_url.removesuffix("/health")
                for s in self.services
                if s.name.startswith(("gateway-", "postgres"))
            },
            **(
                {"vmagent": f"http://{host}:{ports.vmagent}", "vmalert": f"http://{host}:{ports.vmalert}"}
                if self.config.backend == "victoriametrics"
                else {}
            ),
        }

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def reach(bind: str) -> str:
    """The address to connect to a service bound to ``bind``: loopback for a wildcard bind."""
    return {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "[::1]"}.get(bind, bind)


def _metrics_token(state: Path) -> Path:
    """The gateway's scrape token, made once: Prometheus sends it, the gateway's /metrics wants it."""
    from gateway.db import secret_file

    path = state / "secrets" / "metrics-token"
    secret_file(path)
    return path


def _addresses() -> list[str]:
    """This machine's addresses, loopback and link-local left out."""
    found = []
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family not in (socket.AF_INET, socket.AF_INET6):
                continue
            ip = ipaddress.ip_address(a.address.split("%")[0])
            if not (ip.is_loopback or ip.is_link_local) and str(ip) not in found:
                found.append(str(ip))
    return found[:64]


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
