"""Host status through the API against a real Prometheus: ``?status=`` pages, and the status watcher's view.

Each ``?status=`` test runs twice: with the fleet judged at the request (no
recent round of the status watcher) and from the watcher's last round, which
is what a filtered list reads while that round is recent.

The recorded series the gateway judges by (the layer's series the summary
combines, their values held above the crit line over a minute, ``up``) are
remote-written into a fresh Prometheus for hosts made ok, warm, hot, silent,
silent for minutes, pushing, in maintenance, and one Prometheus knows that the
inventory lacks; that Prometheus runs the stack's rules, which record the
discovered hosts.
"""

from __future__ import annotations

import time

import pytest
from sqlalchemy import update

from fleetwatch.testing import services
from fleetwatch.testing.api import ADMIN, bearer, login, make_app
from fleetwatch.testing.prom import PromClient
from gateway.db import HostStatusSeen, Lease, db
from gateway.remote_write import RemoteWriter, encode_labels, encode_timeseries
from gateway.status_watch import LEASE, record_max_age_s
from rules_compiler.catalog import CATALOG
from rules_compiler.recording import DISCOVERED, HELD, render_normalisation_rules

# host id: (tags, cpu %, mem %, seconds since its last good scrape or None for never scraped, expected status)
HOSTS = {
    "ok-0": ("db", 20.0, 30.0, 0, "ok"),
    "ok-1": ("web", 35.0, 40.0, 0, "ok"),
    "warm-0": ("db", 40.0, 82.0, 0, "warn"),
    "ok-2": ("db", 50.0, 50.0, 0, "ok"),
    "hot-0": ("db", 99.0, 40.0, 0, "crit"),
    "silent-0": ("db", None, None, None, "crit"),
    "gone-0": ("web", None, None, 200, "crit"),
    "stopped-0": ("web", None, None, 150, "crit"),  # its samples stopped: no failed scrape recorded since
    "ok-3": ("web", 10.0, 10.0, 0, "ok"),
    "hot-1": ("web", 97.0, 95.0, 0, "crit"),
    "maint-hot": ("db", 99.0, 40.0, 0, "maintenance"),
    "maint-ok": ("web", 20.0, 20.0, 0, "maintenance"),
}
STOPPED = {"stopped-0"}
PUSHING = "push-0"  # its agent never pushed: crit
DISCOVERED_HOST = "found-hot"  # scraped, not in the inventory, hot


