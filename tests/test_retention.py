"""Tiered retention: downsampling rules, the two tiers, and the resolution the API picks.

Synthetic raw history (30 d of one host's CPU, a sample a minute, then 5 s for
the last 2 d) is written into a real raw-tier Prometheus; ``fleetwatch
backfill`` evaluates the downsampling rules over it into both tiers; the raw
tier then restarts with a 3 d retention, which deletes the old raw samples.
Every average the API returns is checked against one computed here from the
raw samples themselves.
"""

from __future__ import annotations

import bisect
import math
import os
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from fleetwatch.backfill import backfill
from fleetwatch.testing import services
from fleetwatch.testing.api import ADMIN, bearer, login, make_app
from fleetwatch.testing.prom import PromClient
from gateway.promql import Prometheus
from gateway.remote_write import RemoteWriter, encode_labels, encode_sample, encode_series
from gateway.series import MAX_POINTS, RANGES, Tiers, plan
from rules_compiler.catalog import CATALOG
from rules_compiler.downsampling import DELAY, is_downsampled, render_downsampling_rules
from rules_compiler.promql import seconds

GOLDEN = Path(__file__).parent / "golden" / "downsampling.yml"
HOST = "h-ret"
DAY = 86400
DELAY_S = int(seconds(DELAY))


# --- the rules --------------------------------------------------------------------------------


def test_rendered_rules_match_the_golden_file():
    text = render_downsampling_rules(CATALOG)
    if os.environ.get("UPDATE_GOLDEN"):
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text(), "catalog changed: review, then UPDATE_GOLDEN=1 pytest tests/test_retention.py"


def test_rules_pass_promtool_and_cover_every_metric_at_every_level(tmp_path):
    path = tmp_path / "downsampling.yml"
    path.write_text(render_downsampling_rules(CATALOG))
    check = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    groups = yaml.safe_load(path.read_text())["groups"]
    assert [(g["name"], g["interval"]) for g in groups] == [
        ("fleet-downsample-1m", "1m"),
        ("fleet-downsample-5m", "5m"),
        ("fleet-downsample-1h", "1h"),
    ]
    for g in groups:
        records = {r["record"] for r in g["rules"]}
        level = g["interval"]
        for m in CATALOG.values():
            assert {f"{m.record}:avg{level}", f"{m.record}:max{level}"} <= records
        # One count per host (its coverage), not one per series: the rest is read by nothing.
        assert {r for r in records if ":count" in r} == {f"fleet:cpu_utilization:count{level}"}
        assert all(is_downsampled(r) for r in records)
    assert not is_downsampled("fleet:cpu_utilization") and not is_downsampled("up")


# --- the automatic resolution (pure) ----------------------------------------------------------


@pytest.mark.parametrize(
    "range_,resolution,step_s,tier",
    [
        ("15m", "raw", 5, "raw"),
        ("1h", "raw", 5, "raw"),  # AC-BE-003: 720 points
        ("6h", "raw", 5, "raw"),
        ("24h", "1m", 60, "longterm"),  # the raw tier records no levels: the downsampler sends them on
        ("7d", "5m", 300, "longterm"),
        ("30d", "1h", 3600, "longterm"),
        ("90d", "1h", 3600, "longterm"),
    ],
)
def test_automatic_resolution(range_, resolution, step_s, tier):
    tiers = Tiers(raw=object(), longterm=object())
    assert plan(tiers, range_) == (resolution, step_s, tier)


def test_fast_scrapes_stay_under_the_point_limit_and_one_prometheus_answers_every_level():
    raw = plan(Tiers(object(), object(), raw_step_s=1), "6h")
    assert raw.resolution == "raw" and RANGES["6h"] / raw.step_s <= MAX_POINTS
    assert plan(Tiers(object()), "24h") == ("1m", 60, "raw")
    assert plan(Tiers(object()), "90d") == ("1h", 3600, "raw")


# --- two real tiers with synthetic history ----------------------------------------------------


def raw_samples(h0: int) -> list[tuple[int, float]]:
    """(ts, value) at 60 s from h0 - 31 d, then 5 s for the last 2 d; every window boundary has a sample on it."""
    stamps = list(range(h0 - 31 * DAY, h0 - 2 * DAY, 60)) + list(range(h0 - 2 * DAY, h0 + 1, 5))
    return [(ts, float(f"{50 + 40 * math.sin(ts * 0.00037) + ts * 7919 % 13:.3f}")) for ts in stamps]


