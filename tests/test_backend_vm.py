"""VictoriaMetrics as the backend, where it differs from Prometheus: vmalert's dialect, what runs, replicas on it.

The API tests that hold on both backends are tests/test_backends.py's. Here:
the alert rules in vmalert's dialect pass its dry run and a file it refuses is
a 400; `fleetwatch up --backend victoriametrics` renders configs vmagent takes;
and one stack of `fleetwatch up --backend victoriametrics --gateways 2` (two
gateway replicas behind HAProxy on PostgreSQL) runs no Prometheus, has
vmalert evaluate the same rule files, and takes a rule written through the
load balancer live into vmalert, served by both replicas.
"""

from __future__ import annotations

import socket
import subprocess

import pytest
import requests
import yaml

from fleetwatch.cli import build_parser
from fleetwatch.stack import Ports, Stack, StackConfig, build_services, find_binary, render_configs
from fleetwatch.testing.api import api_session
from fleetwatch.testing.prom import PromClient
from fleetwatch.testing.stack import shared_state_dir, stack_config
from fleetwatch.testing.waits import free_port, wait_until
from rules_compiler.alerts import AlertRule, parse_expression, parse_scope, render_alert_rules
from rules_compiler.deploy import AlertDeployer, DeployFailed
from rules_compiler.recording import SUMMARY_GROUP

HOST = socket.gethostname()  # the stack's own exporter, scraped by vmagent
VM_SERVICES = ["longterm", "prometheus", "vmagent", "alertmanager", "vmalert", "exporter"]


@pytest.fixture(scope="module")
def vm_stack():
    """`fleetwatch up --backend victoriametrics --gateways 2`; its state where the postgres user can reach it."""
    with shared_state_dir("fleetwatch-vm-replicas-") as state:
        with Stack(stack_config(state, backend="victoriametrics", gateways=2)) as stack:
            yield stack


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
    assert list(by_name) == [*VM_SERVICES, "gateway"]
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
    assert names == ["postgres", *VM_SERVICES, "gateway-1", "gateway-2", "haproxy"]
    assert all("victoria-metrics" in s.argv[0] for s in vm_stack.services[1:3])
    groups = requests.get(f"{vm_stack.urls()['vmalert']}/api/v1/rules", timeout=10).json()["data"]["groups"]
    files = {g["file"].rsplit("/", 1)[-1] for g in groups}
    assert {"fleet-normalisation.yml", "fleet-downsampling.yml", "fleet-alerts.yml"} <= files
    assert SUMMARY_GROUP in {g["name"] for g in groups}  # the summary's rules timed apart from the layer's
    assert not [r["name"] for g in groups for r in g["rules"] if r.get("lastError")]
    PromClient(vm_stack.urls()["prometheus"]).wait_for('up{job="vmalert"} == 1')
    # The alert rules file in vmalert's dialect: no keep_firing_for, the hold-down in the expression.
    alerts = next(g for g in groups if g["name"] == "fleet-alerts")["rules"]
    assert alerts and all(r["query"].startswith("last_over_time((") for r in alerts)
    assert "keep_firing_for" not in (vm_stack.config.state_dir / "rules" / "fleet-alerts.yml").read_text()


def vmalert_rules(stack: Stack) -> set[str]:
    """The alert names vmalert evaluates now (the rules' ids)."""
    r = requests.get(f"{stack.urls()['vmalert']}/api/v1/rules", timeout=10)
    groups = r.json()["data"]["groups"]
    return {rule["name"] for group in groups for rule in group["rules"] if rule["type"] == "alerting"}


def test_with_two_replicas_a_rule_written_through_the_balancer_is_live_in_vmalert_and_served_by_both(vm_stack):
    urls = vm_stack.urls()
    proxy, replicas = urls["gateway"], [urls["gateway-1"], urls["gateway-2"]]
    rule = {"name": "Through the balancer", "expression": "cpu.utilization > 99", "duration": "1m"}
    r = api_session(proxy).post(f"{proxy}/api/v1/alerts/rules", json=rule, timeout=60)
    assert r.status_code == 201, r.text
    rule_id = r.json()["id"]
    assert rule_id in vmalert_rules(vm_stack)  # answered once vmalert evaluates it
    for base in replicas:
        session = api_session(base)
        assert session.get(f"{base}/api/v1/alerts/rules/{rule_id}", timeout=30).json()["name"] == rule["name"]

        def listed(session=session, base=base):
            hosts = session.get(f"{base}/api/v1/hosts", timeout=30).json()["hosts"]
            return next((h for h in hosts if h["id"] == HOST and h["last_seen_at"]), None)

        assert wait_until(listed, what=f"this machine, seen, in {base}'s host list")["source"] == "local"
    # Deleted through one replica: gone from vmalert, and from the other.
    one, two = (api_session(b) for b in replicas)
    assert one.delete(f"{replicas[0]}/api/v1/alerts/rules/{rule_id}", timeout=60).status_code == 200
    assert rule_id not in vmalert_rules(vm_stack)
    assert two.get(f"{replicas[1]}/api/v1/alerts/rules/{rule_id}", timeout=30).status_code == 404


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
