"""The API on each storage backend (`fleetwatch up --backend prometheus|victoriametrics`): the same tests on both.

One stack per backend, started by the stack's own code: on Prometheus a raw
and a long-term Prometheus; on VictoriaMetrics a raw and a long-term
VictoriaMetrics, vmagent scraping our exporter and vmalert evaluating the
same rule files, the gateway reading both tiers through the path prefix
VictoriaMetrics also serves (/prometheus), as a cluster's vmselect would be
read (/select/0/prometheus). Hosts with their status, metric queries at
every resolution from both tiers, ingest, a rule that fires and resolves,
and downsampling into the long-term tier.
"""

from __future__ import annotations

import socket
import subprocess
import time

import pytest
import requests
import yaml

from fleetwatch.backfill import backfill
from fleetwatch.stack import Stack, find_binary
from fleetwatch.testing.api import api_key, api_session
from fleetwatch.testing.prom import PromClient
from fleetwatch.testing.stack import recorded_write_url, restart, stack_config
from fleetwatch.testing.waits import wait_until
from gateway.promql import Prometheus
from gateway.remote_write import RemoteWriter, encode_labels, encode_sample, encode_series
from rules_compiler.downsampling import is_downsampled

HOST = socket.gethostname()  # the stack's own exporter
ISO = "%Y-%m-%dT%H:%M:%SZ"


@pytest.fixture(scope="module", params=["prometheus", "victoriametrics"])
def backend_stack(request, tmp_path_factory):
    """The stack on one backend; Prometheus's raw tier takes two hours of history (an out-of-order window of 3 h)."""
    config = stack_config(tmp_path_factory.mktemp(f"{request.param}-state"), backend=request.param)
    if request.param == "prometheus":
        config.out_of_order_window = "3h"
    else:  # both tiers read through the prefix, as a cluster is read
        for setting, port in (("PROMETHEUS_URL", config.ports.prometheus), ("LONGTERM_URL", config.ports.longterm)):
            config.gateway_env[f"FLEETWATCH_{setting}"] = f"http://127.0.0.1:{port}/prometheus"
    with Stack(config) as stack:
        yield stack


@pytest.fixture(scope="module")
def api(backend_stack):
    return api_session(backend_stack.urls()["gateway"])


@pytest.fixture(scope="module")
def raw(backend_stack) -> PromClient:
    return PromClient(backend_stack.urls()["prometheus"])


def rfc3339(ts: float) -> str:
    """``ts`` to the millisecond: a push a moment after another, of another value, is another sample."""
    return f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(ts))}.{int(ts * 1000) % 1000:03d}Z"


def push(api, host_id: str, value: float, count: int = 3) -> None:
    """``count`` points of cpu.utilization for ``host_id``, a second apart up to now, through the gateway."""
    if not hasattr(api, "agent_key"):
        api.agent_key = api_key(api)
    now = time.time()
    points = [{"metric": "cpu.utilization", "value": value, "ts": rfc3339(now - count + 1 + i)} for i in range(count)]
    r = requests.post(
        f"{api.base}/api/v1/ingest/metrics",
        json={"host_id": host_id, "metrics": points},
        headers={"Authorization": f"Bearer {api.agent_key}"},
        timeout=10,
    )
    assert r.status_code == 200 and r.json()["accepted"] == count, r.text


def test_hosts_are_listed_with_the_status_their_metrics_give(api):
    # Pushed hosts with known CPU: the status comes through the rule engine's host summary.
    push(api, "be-calm", 20.0)
    push(api, "be-busy", 88.0)  # above the warn line, under the crit one

    def listed():
        hosts = {h["id"]: h for h in api.get(f"{api.base}/api/v1/hosts", timeout=10).json()["hosts"]}
        summarised = [hosts.get(h, {}).get("metrics_summary", {}).get("cpu_pct") for h in ("be-calm", "be-busy")]
        seen = HOST in hosts and hosts[HOST]["last_seen_at"] is not None
        return hosts if seen and None not in summarised else None

    hosts = wait_until(listed, 60, "the pushed hosts with their CPU and the scraped one seen")
    calm, busy, mine = hosts["be-calm"], hosts["be-busy"], hosts[HOST]
    assert (calm["status"], calm["status_reasons"], calm["metrics_summary"]["cpu_pct"]) == ("ok", [], 20.0), calm
    assert busy["status_reasons"] == ["warn: cpu_pct at 88"] and busy["metrics_summary"]["cpu_pct"] == 88.0, busy
    # This machine, scraped: whatever its load, its status is what its reasons say, and it is seen.
    worst = {r.split(":")[0] for r in mine["status_reasons"]}
    assert mine["status"] == ("crit" if "crit" in worst else "warn" if worst else "ok"), mine
    assert not any("never seen" in r or "heartbeat" in r for r in mine["status_reasons"]), mine

    # A status filter lists by the status watcher's last round: the list's statuses within one round.
    def warned():
        hosts = api.get(f"{api.base}/api/v1/hosts", params={"status": "warn"}, timeout=10).json()["hosts"]
        return {h["id"] for h in hosts} if "be-busy" in {h["id"] for h in hosts} else None

    assert "be-calm" not in wait_until(warned, 20, "be-busy under ?status=warn")
    # Readiness: on VictoriaMetrics through the /prometheus prefix, which has no /-/ready of its own.
    ready = requests.get(f"{api.base}/ready", timeout=10)
    assert ready.status_code == 200 and ready.json()["prometheus"] == "ok", ready.text


