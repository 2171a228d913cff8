"""The API on VictoriaMetrics (`fleetwatch up --backend victoriametrics`): hosts, queries, ingest, alerts, tiers.

One stack for the module, started by the stack's own code: raw and long-term
VictoriaMetrics, vmagent scraping our exporter, vmalert evaluating the same
rule files, Alertmanager, the gateway. The gateway reads both tiers through
the path prefix VictoriaMetrics also serves (/prometheus), as a cluster's
vmselect would be read (/select/0/prometheus).
"""

from __future__ import annotations

import socket
import subprocess
import time

import pytest
import requests
import yaml

from fleetwatch.cli import build_parser
from fleetwatch.stack import Ports, Stack, StackConfig, build_services, find_binary, render_configs
from fleetwatch.testing.api import ADMIN, api_key, api_session
from fleetwatch.testing.prom import PromClient
from fleetwatch.testing.waits import free_port, wait_until
from gateway.remote_write import RemoteWriter, encode_labels, encode_sample, encode_series
from rules_compiler.alerts import AlertRule, parse_expression, parse_scope, render_alert_rules
from rules_compiler.deploy import AlertDeployer, DeployFailed
from rules_compiler.downsampling import is_downsampled

HOST = socket.gethostname()  # the stack's own exporter, scraped by vmagent


@pytest.fixture(scope="module")
def vm_stack(tmp_path_factory):
    ports = Ports(*(free_port() for _ in range(7)))
    config = StackConfig(
        state_dir=tmp_path_factory.mktemp("vm-state"),
        ports=ports,
        scrape_interval="1s",
        evaluation_interval="1s",
        backend="victoriametrics",
        exporter_args=["--process-interval=1", "--gpu-interval=1"],
        gateway_env={
            "FLEETWATCH_ADMIN_EMAIL": ADMIN[0],
            "FLEETWATCH_ADMIN_PASSWORD": ADMIN[1],
            "FLEETWATCH_BCRYPT_ROUNDS": "4",
            "FLEETWATCH_RATE_LIMIT_READS_PER_MIN": "100000",
            "FLEETWATCH_RATE_LIMIT_WRITES_PER_MIN": "100000",
            "FLEETWATCH_PROMETHEUS_URL": f"http://127.0.0.1:{ports.prometheus}/prometheus",
            "FLEETWATCH_LONGTERM_URL": f"http://127.0.0.1:{ports.longterm}/prometheus",
            "FLEETWATCH_ALERT_GROUP_WAIT": "1s",
            "FLEETWATCH_ALERT_GROUP_INTERVAL": "1s",
            "FLEETWATCH_ALERT_EVENTS_GROUP_INTERVAL": "1s",
        },
    )
    with Stack(config) as stack:
        yield stack


@pytest.fixture(scope="module")
def api(vm_stack):
    return api_session(vm_stack.urls()["gateway"])


@pytest.fixture(scope="module")
def raw(vm_stack) -> PromClient:
    return PromClient(vm_stack.urls()["prometheus"])


