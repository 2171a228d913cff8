"""Push ingest (§8.7) into a real Prometheus: per-point validation, dedup, backpressure, heartbeats."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest

from fleetwatch.testing import services
from fleetwatch.testing.api import ADMIN, bearer, login, make_app, relay_key, targets_once
from fleetwatch.testing.prom import PromClient
from fleetwatch.testing.waits import free_port, wait_until
from gateway.db import Host, db
from gateway.remote_write import (
    GroupWriter,
    Refused,
    RemoteWriter,
    WriteFailed,
    encode_labels,
    encode_sample,
    encode_series,
)


def rfc3339(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory):
    with services.prometheus(tmp_path_factory.mktemp("prom-ingest") / "data") as server:
        yield server


@pytest.fixture(scope="module")
def ingest_app(prometheus, tmp_path_factory):
    return make_app(tmp_path_factory.mktemp("gw-ingest"), prometheus.url)


@pytest.fixture(scope="module")
def api_key(ingest_app):
    client = ingest_app.test_client()
    admin = bearer(login(client, ADMIN)["access_token"])
    r = client.post(
        "/api/v1/api-keys", json={"name": "agents", "host_pattern": "*", "allow_discovery": True}, headers=admin
    )
    assert r.status_code == 201, r.get_json()
    return {"X-API-Key": r.get_json()["key"]}


def values(prom: PromClient, promql: str) -> list[tuple[float, float]]:
    result = prom.query(promql)
    return [(float(t), float(v)) for s in result for t, v in s["values"]]


def test_mixed_batch_stores_valid_points_and_says_why_others_failed(ingest_app, api_key, prometheus):
    now = datetime.now(UTC).replace(microsecond=0)
    good = {"metric": "cpu.utilization", "ts": rfc3339(now - timedelta(seconds=30)), "value": 85.2}
    points = [
        good,
        {"metric": "cpu.utilization", "ts": rfc3339(now + timedelta(minutes=10)), "value": 1},
        {"metric": "cpu.utilization", "ts": rfc3339(now - timedelta(hours=2)), "value": 1},
        {"metric": "cpu.utilisation", "ts": rfc3339(now), "value": 1},
        {"metric": "mem.used_pct", "ts": rfc3339(now), "value": "72.1"},
        {"metric": "mem.used_pct", "ts": 1700000000, "value": 72.1},
        {"metric": "mem.used_pct", "ts": rfc3339(now), "value": True},
        {"metric": "disk.used_pct", "ts": rfc3339(now), "value": 50, "labels": {"mountpoint": "x" * 500}},
        {"metric": "disk.used_pct", "ts": rfc3339(now), "value": 50, "labels": {"bad-name": "/"}},
        {"metric": "disk.used_pct", "ts": rfc3339(now), "value": 50, "labels": {"host_id": "other"}},
        ["not", "an", "object"],
        {"metric": "disk.used_pct", "ts": rfc3339(now), "value": 61.5, "labels": {"mountpoint": '/da"ta\\'}},
        {"metric": "cpu.core.3", "ts": rfc3339(now), "value": 12.5},
    ]
    # NaN is not JSON, but clients write it: that point alone is refused.
    body = json.dumps(
        {
            "host_id": "h-mixed",
            "metrics": [*points, {"metric": "mem.used_pct", "ts": rfc3339(now), "value": float("nan")}],
        }
    )
    r = ingest_app.test_client().post(
        "/api/v1/ingest/metrics", data=body, headers={**api_key, "Content-Type": "application/json"}
    )
    assert r.status_code == 200, r.get_json()
    answer = r.get_json()
    assert (answer["accepted"], answer["rejected"]) == (3, 11)
    reasons = {e["index"]: e["reason"] for e in answer["errors"]}
    assert sorted(reasons) == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 13]
    assert "future" in reasons[1] and "older" in reasons[2] and "unknown" in reasons[3]
    assert "number" in reasons[4] and "RFC 3339" in reasons[5] and "number" in reasons[6]
    assert "128" in reasons[7] and "bad-name" in reasons[8] and "host_id" in reasons[9]
    assert "object" in reasons[10] and "finite" in reasons[13]

    prom = PromClient(prometheus.url)
    assert values(prom, 'fleet:cpu_utilization{host_id="h-mixed"}[5m]') == [(now.timestamp() - 30, 85.2)]
    disk = prom.query('fleet:disk_used_pct{host_id="h-mixed"}[5m]')
    assert [s["metric"]["mountpoint"] for s in disk] == ['/da"ta\\']
    assert [s["metric"]["core"] for s in prom.query('fleet:cpu_core{host_id="h-mixed"}[5m]')] == ["3"]


def test_resending_a_batch_stores_each_point_once(ingest_app, api_key, prometheus):
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=20)
    # Out of order on purpose: a replayed buffer lands behind points already stored.
    batch = [
        {"metric": "mem.used_pct", "ts": rfc3339(start + timedelta(seconds=5 * i)), "value": i} for i in range(100)
    ]
    client = ingest_app.test_client()
    newest = {"metric": "mem.used_pct", "ts": rfc3339(datetime.now(UTC)), "value": 1}
    assert (
        client.post(
            "/api/v1/ingest/metrics", json={"host_id": "h-dup", "metrics": [newest]}, headers=api_key
        ).status_code
        == 200
    )
    for _ in range(3):
        r = client.post(
            "/api/v1/ingest/metrics", json={"host_id": "h-dup", "metrics": batch + batch[:10]}, headers=api_key
        )
        assert r.status_code == 200, r.get_json()
        assert r.get_json() == {"accepted": 110, "rejected": 0, "errors": []}
    stored = values(PromClient(prometheus.url), 'fleet:mem_used_pct{host_id="h-dup"}[30m]')
    assert stored[:100] == [((start + timedelta(seconds=5 * i)).timestamp(), i) for i in range(100)]
    assert len(stored) == 101


def test_bad_requests_answer_in_the_error_shape_and_store_nothing(ingest_app, api_key, prometheus):
    client = ingest_app.test_client()
    json_headers = {**api_key, "Content-Type": "application/json"}
    r = client.post("/api/v1/ingest/metrics", data='{"host_id": "h-bad", "metrics": [', headers=json_headers)
    assert r.status_code == 400 and r.get_json()["error"]["code"] == "VALIDATION_ERROR"
    assert "malformed JSON" in r.get_json()["error"]["message"]
    r = client.post("/api/v1/ingest/metrics", json={"host_id": "h-bad", "metrics": []})
    assert r.status_code == 401 and r.get_json()["error"]["code"] == "UNAUTHORIZED"
    r = client.post("/api/v1/ingest/metrics", json={"host_id": "../etc", "metrics": []}, headers=api_key)
    assert r.status_code == 400 and "host_id" in r.get_json()["error"]["message"]
    only_bad = [{"metric": "nope", "ts": "2025-01-01T00:00:00Z", "value": 1}]
    r = client.post("/api/v1/ingest/metrics", json={"host_id": "h-bad", "metrics": only_bad}, headers=api_key)
    assert r.status_code == 400 and r.get_json()["error"]["details"]["rejected"] == 1
    huge = b'{"host_id": "h-bad", "metrics": [' + b" " * (5 * 1024 * 1024) + b"]}"
    r = client.post("/api/v1/ingest/metrics", data=huge, headers=json_headers)
    assert r.status_code == 413 and r.get_json()["error"]["code"] == "PAYLOAD_TOO_LARGE"
    assert PromClient(prometheus.url).query('{host_id="h-bad"}') == []


def test_label_budget_per_host(prometheus, tmp_path, api_key):
    app = make_app(tmp_path, prometheus.url, INGEST_SERIES_PER_HOST=3, db_name="budget")
    client = app.test_client()
    key = relay_key(client)
    now = rfc3339(datetime.now(UTC))
    points = [{"metric": "disk.used_pct", "ts": now, "value": 1, "labels": {"mountpoint": f"/m{i}"}} for i in range(5)]
    answer = client.post(
        "/api/v1/ingest/metrics", json={"host_id": "h-budget", "metrics": points}, headers={"X-API-Key": key}
    ).get_json()
    assert (answer["accepted"], answer["rejected"]) == (3, 2)
    assert all("label budget" in e["reason"] for e in answer["errors"])


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_hosts_label_budget_holds_across_workers_and_keys(prometheus, tmp_path, request, backend):
    """INGEST_SERIES_PER_HOST counts a host's distinct series in the DB: not once per worker, key or restart."""
    on = (
        {"SQLALCHEMY_DATABASE_URI": request.getfixturevalue("postgres").new_database()}
        if backend == "postgresql"
        else {}
    )
    first = make_app(tmp_path, prometheus.url, INGEST_SERIES_PER_HOST=10, db_name="hb", **on).test_client()
    admin = bearer(login(first, ADMIN)["access_token"])
    keys = [
        first.post("/api/v1/api-keys", json={"name": f"relay-{n}", "host_pattern": "*", "allow_discovery": True},
                   headers=admin).get_json()["key"]
        for n in (1, 2)
    ]  # fmt: skip
    host, now = f"h-budget-{backend}", rfc3339(datetime.now(UTC))

    def push(client, key, mounts):
        points = [{"metric": "disk.used_pct", "ts": now, "value": 1, "labels": {"mountpoint": m}} for m in mounts]
        return client.post(
            "/api/v1/ingest/metrics", json={"host_id": host, "metrics": points}, headers={"X-API-Key": key}
        )

    assert push(first, keys[0], [f"/a{i}" for i in range(6)]).get_json()["accepted"] == 6
    # Another worker (or replica) on the same DB, through another key: the 6 resent are not counted again.
    other = make_app(tmp_path, prometheus.url, INGEST_SERIES_PER_HOST=10, db_name="hb", **on).test_client()
    answer = push(other, keys[1], [f"/a{i}" for i in range(6)] + [f"/b{i}" for i in range(4)]).get_json()
    assert (answer["accepted"], answer["rejected"]) == (10, 0), answer
    restarted = make_app(tmp_path, prometheus.url, INGEST_SERIES_PER_HOST=10, db_name="hb", **on).test_client()
    for client, key in ((first, keys[0]), (other, keys[1]), (restarted, keys[0])):
        r = push(client, key, ["/c11"])  # the 11th distinct series, whichever worker and key
        assert r.status_code == 400, r.get_json()
        assert f"label budget: host {host} has 10 series already" in r.get_json()["error"]["message"]
    # A series the host has, new to this worker: still taken, and counted once.
    answer = push(first, keys[0], ["/b3", "/c12"]).get_json()
    assert (answer["accepted"], answer["rejected"]) == (1, 1) and "label budget" in answer["errors"][0]["reason"]
    stored = PromClient(prometheus.url).query(f'count({{__name__="fleet:disk_used_pct", host_id="{host}"}})')
    assert int(stored[0]["value"][1]) == 10