def test_pushed_points_are_stored_and_queryable(api, raw):
    push(api, "be-pushed", 42.5)
    found = raw.wait_for('fleet:cpu_utilization{host_id="be-pushed"}')
    assert float(found[0]["value"][1]) == 42.5
    r = api.get(
        f"{api.base}/api/v1/metrics/query",
        params={"host_id": "be-pushed", "metric": "cpu.utilization", "range": "15m"},
        timeout=10,
    )
    assert r.status_code == 200 and 42.5 in {p["value"] for p in r.json()["datapoints"]}, r.text


def test_rule_fires_and_resolves(api):
    created = api.post(
        f"{api.base}/api/v1/alerts/rules",
        json={
            "name": "Backend hot",
            "expression": "cpu.utilization > 90",
            "duration": "static",
            "scope": {"hosts": "be-hot"},
            "severity": "warning",
        },
        timeout=30,
    )
    assert created.status_code == 201, created.text
    rule_id = created.json()["id"]

    def events(state):
        r = api.get(f"{api.base}/api/v1/alerts/events", params={"rule_id": rule_id, "state": state}, timeout=10)
        return [e for e in r.json()["alerts"] if e["host_id"] == "be-hot"]

    def hot():
        push(api, "be-hot", 99.0, 1)
        return events("firing")

    firing = wait_until(hot, what="a firing event", timeout_s=40, interval_s=1.0)
    assert firing[0]["rule_name"] == "Backend hot"

    def cool():
        push(api, "be-hot", 5.0, 1)
        return events("resolved")

    resolved = wait_until(cool, what="a resolved event", timeout_s=40, interval_s=1.0)
    assert resolved[0]["rule_name"] == "Backend hot"


@pytest.fixture(scope="module")
def history(backend_stack, api, tmp_path_factory) -> str:
    """Two hours of a host's CPU in the raw tier, and the downsampling rules over them in the long-term tier.

    A live group first evaluates up to its interval after the start (an hour
    for 1h): a test cannot wait for that, so each backend's documented backfill
    (docs/backends.md) fills the levels: `fleetwatch backfill` on Prometheus,
    `vmalert -replay` on VictoriaMetrics.
    """
    urls, host = backend_stack.urls(), "be-history"
    push(api, host, 55.0, 1)  # an agent's first push puts the host in the inventory
    now = int(time.time())
    start = now - 2 * 3600
    # From two minutes before the replay's first evaluation: its window ends 15 s back (downsampling DELAY).
    samples = [encode_sample(50.0 + (t % 600) / 60, t * 1000) for t in range(start - 120, now - 30, 15)]
    labels = encode_labels([("__name__", "fleet:cpu_utilization"), ("host_id", host)])
    RemoteWriter(f"{urls['prometheus']}/api/v1/write").write([encode_series(labels, samples)])
    if backend_stack.config.backend == "prometheus":
        state = backend_stack.config.state_dir
        raw, longterm = Prometheus(urls["prometheus"], 60), Prometheus(urls["longterm"], 60)
        assert backfill(raw, longterm, ["cpu.utilization"], start, now, [state / "longterm" / "data"]) > 0
        restart(backend_stack, "longterm")  # blocks are loaded as a tier opens (else within a minute)
    else:
        requests.get(f"{urls['prometheus']}/internal/force_flush", timeout=10)
        replay(backend_stack, start, now, tmp_path_factory.mktemp("replay"))
    return host


