"""VictoriaMetrics as the stack's storage (`fleetwatch up --backend victoriametrics`, docs/backends.md).

Same roles as the Prometheus stack, other engines: a raw VictoriaMetrics and a
long-term one on the Prometheus ports, vmagent scraping the same targets
(file_sd) and fanning out what it receives (the long-term tier gets only the
downsampled series, as Prometheus's remote_write relabelling does), and one
vmalert evaluating the same rule files and writing its results through vmagent.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from fleetwatch.stack import Service, StackConfig, _write_atomic, find_binary
from rules_compiler.downsampling import SERIES_PATTERN
from rules_compiler.promql import seconds

BACKENDS = ("prometheus", "victoriametrics")
MAX_QUERY_BYTES = 1 << 20


def render_vm_configs(config: StackConfig, paths: dict[str, Path]) -> dict[str, Path]:
    """vmagent's scrape config (Prometheus's, as VictoriaMetrics reads it) and the long-term tier's filter."""
    state = config.state_dir.resolve()
    prom = yaml.safe_load(paths["prometheus"].read_text())
    host, ports = config.listen_host, config.ports
    # vmalert's own metrics too: a group over its `limit` shows only there (vmalert_execution_errors_total).
    jobs = prom["scrape_configs"] + [
        {"job_name": name, "static_configs": [{"targets": [f"{host}:{port}"]}]}
        for name, port in (("vmagent", ports.vmagent), ("vmalert", ports.vmalert))
    ]
    for job in jobs:
        for sd in job.get("file_sd_configs", ()):
            sd.pop("refresh_interval", None)  # refused: -promscrape.fileSDCheckInterval instead
    scrape = {"global": {k: prom["global"][k] for k in ("scrape_interval", "scrape_timeout")}, "scrape_configs": jobs}
    out = {"vmagent": state / "vm" / "scrape.yml"}
    out["vmagent"].parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(out["vmagent"], yaml.safe_dump(scrape, sort_keys=False))
    # The downsampled series to the long-term tier only, as the Prometheus stack sends them: the gateway
    # reads every level there, and in the raw tier they were 1.4 million series at 10,000 hosts that
    # nothing read.
    for tier, action in (("raw", "drop"), ("longterm", "keep")):
        out[f"vm_{tier}_filter"] = state / "vm" / f"{tier}-filter.yml"
        only = [{"source_labels": ["__name__"], "regex": SERIES_PATTERN, "action": action}]
        _write_atomic(out[f"vm_{tier}_filter"], yaml.safe_dump(only, sort_keys=False))
    # A rule file left by a Prometheus run: vmalert refuses keep_firing_for at start-up, and the
    # gateway writes the file again in vmalert's dialect from its database as it starts.
    alerts = state / "rules" / "fleet-alerts.yml"
    if alerts.exists() and "keep_firing_for" in alerts.read_text():
        alerts.unlink()
    return out


def vm_services(config: StackConfig, paths: dict[str, Path], services: list[Service]) -> list[Service]:
    """``services`` with Prometheus and its long-term tier replaced by VictoriaMetrics, vmagent and vmalert."""
    state = config.state_dir.resolve()
    host, ports = config.listen_host, config.ports
    logs = state / "logs"
    raw, longterm = f"http://{host}:{ports.prometheus}", f"http://{host}:{ports.longterm}"
    agent, alert = f"http://{host}:{ports.vmagent}", f"http://{host}:{ports.vmalert}"
    interval_s = max(1, round(seconds(config.scrape_interval)))

    def victoria(name: str, port: int, retention: str) -> Service:
        return Service(
            name,
            [
                find_binary("victoria-metrics"),
                f"-httpListenAddr={host}:{port}",
                f"-storageDataPath={state / name / 'vm-data'}",
                f"-retentionPeriod={retention}",
                # New samples visible at once, not 30 s later (vmalert's queries and the API's).
                "-search.latencyOffset=0s",
                # A stopped series ends 5 min later, as in Prometheus, not one step later.
                "-search.minStalenessInterval=5m",
                # A page of the host list names its hosts in each query: 1,000 ids of up to 64
                # characters, escaped, pass the default 16 KiB (a page of 50 with GPU checks did).
                f"-search.maxQueryLen={MAX_QUERY_BYTES}",
                "-loggerLevel=WARN",
            ],
            f"http://{host}:{port}/health",
            logs / f"{name}.log",
        )

    vm = [
        victoria("longterm", ports.longterm, config.longterm_retention),
        victoria("prometheus", ports.prometheus, config.raw_retention),
        Service(
            "vmagent",
            [
                find_binary("vmagent"),
                f"-httpListenAddr={host}:{ports.vmagent}",
                f"-promscrape.config={paths['vmagent']}",
                f"-promscrape.fileSDCheckInterval={min(5, interval_s)}s",
                f"-remoteWrite.url={raw}/api/v1/write",
                f"-remoteWrite.url={longterm}/api/v1/write",
                f"-remoteWrite.urlRelabelConfig={paths['vm_raw_filter']},{paths['vm_longterm_filter']}",
                f"-remoteWrite.tmpDataPath={state / 'vmagent' / 'queue'}",
                "-loggerLevel=WARN",
            ],
            f"{agent}/health",
            logs / "vmagent.log",
        ),
        Service(
            "vmalert",
            [
                find_binary("vmalert"),
                f"-httpListenAddr={host}:{ports.vmalert}",
                f"-rule={state / 'rules' / '*.yml'}",
                f"-rule={paths['downsampling_rules']}",
                f"-evaluationInterval={config.evaluation_interval}",
                f"-datasource.url={raw}",
                f"-remoteWrite.url={agent}",  # through vmagent: the downsampled series reach both tiers
                f"-remoteRead.url={raw}",
                f"-notifier.url=http://{host}:{ports.alertmanager}",
                # Firing alerts are re-sent at every evaluation, as the Prometheus stack's resend delay.
                f"-rule.resendDelay={config.evaluation_interval}",
                "-loggerLevel=WARN",
            ],
            f"{alert}/health",
            logs / "vmalert.log",
        ),
    ]
    others = [s for s in services if s.name not in ("prometheus", "downsampler", "longterm")]
    gateway = next(s for s in others if s.name == "gateway")
    gateway.env.update(
        FLEETWATCH_REMOTE_WRITE_URL=f"{raw}/api/v1/write",
        FLEETWATCH_RULES_DIALECT="vmalert",
        FLEETWATCH_VMALERT=find_binary("vmalert"),
        FLEETWATCH_RULES_URL=alert,
        FLEETWATCH_RELOAD_URLS=alert,
    )
    gateway.env.update(config.gateway_env)  # the caller's settings still win
    # vmalert needs Alertmanager's address only to send; it starts after the stores and before the gateway.
    at = next(i for i, s in enumerate(others) if s.name == "alertmanager")
    return [*vm[:3], *others[: at + 1], vm[3], *others[at + 1 :]]