def test_a_series_the_keys_budget_refuses_takes_no_place_in_the_hosts(prometheus, tmp_path):
    client = make_app(tmp_path, prometheus.url, INGEST_SERIES_PER_HOST=3, db_name="hk").test_client()
    admin = bearer(login(client, ADMIN)["access_token"])
    keys = [
        client.post("/api/v1/api-keys", json={"name": "k", "host_pattern": "*", "allow_discovery": True, **budget},
                    headers=admin).get_json()["key"]
        for budget in ({"max_series": 2}, {})
    ]  # fmt: skip
    now = rfc3339(datetime.now(UTC))

    def push(key, mounts):
        points = [{"metric": "disk.used_pct", "ts": now, "value": 1, "labels": {"mountpoint": m}} for m in mounts]
        body = {"host_id": "h-two-budgets", "metrics": points}
        return client.post("/api/v1/ingest/metrics", json=body, headers={"X-API-Key": key}).get_json()

    answer = push(keys[0], ["/x0", "/x1", "/x2"])
    assert (answer["accepted"], answer["rejected"]) == (2, 1) and "series budget" in answer["errors"][0]["reason"]
    answer = push(keys[1], ["/x3", "/x4"])  # the host has 2 series stored: one place left, not none
    assert (answer["accepted"], answer["rejected"]) == (1, 1) and "label budget" in answer["errors"][0]["reason"]