def expected(samples, at: float, step_s: int) -> tuple[float, int]:
    """Mean and count of the raw samples a point at ``at`` stands for, (at - DELAY - step, at - DELAY],
    computed here, not by Prometheus. ``samples`` are in time order (raw_samples), so the window is
    found by bisection: a scan of the 79,000 samples per point took 20-30 s for a 7 d answer."""
    end = at - DELAY_S
    lo = bisect.bisect_right(samples, end - step_s, key=lambda s: s[0])
    hi = bisect.bisect_right(samples, end, key=lambda s: s[0])
    inside = [v for _, v in samples[lo:hi]]
    return (sum(inside) / len(inside) if inside else math.nan), len(inside)


@pytest.fixture(scope="module")
def tiers(tmp_path_factory):
    """Raw (3 d retention, old samples gone) and long-term Prometheus with the backfilled averages."""
    tmp = tmp_path_factory.mktemp("tiers")
    h0 = int(time.time() // 3600 * 3600)
    samples = raw_samples(h0)
    source = tmp / "raw.om"
    with open(source, "w") as f:
        f.write("# TYPE fleet:cpu_utilization gauge\n")
        f.writelines(f'fleet:cpu_utilization{{host_id="{HOST}"}} {v:.3f} {ts}\n' for ts, v in samples)
        f.write("# EOF\n")
    raw_data, longterm_data = tmp / "raw", tmp / "longterm"
    subprocess.run(
        [
            "promtool",
            "tsdb",
            "create-blocks-from",
            "openmetrics",
            "--max-block-duration=24h",
            str(source),
            str(raw_data),
        ],
        check=True,
        capture_output=True,
    )
    longterm_data.mkdir()
    with services.prometheus(raw_data, flags=("--storage.tsdb.retention.time=90d",)) as raw:
        written = backfill(
            Prometheus(raw.url, 60),
            Prometheus(raw.url, 60),  # where live levels would be: none yet
            ["cpu.utilization"],
            h0 - 30 * DAY,
            h0,
            [longterm_data],
        )
        assert written > 0
    # The raw tier as it runs: a short retention, so what is older than 3 d is deleted as it opens.
    raw = services.prometheus(raw_data, flags=("--storage.tsdb.retention.time=3d",))
    longterm = services.prometheus(longterm_data, flags=("--storage.tsdb.retention.time=90d",))
    with raw, longterm:
        yield {"raw": raw.url, "longterm": longterm.url, "samples": samples, "h0": h0, "tmp": tmp}


@pytest.fixture(scope="module")
def api(tiers):
    app = make_app(
        tiers["tmp"] / "gateway",
        tiers["raw"],
        LONGTERM_URL=tiers["longterm"],
        SCRAPE_INTERVAL="5s",
        RAW_RETENTION="3d",
        RATE_LIMIT_READS_PER_MIN=100_000,
    )
    client = app.test_client()
    headers = bearer(login(client, ADMIN)["access_token"])
    r = client.post("/api/v1/hosts", json={"id": HOST, "hostname": "h-ret.invalid"}, headers=headers)
    assert r.status_code == 201, r.get_json()

    def get(range_: str, resolution: str | None = None, status: int = 200) -> dict:
        query = f"host_id={HOST}&metric=cpu.utilization&range={range_}"
        if resolution:
            query += f"&resolution={resolution}"
        r = client.get(f"/api/v1/metrics/query?{query}", headers=headers)
        assert r.status_code == status, r.get_json()
        return r.get_json()

    return get


def instant(url: str, promql: str, at: float) -> list[dict]:
    return PromClient(url).query(promql, at)


def assert_averages(tiers, body, step_s: int):
    """Every point is the mean of the raw samples in (ts - step, ts]; consecutive points, no gap."""
    points = body["datapoints"]
    assert points, body
    stamps = [_epoch(p["ts"]) for p in points]
    assert all(b - a == step_s for a, b in zip(stamps, stamps[1:], strict=False)), "a gap or a repeated point"
    for ts, p in zip(stamps, points, strict=True):
        mean, n = expected(tiers["samples"], ts, step_s)
        assert n and p["value"] == pytest.approx(mean, rel=1e-9), (p, n)
    return stamps


def _epoch(text: str) -> int:
    from datetime import datetime

    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp())