def _series(now: float) -> list[bytes]:
    out = []

    def add(name: str, labels: dict[str, str], value: float, ts: float) -> None:
        pairs = sorted({**labels, "__name__": name}.items(), key=lambda kv: (kv[0] != "__name__", kv[0]))
        out.append(encode_timeseries(encode_labels(pairs), [(int(ts * 1000), value)]))

    for host_id, (_, cpu, mem, beat_age, _) in [*HOSTS.items(), (DISCOVERED_HOST, ("", 99.0, 10.0, 0, "crit"))]:
        if beat_age is not None:
            up = {"job": "fleetwatch", "host_id": host_id, "instance": f"{host_id}.invalid:9101"}
            add("up", up, 1.0, now - beat_age)
            for ago in range(beat_age - 15, -1, -15) if host_id not in STOPPED else ():
                add("up", up, 0.0, now - ago)  # its scrapes failed since, as Prometheus records them
        if cpu is None:
            continue
        # Two disks and two NICs: the summary shows the fuller disk and the NICs' sum.
        for metric, labels, value in (
            ("cpu.utilization", {}, cpu),
            ("mem.used_pct", {}, mem),
            ("disk.used_pct", {"mountpoint": "/"}, 40.0),
            ("disk.used_pct", {"mountpoint": "/data"}, 20.0),
            ("net.tx_mbps", {"device": "eth0"}, 1.0),
            ("net.tx_mbps", {"device": "eth1"}, 0.5),
        ):
            add(CATALOG[metric].record, {"host_id": host_id, **labels}, value, now)
        for field, value in (("cpu_pct", cpu), ("mem_pct", mem)):
            if value > 90:  # held over the last minute: the same, steady
                add(HELD, {"host_id": host_id, "summary": field}, value, now)
    return out


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    """A fresh Prometheus with HOSTS' series, a gateway in-process with HOSTS, PUSHING and a maintenance window."""
    tmp = tmp_path_factory.mktemp("host-status")
    (tmp / "rules.yml").write_text(render_normalisation_rules(CATALOG, "1s", "15s"))
    config = services.PROMETHEUS_CONFIG.replace(
        "{scrape_interval: 1m}", "{scrape_interval: 1m, evaluation_interval: 1s}"
    )
    config += f"rule_files: [{tmp / 'rules.yml'}]\n"
    with services.prometheus(tmp / "tsdb", config=config) as prometheus:
        RemoteWriter(f"{prometheus.url}/api/v1/write").write(_series(time.time()))
        PromClient(prometheus.url).wait_for(f'{DISCOVERED}{{host_id="{DISCOVERED_HOST}"}}')
        # Each test pages through the list two hosts at a time, twice over: past the shipped 60 reads a minute.
        app = make_app(tmp, prometheus.url, ALERT_SILENCE_RECONCILE_S=0, RATE_LIMIT_READS_PER_MIN=10_000)
        client = app.test_client()
        admin = bearer(login(client, ADMIN)["access_token"])
        rows = ["hostname,tags,exporter,id"]
        rows += [f"{h}.example.com,role:{tags},{h}.invalid:9101,{h}" for h, (tags, *_) in HOSTS.items()]
        r = client.post(
            "/api/v1/hosts/import", data="\n".join(rows) + "\n", headers={**admin, "Content-Type": "text/csv"}
        )
        assert r.status_code == 201, r.get_json()
        r = client.post("/api/v1/hosts", json={"id": PUSHING, "hostname": "p.example.com", "exporter": "push"},
                        headers=admin)  # fmt: skip
        assert r.status_code == 201, r.get_json()
        window = {"scope": {"hosts": ["maint-hot", "maint-ok"]}, "ends_at": "2099-01-01T00:00:00Z"}
        assert client.post("/api/v1/alerts/silences", json=window, headers=admin).status_code == 201
        yield app, client, admin


def _pages(client, headers, **query) -> tuple[list[dict], set[int]]:
    """Every host of a filtered list, two at a time; the totals each page said."""
    hosts, totals, offset = [], set(), 0
    while True:
        page = client.get("/api/v1/hosts", query_string={**query, "limit": 2, "offset": offset}, headers=headers)
        assert page.status_code == 200, page.get_json()
        body = page.get_json()
        hosts += body["hosts"]
        totals.add(body["total"])
        offset += 2
        if offset >= body["total"]:
            return hosts, totals


EXPECTED = {**{h: spec[-1] for h, spec in HOSTS.items()}, PUSHING: "crit", DISCOVERED_HOST: "crit"}


def _watch_round(app) -> None:
    """One round of the status watcher, as the lease holder among the workers runs it every few seconds."""
    with app.app_context():
        assert app.extensions["status_watch"].tick()


def _age_the_round(app, seconds: float) -> None:
    with app.app_context():
        db.session.execute(update(Lease).where(Lease.name == LEASE).values(done_at=Lease.done_at - seconds))
        db.session.commit()


@pytest.fixture(params=["judged at the request", "from the watcher's round"])
def judged(request, fleet):
    app = fleet[0]
    _watch_round(app)
    if request.param == "judged at the request":
        _age_the_round(app, record_max_age_s(app.config) + 1)
    return request.param


@pytest.mark.parametrize("status", ["ok", "warn", "crit", "maintenance"])
def test_a_status_filter_pages_through_exactly_the_hosts_of_that_status_in_list_order(fleet, judged, status):
    _, client, admin = fleet
    everyone, _ = _pages(client, admin)
    assert {h["id"]: h["status"] for h in everyone} == EXPECTED
    listed, totals = _pages(client, admin, status=status)
    assert [h["id"] for h in listed] == [h["id"] for h in everyone if h["status"] == status]
    assert totals == {len(listed)} and all(h["status"] == status for h in listed)