def test_store_down_or_full_is_503_with_retry_after(tmp_path):
    dead = make_app(tmp_path, f"http://127.0.0.1:{free_port()}", db_name="dead")
    client = dead.test_client()
    key = relay_key(client)
    point = {"metric": "cpu.load1", "ts": rfc3339(datetime.now(UTC)), "value": 1}
    r = client.post("/api/v1/ingest/metrics", json={"host_id": "h-503", "metrics": [point]}, headers={"X-API-Key": key})
    assert r.status_code == 503 and r.headers["Retry-After"] == "5"
    assert r.get_json()["error"]["code"] == "SERVICE_UNAVAILABLE"

    dead.config["INGEST_MAX_INFLIGHT_POINTS"] = 1
    r = client.post(
        "/api/v1/ingest/metrics",
        json={"host_id": "h-503", "metrics": [point, {**point, "metric": "cpu.load5"}]},
        headers={"X-API-Key": key},
    )
    assert r.status_code == 503 and r.headers["Retry-After"] == "1"
    metrics = client.get("/metrics").text
    assert 'ingest_datapoints_total{result="refused"} 2.0' in metrics
    assert 'ingest_errors_total{reason="store_unavailable"} 1.0' in metrics


def test_first_push_discovers_the_host_and_silence_turns_it_crit(ingest_app, api_key):
    client = ingest_app.test_client()
    r = client.post(
        "/api/v1/ingest/heartbeat",
        json={"host_id": "h-beat", "hostname": "gpu-17", "agent_version": "9.9"},
        headers=api_key,
    )
    assert r.status_code == 200, r.get_json()
    admin = bearer(login(client, ADMIN)["access_token"])
    host = client.get("/api/v1/hosts/h-beat?range=15m", headers=admin).get_json()["host"]
    assert (host["hostname"], host["agent_version"], host["exporter"]) == ("gpu-17", "9.9", "push")
    assert host["status"] == "ok", host["status_reasons"]
    assert 'fleet_host_last_seen_timestamp_seconds{host_id="h-beat"}' in client.get("/metrics").text

    with ingest_app.app_context():
        row = db.session.execute(db.select(Host).filter_by(id="h-beat")).scalar_one()
        row.last_seen_at = datetime.now(UTC) - timedelta(minutes=3)
        db.session.commit()
    host = client.get("/api/v1/hosts/h-beat?range=15m", headers=admin).get_json()["host"]
    assert host["status"] == "crit" and "crit: agent silent for 2m" in host["status_reasons"]
    # A pushing host is no scrape target: Prometheus must not try to reach it.
    assert (
        client.patch("/api/v1/hosts/h-beat", json={"tags": {"role": "gpu"}}, headers=admin).json["exporter"] == "push"
    )
    # Given time to be written: it still is no target.
    gap_s = ingest_app.config["TARGETS_WRITE_GAP_S"]
    targets = targets_once(ingest_app.config["STATE_DIR"], lambda ts: False, timeout_s=2 * gap_s)
    assert all(t["labels"]["host_id"] != "h-beat" for t in targets)