def test_starter_and_hostile_rules_in_vmalerts_dialect_pass_its_dry_run(tmp_path):
    from tests.test_alerting import NASTY, _starter_rules

    hostile = AlertRule(
        "rule-900", NASTY, parse_expression("cpu.utilization > 1"), 60, parse_scope({"tags": {"role": 'we"b}\n'}}), ()
    )
    rules = [*_starter_rules(), hostile]
    prometheus = yaml.safe_load(render_alert_rules(rules, 30, "r1"))["groups"][0]["rules"]
    path = tmp_path / "alerts.yml"
    path.write_text(render_alert_rules(rules, 30, "r1", dialect="vmalert"))
    done = subprocess.run([find_binary("vmalert"), "-dryRun", f"-rule={path}"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    vm = yaml.safe_load(path.read_text())["groups"][0]["rules"]
    # Everything but the hold-down is the same rule: keep_firing_for: 60s becomes a 60 s subquery at 30 s.
    for p, v in zip(prometheus, vm, strict=True):
        assert p.pop("keep_firing_for") == "60s" and "keep_firing_for" not in v
        assert v.pop("expr") == f"last_over_time(({p.pop('expr')})[60s:30s])"
        assert p == v
    with pytest.raises(ValueError, match="dialect"):
        render_alert_rules(rules, 30, "r1", dialect="mimir")


def test_up_with_victoriametrics_renders_configs_vmagent_accepts(tmp_path):
    args = build_parser().parse_args(["up", "--backend", "victoriametrics", "--base-port", "19090"])
    assert args.backend == "victoriametrics"
    config = StackConfig(state_dir=tmp_path, ports=Ports.from_base(args.base_port), backend=args.backend)
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "fleet-alerts.yml").write_text(
        "groups:\n- {name: x, rules: [{alert: a, expr: up, keep_firing_for: 1m}]}\n"
    )
    paths = render_configs(config)
    assert not (tmp_path / "rules" / "fleet-alerts.yml").exists()  # a Prometheus run's file: vmalert would not start
    by_name = {s.name: s for s in build_services(config, paths)}
    assert list(by_name) == ["longterm", "prometheus", "vmagent", "alertmanager", "vmalert", "exporter", "gateway"]
    assert "-httpListenAddr=127.0.0.1:19095" in by_name["vmagent"].argv
    assert "-httpListenAddr=127.0.0.1:19096" in by_name["vmalert"].argv
    env = by_name["gateway"].env
    assert env["FLEETWATCH_RULES_DIALECT"] == "vmalert"
    assert env["FLEETWATCH_RELOAD_URLS"] == env["FLEETWATCH_RULES_URL"] == "http://127.0.0.1:19096"
    assert env["FLEETWATCH_REMOTE_WRITE_URL"] == "http://127.0.0.1:19090/api/v1/write"
    done = subprocess.run(
        [find_binary("vmagent"), "-dryRun", f"-promscrape.config={paths['vmagent']}"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    jobs = {j["job_name"] for j in yaml.safe_load(paths["vmagent"].read_text())["scrape_configs"]}
    assert {"fleetwatch", "fleetwatch-gateway", "vmagent", "vmalert"} <= jobs


def test_no_prometheus_runs_and_vmalert_evaluates_the_same_rule_files(vm_stack):
    names = [s.name for s in vm_stack.services]
    assert names == ["longterm", "prometheus", "vmagent", "alertmanager", "vmalert", "exporter", "gateway"]
    assert all("victoria-metrics" in s.argv[0] for s in vm_stack.services[:2])
    groups = requests.get(f"{vm_stack.urls()['vmalert']}/api/v1/rules", timeout=10).json()["data"]["groups"]
    files = {g["file"].rsplit("/", 1)[-1] for g in groups}
    assert {"fleet-normalisation.yml", "fleet-downsampling.yml", "fleet-alerts.yml"} <= files
    assert not [r["name"] for g in groups for r in g["rules"] if r.get("lastError")]
    PromClient(vm_stack.urls()["prometheus"]).wait_for('up{job="vmalert"} == 1')
    # The alert rules file in vmalert's dialect: no keep_firing_for, the hold-down in the expression.
    alerts = next(g for g in groups if g["name"] == "fleet-alerts")["rules"]
    assert alerts and all(r["query"].startswith("last_over_time((") for r in alerts)
    assert "keep_firing_for" not in (vm_stack.config.state_dir / "rules" / "fleet-alerts.yml").read_text()


def test_hosts_list_the_scraped_host_with_its_status(api, raw):
    raw.wait_for(f'fleet:cpu_utilization{{host_id="{HOST}"}}')
    body = wait_until(
        lambda: (
            (b := api.get(f"{api.base}/api/v1/hosts", timeout=10).json())["hosts"]
            and next(h for h in b["hosts"] if h["id"] == HOST)["status"] == "ok"
            and b
        ),
        what="the local host ok",
    )
    mine = next(h for h in body["hosts"] if h["id"] == HOST)
    assert mine["status"] == "ok", mine
    # Readiness through the /prometheus prefix, which has no /-/ready of its own.
    ready = requests.get(f"{api.base}/ready", timeout=10)
    assert ready.status_code == 200 and ready.json()["prometheus"] == "ok", ready.text


@pytest.fixture(scope="module")
def history(vm_stack, api, tmp_path_factory) -> str:
    """Two hours of a host's CPU written into the raw tier, and the downsampling rules replayed over them.

    vmalert evaluates a group first at a random point of its interval (up to an
    hour for 1h): a test cannot wait for that, so the same rule file's groups are
    replayed (`vmalert -replay.*`, as docs/backends.md backfills), their results
    written through the stack's vmagent like the live ones.
    """
    urls, host = vm_stack.urls(), "vm-history"
    push(api, host, 55.0, 1)  # an agent's first push puts the host in the inventory
    now = int(time.time())
    start = now - 2 * 3600
    samples = [encode_sample(50.0 + (t % 600) / 60, t * 1000) for t in range(start, now - 30, 15)]
    labels = encode_labels([("__name__", "fleet:cpu_utilization"), ("host_id", host)])
    RemoteWriter(f"{urls['prometheus']}/api/v1/write").write([encode_series(labels, samples)])
    requests.get(f"{urls['prometheus']}/internal/force_flush", timeout=10)
    groups = yaml.safe_load(vm_stack.paths["downsampling_rules"].read_text())["groups"]
    iso = "%Y-%m-%dT%H:%M:%SZ"
    for group in groups:
        group["rules"] = [r for r in group["rules"] if r["record"].startswith("fleet:cpu_utilization:")]
        replayed = tmp_path_factory.mktemp("replay") / f"{group['name']}.yml"
        replayed.write_text(yaml.safe_dump({"groups": [group]}))
        done = subprocess.run(
            [
                find_binary("vmalert"),
                f"-rule={replayed}",
                f"-datasource.url={urls['prometheus']}",
                # vmalert 1.79 steps its replay queries by this, not by the group's interval.
                f"-datasource.queryStep={group['interval']}",
                f"-remoteWrite.url={urls['vmagent']}",
                f"-replay.timeFrom={time.strftime(iso, time.gmtime(start))}",
                f"-replay.timeTo={time.strftime(iso, time.gmtime(now))}",
                "-replay.rulesDelay=0s",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr[-2000:]
    return host


@pytest.mark.parametrize(
    ("range_", "resolution", "tier", "at_least"),
    [
        ("1h", "raw", "raw", 200),
        ("1h", "1m", "raw", 55),
        ("24h", "5m", "raw", 20),
        ("24h", "1h", "raw", 2),
        ("30d", "1h", "longterm", 2),
    ],
)
def test_metric_query_at_every_resolution(api, history, range_, resolution, tier, at_least):
    def answer():
        r = api.get(
            f"{api.base}/api/v1/metrics/query",
            params={"host_id": history, "metric": "cpu.utilization", "range": range_, "resolution": resolution},
            timeout=10,
        )
        assert r.status_code == 200, r.text
        return r.json() if len(r.json()["datapoints"]) >= at_least else None

    body = wait_until(answer, what=f"{at_least} {resolution} points over {range_} from the {tier} tier", timeout_s=20)
    assert body["resolution"] == ("1s" if resolution == "raw" else resolution)  # raw: the 1 s scrape interval
    assert all(50 <= p["value"] <= 60 and p["ts"].endswith("Z") for p in body["datapoints"])


def push(api, host_id: str, value: float, count: int = 3) -> None:
    """``count`` points of cpu.utilization for ``host_id``, a second apart up to now, through the gateway."""
    if not hasattr(api, "agent_key"):
        api.agent_key = api_key(api)
    now = time.time()
    iso = "%Y-%m-%dT%H:%M:%SZ"
    points = [
        {"metric": "cpu.utilization", "value": value, "ts": time.strftime(iso, time.gmtime(now - count + 1 + i))}
        for i in range(count)
    ]
    r = requests.post(
        f"{api.base}/api/v1/ingest/metrics",
        json={"host_id": host_id, "metrics": points},
        headers={"Authorization": f"Bearer {api.agent_key}"},
        timeout=10,
    )
    assert r.status_code == 200 and r.json()["accepted"] == count, r.text


def test_pushed_points_are_stored_and_queryable(api, raw):
    push(api, "vm-pushed", 42.5)
    found = raw.wait_for('fleet:cpu_utilization{host_id="vm-pushed"}')
    assert float(found[0]["value"][1]) == 42.5
    r = api.get(
        f"{api.base}/api/v1/metrics/query",
        params={"host_id": "vm-pushed", "metric": "cpu.utilization", "range": "15m"},
        timeout=10,
    )
    assert r.status_code == 200 and 42.5 in {p["value"] for p in r.json()["datapoints"]}, r.text


def test_rule_fires_and_resolves(api):
    created = api.post(
        f"{api.base}/api/v1/alerts/rules",
        json={
            "name": "VM hot",
            "expression": "cpu.utilization > 90",
            "duration": "static",
            "scope": {"hosts": "vm-hot"},
            "severity": "warning",
        },
        timeout=30,
    )
    assert created.status_code == 201, created.text
    rule_id = created.json()["id"]

    def events(state):
        r = api.get(f"{api.base}/api/v1/alerts/events", params={"rule_id": rule_id, "state": state}, timeout=10)
        return [e for e in r.json()["alerts"] if e["host_id"] == "vm-hot"]

    def hot():
        push(api, "vm-hot", 99.0, 1)
        return events("firing")

    firing = wait_until(hot, what="a firing event", timeout_s=40, interval_s=1.0)
    assert firing[0]["rule_name"] == "VM hot"

    def cool():
        push(api, "vm-hot", 5.0, 1)
        return events("resolved")

    wait_until(cool, what="a resolved event", timeout_s=40, interval_s=1.0)


def test_long_term_tier_holds_only_downsampled_series(vm_stack, history):
    longterm = PromClient(vm_stack.urls()["longterm"])
    longterm.wait_for(f'fleet:cpu_utilization:avg1h{{host_id="{history}"}}')
    names = longterm.query('count by (__name__) ({__name__=~".+"})')
    assert names and all(is_downsampled(s["metric"]["__name__"]) for s in names), names
    assert longterm.query(f'fleet:cpu_utilization{{host_id="{history}"}}') == []


def test_a_file_vmalert_refuses_is_a_400_and_the_live_file_stays(tmp_path):
    rules = tmp_path / "rules" / "fleet-alerts.yml"
    rules.parent.mkdir()
    rules.write_text("groups: []\n")
    nobody = f"http://127.0.0.1:{free_port()}"  # nothing is reloaded: the check comes first
    deployer = AlertDeployer(
        rules, tmp_path / "am" / "alertmanager.yml", nobody, nobody, dialect="vmalert", vmalert=find_binary("vmalert")
    )
    refused = "groups:\n- name: fleet-alerts\n  rules:\n  - {alert: a, expr: up == 0, keep_firing_for: 1m}\n"
    with pytest.raises(DeployFailed) as failed:
        deployer.deploy(refused, "route: {receiver: x}\nreceivers: [{name: x}]\n", "r1", 1)
    assert failed.value.status == 400 and failed.value.message == "vmalert refused the generated file"
    assert "keep_firing_for" in failed.value.details["output"]
    assert rules.read_text() == "groups: []\n" and sorted(p.name for p in rules.parent.iterdir()) == [rules.name]