def test_a_status_filter_with_tags_leaves_out_other_tags_and_discovered_hosts(fleet, judged):
    _, client, admin = fleet
    listed, totals = _pages(client, admin, status="crit", tags="role:db")
    assert [h["id"] for h in listed] == ["hot-0", "silent-0"] and totals == {2}


def test_a_filtered_page_shows_the_summary_and_the_reasons_of_the_full_list(fleet, judged):
    _, client, admin = fleet
    everyone = {h["id"]: h for h in _pages(client, admin)[0]}
    for status in ("crit", "maintenance", "warn"):
        for host in _pages(client, admin, status=status)[0]:
            same = everyone[host["id"]]
            assert (host["status_reasons"], host["metrics_summary"]) == (
                same["status_reasons"],
                same["metrics_summary"],
            )
    assert everyone["gone-0"]["status_reasons"] == ["crit: no heartbeat for 2m"]
    # Its last `up` says 1, 150 s ago: the beat is that sample's, not the query's (was "ok" on Prometheus).
    assert everyone["stopped-0"]["status_reasons"] == ["crit: no heartbeat for 2m"]
    assert everyone["silent-0"]["status_reasons"] == ["crit: never seen"]
    assert everyone["hot-1"]["status_reasons"] == ["crit: cpu_pct above 90 for 1m", "crit: mem_pct above 90 for 1m"]
    assert everyone[DISCOVERED_HOST]["source"] == "discovered"
    assert everyone["warm-0"]["metrics_summary"] == {
        "cpu_pct": 40.0, "mem_pct": 82.0, "gpu_pct": None, "disk_pct": 40.0, "net_tx_mbps": 1.5
    }  # fmt: skip


def test_a_status_filter_serves_the_watchers_round_only_while_it_is_recent(fleet):
    app, client, admin = fleet
    _watch_round(app)
    with app.app_context():  # the round saw ok-0 warm (its memory has fallen since, say)
        seen = db.session.get(HostStatusSeen, "ok-0")
        seen.status, seen.reasons = "warn", ["warn: mem_pct at 71"]
        db.session.commit()
    warned = {h["id"]: h for h in _pages(client, admin, status="warn")[0]}
    assert warned["ok-0"]["status_reasons"] == ["warn: mem_pct at 71"]
    assert "ok-0" not in {h["id"] for h in _pages(client, admin, status="ok")[0]}

    _age_the_round(app, record_max_age_s(app.config) + 1)
    assert "ok-0" not in {h["id"] for h in _pages(client, admin, status="warn")[0]}
    assert "ok-0" in {h["id"] for h in _pages(client, admin, status="ok")[0]}
    _watch_round(app)  # and the next round records it as it is
    assert "ok-0" in {h["id"] for h in _pages(client, admin, status="ok")[0]}


def test_a_host_added_since_the_watchers_round_is_in_the_status_filter_at_once(fleet):
    app, client, admin = fleet
    _watch_round(app)
    r = client.post("/api/v1/hosts", json={"id": "new-0", "hostname": "n.example.com"}, headers=admin)
    assert r.status_code == 201, r.get_json()
    try:
        crit = {h["id"]: h for h in _pages(client, admin, status="crit")[0]}
        assert crit["new-0"]["status_reasons"] == ["crit: never seen"]
    finally:
        assert client.delete("/api/v1/hosts/new-0", headers=admin).status_code == 200


def test_the_status_watcher_sees_every_host_as_the_list_shows_it_discovered_ones_too(fleet):
    from gateway.host_status import fleet_statuses

    app, client, admin = fleet
    everyone = _pages(client, admin)[0]
    with app.app_context():
        assert fleet_statuses() == {h["id"]: (h["status"], h["status_reasons"]) for h in everyone}