def test_point_the_store_refuses_is_reported_and_its_neighbours_stored(ingest_app, api_key, prometheus):
    client = ingest_app.test_client()
    ts = rfc3339(datetime.now(UTC))
    first = {"metric": "cpu.load1", "ts": ts, "value": 1.0}
    assert (
        client.post(
            "/api/v1/ingest/metrics", json={"host_id": "h-clash", "metrics": [first]}, headers=api_key
        ).status_code
        == 200
    )
    # Prometheus refuses a second value at the newest timestamp of a series, and with it the whole request.
    batch = [
        {"metric": "cpu.load5", "ts": ts, "value": 5.0},
        {**first, "value": 2.0},
        {"metric": "cpu.load15", "ts": ts, "value": 15.0},
    ]
    answer = client.post(
        "/api/v1/ingest/metrics", json={"host_id": "h-clash", "metrics": batch}, headers=api_key
    ).get_json()
    assert (answer["accepted"], answer["rejected"]) == (2, 1)
    assert answer["errors"][0]["index"] == 1 and "refused by the store" in answer["errors"][0]["reason"]
    prom = PromClient(prometheus.url)
    stored = {s["metric"]["__name__"]: float(s["value"][1]) for s in prom.query('{host_id="h-clash"}')}
    assert stored == {"fleet:cpu_load1": 1.0, "fleet:cpu_load5": 5.0, "fleet:cpu_load15": 15.0}


@pytest.mark.integration
def test_a_point_prometheus_will_never_take_is_rejected_not_retried(tmp_path):
    """Prometheus 2.x answers 500 "too old sample": a 503 would make agents resend it forever."""
    with services.prometheus(tmp_path / "prom" / "data") as prom:
        # A sample 2 h ahead moves Prometheus's head, so 10 min ago is now outside its 1 h window.
        ahead = int((time.time() + 7200) * 1000)
        RemoteWriter(f"{prom.url}/api/v1/write").write(
            [
                encode_series(
                    encode_labels([("__name__", "fleet:cpu_load1"), ("host_id", "h-ahead")]), [encode_sample(1, ahead)]
                )
            ]
        )
        app = make_app(tmp_path, prom.url, db_name="old")
        client = app.test_client()
        key = relay_key(client)
        point = {"metric": "cpu.load1", "ts": rfc3339(datetime.now(UTC) - timedelta(minutes=10)), "value": 1}
        r = client.post(
            "/api/v1/ingest/metrics", json={"host_id": "h-old", "metrics": [point]}, headers={"X-API-Key": key}
        )
        assert r.status_code == 400, r.get_json()
        assert "too old" in r.get_json()["error"]["details"]["errors"][0]["reason"]