def test_30d_is_answered_by_the_long_term_tier_after_the_raw_samples_are_gone(tiers, api):
    h0 = tiers["h0"]
    assert instant(tiers["raw"], f'fleet:cpu_utilization{{host_id="{HOST}"}}', h0 - 20 * DAY) == []
    body = api("30d")
    assert (body["resolution"], body["tier"]) == ("1h", "longterm")
    stamps = assert_averages(tiers, body, 3600)
    # From the first whole hour of the range up to the last backfilled hour: 30 d of hours, none missing.
    assert stamps[-1] == h0 and len(stamps) >= 30 * 24 - 1


def test_7d_past_a_3d_raw_retention_is_5m_averages_from_the_long_term_tier(tiers, api):
    body = api("7d")
    assert (body["resolution"], body["tier"]) == ("5m", "longterm")
    assert len(assert_averages(tiers, body, 300)) >= 7 * 288 - 13  # the points of the last hour are not yet due


def test_24h_is_1m_averages_from_the_long_term_tier_though_the_raw_tier_still_has_the_samples(tiers, api):
    body = api("24h")
    assert (body["resolution"], body["tier"]) == ("1m", "longterm")
    assert len(assert_averages(tiers, body, 60)) >= 24 * 60 - 61
    assert api("6h")["tier"] == "raw"


def test_windows_tile_time_no_raw_sample_counted_twice_or_missed(tiers):
    """Counts of consecutive windows add up to exactly the raw samples they span, boundary samples included."""
    h0, samples = tiers["h0"], tiers["samples"]
    for record, step_s, days in (("count1h", 3600, 30), ("count5m", 300, 3)):
        (series,) = instant(tiers["longterm"], f"fleet:cpu_utilization:{record}[{days}d]", h0)
        stamps = [int(ts) for ts, _ in series["values"]]
        assert all(b - a == step_s for a, b in zip(stamps, stamps[1:], strict=False))
        total = sum(int(v) for _, v in series["values"])
        assert total == sum(1 for ts, _ in samples if stamps[0] - step_s - DELAY_S < ts <= stamps[-1] - DELAY_S)
        assert all(int(v) == expected(samples, int(ts), step_s)[1] for ts, v in series["values"][:50])


def test_explicit_resolution_is_refused_where_it_is_not_kept_or_too_fine(api):
    assert api("30d", "raw", status=400)["error"]["details"]["valid"] == ["5m", "1h"]
    assert api("90d", "1m", status=400)["error"]["code"]
    assert api("24h", "raw", status=400)["error"]["details"]["valid"] == ["1m", "5m", "1h"]
    assert api("1h", "5m")["resolution"] == "5m"


# --- the stack: only downsampled series reach the long-term tier ------------------------------


def test_the_layer_goes_through_the_downsampler_and_only_its_levels_reach_the_long_term_tier(stack):
    """Live, end to end: a pushed layer sample is in the next 1-minute level of the long-term tier; the raw
    tier's other series reach neither, and the long-term tier holds nothing but levels."""
    urls = stack.urls()
    now = int(time.time())
    # Every 5 s over the last 80 s: whichever evaluation comes next, its window (t - 75 s, t - 15 s] has some.
    samples = [encode_sample(float(n), (now - 80 + 5 * n) * 1000) for n in range(17)]
    RemoteWriter(f"{urls['prometheus']}/api/v1/write").write(
        [
            encode_series(encode_labels([("__name__", name), ("host_id", "retention-probe")]), samples)
            for name in ("fleet:cpu_utilization", "fleet:retention_probe:avg1m", "node_load1")
        ]
    )
    downsampler = PromClient(urls["downsampler"])
    downsampler.wait_for('fleet:cpu_utilization{host_id="retention-probe"}')
    level = PromClient(urls["longterm"]).wait_for('fleet:cpu_utilization:count1m{host_id="retention-probe"}', 90)
    assert 1 <= float(level[0]["value"][1]) <= 12, level  # 12 samples at most in a window of 60 s
    received = {s["metric"]["__name__"] for s in downsampler.query('count by (__name__) ({host_id="retention-probe"})')}
    assert "fleet:cpu_utilization" in received and not received & {"fleet:retention_probe:avg1m", "node_load1"}
    assert instant(urls["longterm"], 'fleet:cpu_utilization{host_id="retention-probe"}', time.time()) == []
    names = instant(urls["longterm"], 'count by (__name__) ({__name__=~".+"})', time.time())
    assert all(is_downsampled(s["metric"]["__name__"]) for s in names), names
    # ... and the raw tier watches both.
    prom = PromClient(urls["prometheus"])
    prom.wait_for('up{job="prometheus-longterm"} == 1')
    prom.wait_for('up{job="prometheus-downsampler"} == 1')