def replay(stack: Stack, start: int, end: int, tmp) -> None:
    """The CPU rules of the downsampling file replayed by vmalert over [start, end], written through vmagent."""
    urls = stack.urls()
    for group in yaml.safe_load(stack.paths["downsampling_rules"].read_text())["groups"]:
        group["rules"] = [r for r in group["rules"] if r["record"].startswith("fleet:cpu_utilization:")]
        replayed = tmp / f"{group['name']}.yml"
        replayed.write_text(yaml.safe_dump({"groups": [group]}))
        done = subprocess.run(
            [
                find_binary("vmalert"),
                f"-rule={replayed}",
                f"-datasource.url={urls['prometheus']}",
                # vmalert 1.79 steps its replay queries by this, not by the group's interval.
                f"-datasource.queryStep={group['interval']}",
                f"-remoteWrite.url={urls['vmagent']}",
                f"-replay.timeFrom={time.strftime(ISO, time.gmtime(start))}",
                f"-replay.timeTo={time.strftime(ISO, time.gmtime(end))}",
                "-replay.rulesDelay=0s",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.parametrize(
    ("range_", "resolution", "tier", "at_least"),
    [
        ("1h", "raw", "raw", 200),
        ("1h", "1m", "longterm", 55),  # every level from the long-term tier: the raw tier records none
        ("24h", "5m", "longterm", 20),
        ("24h", "1h", "longterm", 2),
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
    assert body["tier"] == tier
    assert all(50 <= p["value"] <= 60 and p["ts"].endswith("Z") for p in body["datapoints"])


def test_downsampled_series_and_only_those_reach_the_long_term_tier(backend_stack, history):
    longterm = PromClient(backend_stack.urls()["longterm"])
    # Hourly points of the two replayed hours: the last one may be further back than an instant query looks.
    hours = longterm.wait_for(f'count_over_time(fleet:cpu_utilization:avg1h{{host_id="{history}"}}[3h])')
    assert float(hours[0]["value"][1]) >= 2, hours
    # What the rule engine records enters where its live results do; only the downsampled name gets through.
    now_ms = int(time.time() * 1000)
    RemoteWriter(recorded_write_url(backend_stack)).write(
        [
            encode_series(encode_labels([("__name__", name), ("host_id", "be-probe")]), [encode_sample(1.0, now_ms)])
            for name in ("fleet:backend_probe:avg5m", "fleet:backend_probe")
        ]
    )
    longterm.wait_for('fleet:backend_probe:avg5m{host_id="be-probe"}')
    # The other arrived too: in the downsampler it was written to, or the raw tier vmagent forwards it to.
    urls = backend_stack.urls()
    PromClient(urls.get("downsampler", urls["prometheus"])).wait_for('fleet:backend_probe{host_id="be-probe"}')
    names = longterm.query('count by (__name__) ({__name__=~".+"})')
    assert names and all(is_downsampled(s["metric"]["__name__"]) for s in names), names
    assert longterm.query(f'fleet:cpu_utilization{{host_id="{history}"}}') == []
    # And the levels only there: the raw tier never gets them (on VictoriaMetrics, vmagent drops them for it),
    # neither the probe nor the live levels of the stack's own exporter.
    live = f'fleet:cpu_utilization:avg1m{{host_id="{HOST}"}}'
    longterm.wait_for(live, timeout_s=90)
    raw = PromClient(urls["prometheus"])
    if "downsampler" not in urls:
        requests.get(f"{urls['prometheus']}/internal/force_flush", timeout=10)  # all it took is searchable
    assert raw.query('fleet:backend_probe:avg5m{host_id="be-probe"}') == [] and raw.query(live) == []


def test_a_page_of_a_thousand_hosts_with_the_longest_ids_is_listed(api):
    # Each query of a page names its hosts: 1,000 ids of 64 characters passed the 1 MiB a request's head may
    # have on Prometheus (the GPU check named them ten times) and VictoriaMetrics' default 16 KiB query length.
    ids = [f"{n:04d}.{'rack-b.' * 9}"[:64] for n in range(1000)]
    rows = "hostname,exporter,id\n" + "".join(f"{h}.example.com,push,{h}\n" for h in ids)
    r = api.post(f"{api.base}/api/v1/hosts/import", data=rows, headers={"Content-Type": "text/csv"}, timeout=60)
    assert r.status_code == 201 and r.json()["created"] == 1000, r.text
    total = api.get(f"{api.base}/api/v1/hosts", params={"limit": 1}, timeout=60).json()["total"]
    # The list is in the inventory's order: the newest thousand last.
    r = api.get(f"{api.base}/api/v1/hosts", params={"limit": 1000, "offset": total - 1000}, timeout=60)
    assert r.status_code == 200, r.text
    page = {h["id"]: h for h in r.json()["hosts"]}
    assert page.keys() == set(ids)
    judged = {(page[h]["status"], tuple(page[h]["status_reasons"])) for h in ids}
    assert judged == {("crit", ("crit: agent never seen",))}, judged