def test_huge_numbers_are_refused_points_and_scraped_hosts_refuse_pushes(ingest_app, api_key):
    now = rfc3339(datetime.now(UTC).replace(microsecond=0))
    client = ingest_app.test_client()
    huge = "1" + "0" * 400
    body = f'{{"host_id": "h-huge", "metrics": [{{"metric": "mem.used_pct", "ts": "{now}", "value": {huge}}}]}}'
    r = client.post("/api/v1/ingest/metrics", data=body, headers={**api_key, "Content-Type": "application/json"})
    assert r.status_code == 400, r.get_json()  # the request's only point, refused: not a 500
    assert "out of range" in r.get_json()["error"]["details"]["errors"][0]["reason"]

    admin = bearer(login(client, ADMIN)["access_token"])
    pulled = client.post("/api/v1/hosts", json={"hostname": "pulled.example.com"}, headers=admin).get_json()["id"]
    push = {"host_id": pulled, "metrics": [{"metric": "mem.used_pct", "ts": now, "value": 50}]}
    r = client.post("/api/v1/ingest/metrics", json=push, headers=api_key)
    assert r.status_code == 409 and r.get_json()["error"]["code"] == "CONFLICT"
    r = client.post("/api/v1/ingest/heartbeat", json={"host_id": pulled, "has_gpu": "yes"}, headers=api_key)
    assert r.status_code == 409


class HeldWriter(RemoteWriter):
    """The real remote write, held until ``release`` is set: writers that come meanwhile queue."""

    def __init__(self, url: str):
        super().__init__(url)
        self.requests: list[int] = []  # series per request, in order
        self.sent, self.release = threading.Event(), threading.Event()

    def write(self, series: list[bytes]) -> None:
        self.requests.append(len(series))
        self.sent.set()
        assert self.release.wait(10)
        super().write(series)


def one_series(metric: str, host: str, value: float, ts_ms: int) -> list[bytes]:
    return [encode_series(encode_labels([("__name__", metric), ("host_id", host)]), [encode_sample(value, ts_ms)])]


def writing(group: GroupWriter, series: list[bytes], results: dict, name) -> threading.Thread:
    """A thread that writes ``series`` through ``group`` and notes "stored" or the exception under ``name``."""

    def write():
        try:
            group.write(series, 1)
            results[name] = "stored"
        except WriteFailed as exc:
            results[name] = exc

    thread = threading.Thread(target=write)
    thread.start()
    return thread


def test_concurrent_writers_share_one_remote_write_and_each_waits_for_its_own(prometheus):
    writer = HeldWriter(f"{prometheus.url}/api/v1/write")
    group, results, now_ms = GroupWriter(writer, max_in_flight=1), {}, int(time.time() * 1000)
    threads = [writing(group, one_series("fleet:cpu_load1", "h-group-0", 0, now_ms), results, 0)]
    assert writer.sent.wait(10)
    for i in range(1, 6):
        threads.append(writing(group, one_series("fleet:cpu_load1", f"h-group-{i}", i, now_ms), results, i))
    wait_until(lambda: len(group._queue) == 5, 10, "five writers queued behind the first")
    assert results == {}  # nobody returns before its series are stored
    writer.release.set()
    for t in threads:
        t.join(10)
    assert results == {i: "stored" for i in range(6)}
    assert writer.requests == [1, 5]  # the five that queued behind the first went in one request
    stored = PromClient(prometheus.url).query('fleet:cpu_load1{host_id=~"h-group-.*"}')
    assert sorted(float(s["value"][1]) for s in stored) == [0, 1, 2, 3, 4, 5]


def test_with_two_requests_in_flight_the_writers_behind_them_still_share_one(prometheus):
    writer = HeldWriter(f"{prometheus.url}/api/v1/write")
    group, results, now_ms = GroupWriter(writer, max_in_flight=2), {}, int(time.time() * 1000)
    threads = []
    for i in range(2):  # both slots taken, both held
        writer.sent.clear()
        threads.append(writing(group, one_series("fleet:cpu_load15", f"h-slot-{i}", i, now_ms), results, i))
        assert writer.sent.wait(10)
    for i in range(2, 5):
        threads.append(writing(group, one_series("fleet:cpu_load15", f"h-slot-{i}", i, now_ms), results, i))
    wait_until(lambda: len(group._queue) == 3, 10, "three writers queued behind the two")
    writer.release.set()
    for t in threads:
        t.join(10)
    assert results == {i: "stored" for i in range(5)}
    # The three that waited went in one request; the one whose series it carried did not send an empty one.
    assert writer.requests == [1, 1, 3]


def test_a_refused_shared_request_is_each_writers_to_send_alone(prometheus):
    now_ms, week_ms = int(time.time() * 1000), 7 * 86400 * 1000
    too_old = one_series("fleet:cpu_load5", "h-refused", 1, now_ms - week_ms)
    writer = HeldWriter(f"{prometheus.url}/api/v1/write")
    writer.release.set()
    with pytest.raises(WriteFailed) as alone:
        GroupWriter(writer).write(too_old, 1)
    assert type(alone.value) is WriteFailed and not alone.value.retry  # alone, the reason is its own

    writer = HeldWriter(f"{prometheus.url}/api/v1/write")
    group, results = GroupWriter(writer, max_in_flight=1), {}
    threads = [writing(group, one_series("fleet:cpu_load5", "h-head", 1, now_ms), results, "head")]
    assert writer.sent.wait(10)
    threads.append(writing(group, too_old, results, "old"))
    threads.append(writing(group, one_series("fleet:cpu_load5", "h-new", 2, now_ms), results, "new"))
    wait_until(lambda: len(group._queue) == 2, 10, "two writers queued behind the head")
    writer.release.set()
    for t in threads:
        t.join(10)
    assert writer.requests == [1, 2]
    # Prometheus refused the shared request whole, and neither writer knows whose sample it was.
    assert results["head"] == "stored"
    assert all(isinstance(results[n], Refused) and not results[n].retry for n in ("old", "new")), results


def test_pushes_note_last_seen_and_write_it_for_all_hosts_at_once(prometheus, tmp_path):
    app = make_app(tmp_path, prometheus.url, HEARTBEAT_EVERY_S=3600)
    client = app.test_client()
    key = relay_key(client)

    def push(host_id: str) -> None:
        point = {"metric": "cpu.load1", "ts": rfc3339(datetime.now(UTC)), "value": 1}
        r = client.post(
            "/api/v1/ingest/metrics", json={"host_id": host_id, "metrics": [point]}, headers={"X-API-Key": key}
        )
        assert r.status_code == 200, r.get_json()

    def last_seen() -> dict[str, datetime]:
        with app.app_context():
            return dict(db.session.execute(db.select(Host.id, Host.last_seen_at)).all())

    push("h-seen-a")
    push("h-seen-b")  # discovered: written at once
    first = last_seen()
    time.sleep(0.05)
    push("h-seen-a")
    push("h-seen-b")
    assert last_seen() == first  # noted, not yet written
    app.config["HEARTBEAT_EVERY_S"] = 0
    push("h-seen-a")  # the write is due: both hosts' notes go in one UPDATE
    now = last_seen()
    assert all(now[h] > first[h] for h in ("h-seen-a", "h-seen-b")), (first, now)


def test_a_revoked_key_is_refused_at_once_though_workers_remember_valid_keys(ingest_app):
    client = ingest_app.test_client()
    admin = bearer(login(client, ADMIN)["access_token"])
    created = client.post(
        "/api/v1/api-keys", json={"name": "short-lived", "host_pattern": "*", "allow_discovery": True}, headers=admin
    ).get_json()
    beat = {"host_id": "h-revoked"}
    assert client.post("/api/v1/ingest/heartbeat", json=beat, headers={"X-API-Key": created["key"]}).status_code == 200
    assert client.delete(f"/api/v1/api-keys/{created['id']}", headers=admin).status_code == 200
    r = client.post("/api/v1/ingest/heartbeat", json=beat, headers={"X-API-Key": created["key"]})
    assert r.status_code == 401 and r.get_json()["error"]["code"] == "UNAUTHORIZED"
