"""10,000 simulated hosts on one machine: register them, feed them, list them, judge them.

Starts Prometheus, Alertmanager and the gateway (gunicorn, 2 workers) from the
stack's own code (fleetwatch/stack.py: the configs and rule files `fleetwatch up`
renders: the catalog's normalisation layer, the held levels the host status reads, downsampling,
and the gateway installs the starter alert rules itself), then:

1. registers N hosts (default 10,000) with one CSV import (POST /api/v1/hosts/import)
   and times it, with the targets file the gateway writes for them;
2. remote-writes every host's raw exporter-named series (39 per host: node_cpu_seconds_total
   for 4 CPUs and 4 modes, load, memory, filesystem, disk, network, sockets, and the
   ``up`` Prometheus would write for its scrape) straight into Prometheus every 15 s,
   protobuf + snappy as gateway/remote_write.py encodes them, in requests of 20,000
   series spread over 12 s of the 15, as Prometheus spreads its scrapes of many
   targets over the interval (one burst of all of them would saturate this
   machine for a second or two every round, which no scraped fleet does). This is the cheapest
   honest feed on a 2-core machine: no 10,000 exporters and no scrapes (nothing
   but loopback may be contacted), but the samples Prometheus stores and the
   rules it evaluates are those of a scraped fleet. The stack's Prometheus config
   is used less its scrape of the hosts' exporters (their samples are sent instead);
   the downsampler and the long-term tier run as `fleetwatch up` runs them;
3. makes some hosts hot (CPU at 99 %: crit once held above 90 % for 1 min), some
   warm (memory at 80 %: warn), some silent (never a sample: crit, "never seen")
   and puts some in a maintenance window (maintenance, whatever they do), and
   checks every host's status in the host list against what it made;
4. measures the host list (random pages of 50) and ``?status=crit`` at p95 (of the answers: a
   refusal or failure is counted apart, and fails "every request answered"), asked
   in turn at a steady rate (default 4 a second: a few consoles refreshing, not a
   closed loop that would spend a core of this 2-core machine on the gateway and
   starve the Prometheus it measures), the rule groups' evaluation times (every
   evaluation meanwhile, from /api/v1/rules of the raw tier and the downsampler:
   the largest, and the median; the host summary's rules (the levels held above 90 % over a
   minute: the summary itself is read from the layer at each page) are timed as the sum of their
   times in each evaluation of the group they share with the layer; for each group's slowest, the cores each
   process used while it ran) and missed iterations, whether every 1-minute
   window of the downsampler counted every layer sample (one that reached it
   later than the windows' DELAY would be missing), the CPU each Prometheus and
   the gateway used meanwhile, the bytes each Prometheus allocated and its garbage
   collections, the bench's own CPU (its feed, requests and rule watch share the
   machine with the stack), their RSS (the gateway's: all gunicorn processes). The gateway's 2 s query cache is
   off: every request reaches Prometheus.

    .venv/bin/python -P bench/fleet.py [--hosts 10000] [--requests 200] [--rate 4] [--settle 330]
        [--backend prometheus|victoriametrics] [--json PATH] [--keep]

With ``--backend victoriametrics`` the stack is `fleetwatch up --backend victoriametrics`'s: the
feed goes to the raw VictoriaMetrics, vmalert evaluates every rule file (the held levels in a group of
its own there: rules_compiler/recording.py), and the downsampled windows are counted in the
long-term tier.

(-P: bench/ must not shadow the packages the stack imports.)
"""

from __future__ import annotations

import argparse
import bisect
import json
import random
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psutil
import requests
import yaml

from fleetwatch.stack import Ports, StackConfig, build_services, render_configs
from fleetwatch.testing.api import ADMIN, api_session
from fleetwatch.testing.figures import pct, print_checks
from fleetwatch.testing.prom import PromClient
from fleetwatch.testing.waits import free_port, wait_until
from fleetwatch.victoria import BACKENDS
from gateway.alert_events import go_time
from gateway.remote_write import RemoteWriter, encode_labels, encode_timeseries
from rules_compiler.alerts import GROUP as ALERT_GROUP
from rules_compiler.alerts import is_alert_group
from rules_compiler.catalog import CATALOG
from rules_compiler.downsampling import DELAY
from rules_compiler.recording import DISCOVERY_GROUP, HELD, SUMMARY_GROUP
from rules_compiler.recording import GROUP as LAYER_GROUP

INTERVAL_S = 15
SPREAD_S = 12.0  # a round's requests go out over this much of the interval, as spread scrapes land
CPUS = 4
GOAL_LIST_MS = 200.0
GOAL_RULES_S = 1.0
CPU_LAYER = CATALOG["cpu.utilization"].record  # one series per host that speaks
RELOGIN_S = 600.0  # well inside the gateway's 15-minute access tokens
# The backend's processes whose CPU, allocation and memory are measured, the raw tier first.
ENGINES = {
    "prometheus": ("prometheus", "downsampler", "longterm"),
    "victoriametrics": ("prometheus", "longterm", "vmagent", "vmalert"),
}
SUMMARY_PART = f"{LAYER_GROUP}: held levels"  # the held rules' share of each evaluation of their group
RAW_TIER_GROUPS = {LAYER_GROUP, SUMMARY_PART, ALERT_GROUP, DISCOVERY_GROUP}
# vmalert's iteration summary per group (RuleWatch): the sum and count of its evaluations' seconds.
ITERATIONS = re.compile(r'^vmalert_iteration_duration_seconds_(sum|count)\{group="([^"]*)"[^}]*\} (\S+)$', re.M)
MARK_S = 2.0  # how long before its end a collection of the raw tier is taken to have begun (--timeline)
# The first evaluation of each level creates its series (1.4 million at 10,000 hosts) in the
# downsampler and the long-term tier, seconds of both cores once after a start: measured after it,
# and with --settle 0 as a start-up figure (docs/benchmarks.md).
SETTLE_S = 330.0
# The gateway as shipped, but every request reaches Prometheus, and the bench's requests are not rate limited.
GATEWAY_ENV = {
    "FLEETWATCH_ADMIN_EMAIL": ADMIN[0],
    "FLEETWATCH_ADMIN_PASSWORD": ADMIN[1],
    "FLEETWATCH_BCRYPT_ROUNDS": "4",
    "FLEETWATCH_LOG_LEVEL": "WARNING",  # a line per request would weigh on the figures
    "FLEETWATCH_RATE_LIMIT_READS_PER_MIN": "100000000",
    "FLEETWATCH_RATE_LIMIT_WRITES_PER_MIN": "100000000",
    "FLEETWATCH_QUERY_CACHE_TTL_S": "0",
    "FLEETWATCH_HOSTS_IMPORT_MAX_BYTES": str(64 << 20),
}


def host_id(i: int) -> str:
    return f"sim-{i:05d}"


def kinds(hosts: int) -> dict[str, str]:
    """Each host's part: 1 % hot, 1 % warm, 1 % silent, 0.5 % in maintenance (half of those hot), the rest ok."""
    n = max(1, hosts // 100)
    out = {}
    for i in range(hosts):
        out[host_id(i)] = "hot" if i % 100 == 7 else "warm" if i % 100 == 23 else "silent" if i % 100 == 61 else "ok"
    # Maintenance: every other host of the first n/2 hot ones, and as many ok ones.
    hot = [h for h, k in out.items() if k == "hot"][: max(1, n // 2)]
    ok = [h for h, k in out.items() if k == "ok"][: max(1, n // 2)]
    for h in hot[::2] + ok[::2]:
        out[h] = f"maintenance-{out[h]}"
    return out


EXPECTED = {"hot": "crit", "warm": "warn", "silent": "crit", "ok": "ok"}


def expected_status(kind: str) -> str:
    return "maintenance" if kind.startswith("maintenance") else EXPECTED[kind]


class Fleet:
    """The hosts' raw series, labels encoded once; each round only the values and the timestamp change."""

    def __init__(self, parts: dict[str, str]):
        self.series: list[tuple[bytes, object]] = []  # (labels, value at t) for every host that speaks
        for n, (hid, kind) in enumerate(parts.items()):
            if kind == "silent":
                continue
            base = {"host_id": hid, "instance": f"{hid}.invalid:9101", "job": "fleetwatch"}
            self._host(n, base, kind.removeprefix("maintenance-"))

    def _add(self, name: str, labels: dict[str, str], value) -> None:
        pairs = sorted({**labels, "__name__": name}.items(), key=lambda kv: (kv[0] != "__name__", kv[0]))
        self.series.append((encode_labels(pairs), value if callable(value) else (lambda t, v=value: v)))

    def _host(self, n: int, base: dict, kind: str) -> None:
        spread = (n * 0.618) % 1.0
        cpu = 0.99 if kind == "hot" else 0.10 + 0.45 * spread
        mem_used = 0.80 if kind == "warm" else 0.30 + 0.30 * spread
        total = 64 * 2**30
        for c in range(CPUS):
            for mode, share in (("idle", 1 - cpu), ("iowait", 0.0), ("user", cpu * 0.7), ("system", cpu * 0.3)):
                self._add("node_cpu_seconds_total", {**base, "cpu": str(c), "mode": mode}, lambda t, s=share: s * t)
        for k, name in enumerate(("node_load1", "node_load5", "node_load15")):
            self._add(name, base, CPUS * cpu + 0.1 * k)
        for name, value in (
            ("node_memory_MemTotal_bytes", total),
            ("node_memory_MemAvailable_bytes", total * (1 - mem_used)),
            ("node_memory_Cached_bytes", total * 0.1),
            ("node_memory_SReclaimable_bytes", total * 0.01),
            ("node_memory_SwapTotal_bytes", 0.0),
            ("node_memory_SwapFree_bytes", 0.0),
            ("node_sockstat_TCP_inuse", 40 + n % 50),
        ):
            self._add(name, base, float(value))
        fs = {**base, "mountpoint": "/", "device": "/dev/sda1", "fstype": "ext4"}
        self._add("node_filesystem_size_bytes", fs, 500e9)
        self._add("node_filesystem_avail_bytes", fs, 500e9 * (0.4 + 0.2 * spread))
        for name, per_s in (
            ("node_disk_reads_completed_total", 50),
            ("node_disk_writes_completed_total", 80),
            ("node_disk_read_bytes_total", 2e6),
            ("node_disk_written_bytes_total", 4e6),
        ):
            self._add(name, {**base, "device": "sda"}, lambda t, r=per_s * (0.5 + spread): r * t)
        for name, per_s in (
            ("node_network_receive_bytes_total", 1.25e6),
            ("node_network_transmit_bytes_total", 2.5e6),
            ("node_network_receive_drop_total", 0.0),
            ("node_network_transmit_drop_total", 0.0),
            ("node_network_receive_errs_total", 0.0),
            ("node_network_transmit_errs_total", 0.0),
        ):
            self._add(name, {**base, "device": "eth0"}, lambda t, r=per_s * (0.5 + spread): r * t)
        self._add("up", base, 1.0)

    def send(self, writer: RemoteWriter, began: float, batch: int = 20_000) -> float:
        """One round: every series' sample, in requests of ``batch`` series spread over SPREAD_S from ``began``.

        Prometheus spreads its scrapes of many targets over the interval; each
        request's samples carry the moment it is sent. Returns the seconds spent
        sending (the receiver's ingest included).
        """
        starts = range(0, len(self.series), batch)
        busy = 0.0
        for n, start in enumerate(starts):
            time.sleep(max(0.0, began + n * SPREAD_S / len(starts) - time.time()))
            now = time.time()
            ts = int(now * 1000)
            writer.write(
                [encode_timeseries(labels, [(ts, value(now))]) for labels, value in self.series[start : start + batch]]
            )
            busy += time.time() - now
        return busy


class Feeder(threading.Thread):
    """Sends the fleet's samples every INTERVAL_S, as scrapes would land; remembers each round's length and work."""

    def __init__(self, fleet: Fleet, writer: RemoteWriter):
        super().__init__(daemon=True, name="feeder")
        self.fleet, self.writer = fleet, writer
        self.rounds: list[float] = []  # from the round's start to its last request answered
        self.busy: list[float] = []  # the time its requests took
        self.errors: list[str] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        next_at = time.time()
        while not self.stopped.is_set():
            began = time.time()
            try:
                self.busy.append(self.fleet.send(self.writer, began))
            except Exception as exc:  # noqa: BLE001 - counted and shown, the next round retries
                self.errors.append(f"{type(exc).__name__}: {exc}"[:200])
            self.rounds.append(time.time() - began)
            next_at += INTERVAL_S
            self.stopped.wait(max(0.0, next_at - time.time()))


def csv_rows(parts: dict[str, str]) -> str:
    lines = ["hostname,ips,tags,exporter,id"]
    for n, hid in enumerate(parts):
        ip = f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}"
        lines.append(f"{hid}.example.com,{ip},rack:r{n % 40};zone:z{n % 3},{hid}.invalid:9101,{hid}")
    return "\n".join(lines) + "\n"


def without_the_hosts_job(path: Path) -> None:
    """A scrape config of the stack (Prometheus's, vmagent's) less the hosts' job: their samples are sent."""
    config = yaml.safe_load(path.read_text())
    config["scrape_configs"] = [j for j in config["scrape_configs"] if j["job_name"] != "fleetwatch"]
    path.write_text(yaml.safe_dump(config, sort_keys=False))


def summed(text: str, names) -> dict[str, float]:
    """Each of ``names`` that a /metrics page holds, summed over its labels."""
    figures: dict[str, float] = {}
    for m in re.finditer(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{[^}]*\})? (\S+)$", text, re.M):
        if m.group(1) in names:
            figures[m.group(1)] = figures.get(m.group(1), 0.0) + float(m.group(2))
    return figures


def shown_as(group: str) -> str:
    """The name a rule group's figures go by: the alert group whatever its phase's suffix (GROUP-N), and
    vmalert's group of the held levels as their share of the layer's group they are on Prometheus."""
    return ALERT_GROUP if is_alert_group(group) else SUMMARY_PART if group == SUMMARY_GROUP else group


def prometheus_figures(prom_url: str) -> dict:
    """From a store's (or vmalert's) own /metrics: each rule group's missed iterations, its CPU seconds,
    the bytes it allocated and its garbage collections (what makes every query of the process slow at once)."""
    text = requests.get(f"{prom_url}/metrics", timeout=60).text
    missed = re.finditer(
        r'^(?:prometheus_rule_group_iterations_missed_total\{rule_group="[^"]*;([^"]+)"'
        r'|vmalert_iteration_missed_total\{group="([^"]+)"[^}]*)\} (\S+)$',
        text,
        re.M,
    )
    names = {"cpu_s": "process_cpu_seconds_total", "alloc_b": "go_memstats_alloc_bytes_total"}
    names["gcs"] = "go_gc_duration_seconds_count"
    figures = summed(text, names.values())
    return {
        "missed": {shown_as(m.group(1) or m.group(2)): float(m.group(3)) for m in missed},
        **{key: figures.get(name, 0.0) for key, name in names.items()},
    }


# The raw tier's figures a --timeline samples every second: summed over their labels.
TIMELINE_METRICS = (
    "go_gc_duration_seconds_count",  # collections ended
    "go_memstats_last_gc_time_seconds",  # when the last one ended
    "go_memstats_heap_alloc_bytes",
    "go_memstats_next_gc_bytes",
    "go_memstats_alloc_bytes_total",
    "go_goroutines",
    "prometheus_tsdb_head_samples_appended_total",
    "prometheus_tsdb_head_chunks_created_total",  # chunks cut: every series' at once on a block boundary
    "prometheus_tsdb_wal_fsync_duration_seconds_count",
    "prometheus_tsdb_wal_page_flushes_total",
    "prometheus_remote_storage_samples_total",  # layer samples sent on to the downsampler
    "prometheus_remote_storage_samples_pending",
    "prometheus_engine_query_duration_seconds_count",
    "prometheus_http_requests_total",
)


def raw_tier_figures(prom_url: str) -> dict[str, float]:
    try:
        return summed(requests.get(f"{prom_url}/metrics", timeout=5).text, TIMELINE_METRICS)
    except requests.RequestException:
        return {}


def pressure_stalls() -> dict[str, float]:
    """Microseconds so far that some task waited for a CPU, and for I/O (Linux PSI; none without it)."""
    stalls = {}
    for kind in ("cpu", "io"):
        try:
            some = Path(f"/proc/pressure/{kind}").read_text().splitlines()[0]
        except OSError:
            continue
        stalls[f"psi_{kind}_some_us"] = float(some.rsplit("total=", 1)[1])
    return stalls


class RuleWatch(threading.Thread):
    """Every evaluation of every rule group of each Prometheus while it runs (each group's last one, read
    every second); of each group's slowest, when it was, its slowest rules, how busy the machine's
    CPUs were in the second it was read (all of them slow at once, and busy: waiting, not work), and
    which processes kept them busy while it ran (``pids`` and the bench, in cores; "other": the rest of
    the machine). An evaluation that ended before the watch began has no such figures.

    ``vmalert``: ``rule_urls`` are vmalert's, whose rules API gives no group's time and rules' times
    that are not their own (two rules of 0.3 and 0.1 s showed 0.71 and 0.81 s): each group's
    evaluations are told by its iteration summary's sum and count instead, and begin, as far as
    the watch knows, up to a second early."""

    def __init__(
        self, rule_urls: list[str], raw_url: str, pids: dict[str, int], timeline: bool = False, vmalert: bool = False
    ):
        super().__init__(daemon=True, name="rule-watch")
        self.urls, self.raw_url, self.pids, self.vmalert = rule_urls, raw_url, pids, vmalert
        self.iterations: dict[str, dict[str, float]] = {}  # vmalert: group -> its summary's last sum and count
        self.unseen = 0  # vmalert: evaluations between two readings of their group, so not told apart
        # With --timeline: every second, the raw tier's own figures (TIMELINE_METRICS) and the machine's
        # pressure stall totals, to lay beside each evaluation and see what a slow one coincided with.
        self.timeline: list[dict] | None = [] if timeline else None
        # group -> its lastEvaluation -> (when it began, wall seconds; the seconds it took)
        self.seen: dict[str, dict[str, tuple[float, float]]] = {}
        self.slowest: dict[str, dict] = {}
        # With --timeline: each rule's evaluations, "group/record{labels}" -> its lastEvaluation -> seconds.
        self.rule_seen: dict[str, dict[str, float]] = {}
        self.samples: list[tuple[float, dict[str, float]]] = []  # (wall time, CPU seconds so far by process)
        self.stopped = threading.Event()

    def _sample(self) -> None:
        machine = psutil.cpu_times()
        used = {name: cpu_s(pid) for name, pid in self.pids.items()}
        used["bench"] = time.process_time()  # its own threads only: the stack's processes are its children
        used["machine"] = machine.user + machine.nice + machine.system + machine.irq + machine.softirq
        self.samples.append((time.time(), used))
        if self.timeline is not None:
            figures = {**pressure_stalls(), **raw_tier_figures(self.raw_url)}
            self.timeline.append({"t": self.samples[-1][0], "cpu_s": used, **figures})

    def cores_during(self, start: float, end: float) -> dict[str, float]:
        """Cores each process used from the last sample at or before ``start`` to the first at or after ``end``."""
        before = next((s for s in reversed(self.samples) if s[0] <= start), self.samples[0])
        after = next((s for s in self.samples if s[0] >= end), self.samples[-1])
        span = after[0] - before[0]
        if span <= 0:
            return {}
        cores = {name: (after[1][name] - before[1][name]) / span for name in after[1]}
        cores["other"] = cores.pop("machine") - sum(cores.values())
        return {name: round(c, 2) for name, c in cores.items()}

    def run(self) -> None:
        psutil.cpu_percent()
        self._sample()
        while not self.stopped.wait(1.0):
            busy = psutil.cpu_percent()
            self._sample()
            for url in self.urls:
                try:
                    (self._vmalert if self.vmalert else self._prometheus)(url, busy)
                except (requests.RequestException, KeyError, ValueError):
                    continue  # a slow answer is no evaluation lost: each one stays the last for its interval

    def _prometheus(self, url: str, busy: float) -> None:
        for g in requests.get(f"{url}/api/v1/rules", timeout=10).json()["data"]["groups"]:
            last = go_time(g["lastEvaluation"])
            if last is None:
                continue  # not evaluated yet
            self._saw(shown_as(g["name"]), g["lastEvaluation"], last, g["evaluationTime"], g["rules"], busy)
            # The held rules follow the layer's in its group: their own share of the group's
            # last evaluation, unless one of them is already in the next (its start past the end).
            held = [r for r in g["rules"] if r["name"] == HELD]
            ended = last + timedelta(seconds=g["evaluationTime"])
            if held and all((go_time(r["lastEvaluation"]) or last) <= ended for r in held):
                seconds = sum(r["evaluationTime"] for r in held)
                began = min(go_time(r["lastEvaluation"]) or last for r in held)
                self._saw(SUMMARY_PART, g["lastEvaluation"], began, seconds, held, busy)

    def _vmalert(self, url: str, busy: float) -> None:
        text, now = requests.get(f"{url}/metrics", timeout=10).text, time.time()
        totals: dict[str, dict[str, float]] = {}
        for kind, group, value in ITERATIONS.findall(text):
            totals.setdefault(group, {})[kind] = float(value)
        for group, now_at in totals.items():
            before, self.iterations[group] = self.iterations.get(group), now_at
            if before is None or now_at["count"] == before["count"]:
                continue  # the first reading, or no evaluation since the last
            if now_at["count"] > before["count"] + 1:
                self.unseen += int(now_at["count"] - before["count"])  # only their sum is known
                continue
            seconds = now_at["sum"] - before["sum"]
            began = datetime.fromtimestamp(now - seconds, UTC)
            self._saw(shown_as(group), f"{group}#{now_at['count']:.0f}", began, seconds, [], busy)

    def _saw(self, name: str, at: str, began: datetime, seconds: float, rules: list[dict], busy: float) -> None:
        self.seen.setdefault(name, {})[at] = (began.timestamp(), seconds)
        if self.timeline is not None and name != SUMMARY_PART:  # the held rules are the layer's group's
            for r in rules:
                labels = ",".join(f"{k}={v}" for k, v in sorted(r.get("labels", {}).items()))
                key = f"{name}/{r['name']}{{{labels}}}"
                self.rule_seen.setdefault(key, {})[r["lastEvaluation"]] = r["evaluationTime"]
        if seconds > self.slowest.get(name, {}).get("s", -1):
            slow = sorted(rules, key=lambda r: -r["evaluationTime"])[:3]
            self.slowest[name] = {
                "s": seconds,
                "at": at,
                "cpu_busy_pct": busy,
                "rules": [(r["name"], r.get("labels", {}), round(r["evaluationTime"], 3)) for r in slow],
            }

    def figures(self) -> dict[str, dict]:
        # Cores are counted at the end, not when the evaluation is seen: the sample after its end is
        # often not taken yet then (H3's slowest summary had none).
        # On Prometheus the held rules and the layer share a group: never at once.
        one_group = set() if self.vmalert else {LAYER_GROUP, SUMMARY_PART}
        for name, slow in self.slowest.items():
            start, seconds = self.seen[name][slow["at"]]
            end = start + seconds
            slow["cores_by_process"] = self.cores_during(start, end)
            # Which other groups evaluated while it ran, each evaluation's seconds: what it may have waited for.
            slow["overlapping"] = sorted(
                (other, round(t, 3))
                for other, evaluations in self.seen.items()
                if other != name and not {name, other} <= one_group
                for began, t in evaluations.values()
                if began < end and began + t > start
            )
        figures = {
            name: {
                "evaluations": len(t),
                "max": round(max(t), 3),
                "median": round(statistics.median(t), 3),
                "slowest": self.slowest.get(name),
            }
            for name, t in ((name, [t for _, t in seen.values()]) for name, seen in sorted(self.seen.items()))
        }
        if {LAYER_GROUP, ALERT_GROUP} <= figures.keys():
            # How far into the layer's interval the alert group starts (its name sets it: rules_compiler.alerts.LAG).
            layer = min(began for began, _ in self.seen[LAYER_GROUP].values())
            lags = [(began - layer) % INTERVAL_S for began, _ in self.seen[ALERT_GROUP].values()]
            figures[ALERT_GROUP]["after_the_layer_s"] = round(statistics.median(lags), 2)
        if self.timeline:
            ended = sorted(
                {s["go_memstats_last_gc_time_seconds"] for s in self.timeline if s.get("go_gc_duration_seconds_count")}
            )
            for name in RAW_TIER_GROUPS & figures.keys():
                figures[name]["beside_a_collection"] = self.beside_a_collection(name, ended)
        return figures

    def beside_a_collection(self, name: str, ended: list[float]) -> dict[str, dict]:
        """The group's evaluations that overlapped a garbage collection of the raw tier, and the others.

        ``ended``: when each collection ended, in order. Go says when a collection ended, not when it
        began: its marking kept both cores busy for 1-2 s before (J1's timeline), so an evaluation
        overlapped one that ended while it ran or up to MARK_S after.
        """
        split: dict[str, list[float]] = {"overlapping": [], "others": []}
        for began, seconds in self.seen[name].values():
            i = bisect.bisect_left(ended, began)
            split["overlapping" if i < len(ended) and ended[i] <= began + seconds + MARK_S else "others"].append(
                seconds
            )
        return {
            k: {"evaluations": len(t), "median": round(statistics.median(t), 3), "max": round(max(t), 3)}
            if t
            else {"evaluations": 0}
            for k, t in split.items()
        }


def downsampled_windows(downsampler_url: str, seconds_: float) -> dict[str, int]:
    """How many 1-minute windows of CPU the downsampler recorded over the last ``seconds_``, and how many layer
    samples they lack: each should count 60 / INTERVAL_S (evaluations are exactly that far apart)."""
    window, at = f"{int(seconds_)}s", time.time()
    prom = PromClient(downsampler_url)
    # Both at one instant: an evaluation of the level between two "now"s counted its samples, not its windows.
    windows = prom.query(f"sum(count_over_time(fleet:cpu_utilization:count1m[{window}]))", at)
    counted = prom.query(f"sum(sum_over_time(fleet:cpu_utilization:count1m[{window}]))", at)
    n = int(float(windows[0]["value"][1])) if windows else 0
    return {"windows": n, "missing": n * 60 // INTERVAL_S - (int(float(counted[0]["value"][1])) if counted else 0)}


def _process_tree(pid: int) -> list[psutil.Process]:
    """A process and all its children (gunicorn's workers)."""
    proc = psutil.Process(pid)
    return [proc, *proc.children(recursive=True)]


def rss_mb(pid: int) -> float:
    """The resident memory of a process and all its children, MiB."""
    return sum(p.memory_info().rss for p in _process_tree(pid)) / 2**20


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of a process and all its children."""
    return sum(sum(p.cpu_times()[:2]) for p in _process_tree(pid))


def timed_get(session: requests.Session, url: str, params: dict) -> tuple[float, dict | None]:
    """Milliseconds, and the answer (None: not a 200, printed)."""
    began = time.perf_counter()
    r = session.get(url, params=params, timeout=60)
    took = (time.perf_counter() - began) * 1000
    if r.status_code != 200:
        print(f"  {r.status_code} after {took:.0f} ms for {params}: {r.text[:200]}")
        return took, None
    return took, r.json()


def answer_ms(took: list[float]) -> dict[str, float]:
    """p50 and p95 of the answers' milliseconds; NaN, which fails every goal, where none came."""
    return {f"p{q}": round(pct(took, q), 1) if took else float("nan") for q in (50, 95)}


def all_statuses(session: requests.Session, url: str) -> dict[str, dict]:
    """Every listed host by id, paging through the host list (a page that fails is asked again, at most twice)."""
    out, offset = {}, 0
    while True:
        for _ in range(3):
            _, page = timed_get(session, f"{url}/api/v1/hosts", {"limit": 500, "offset": offset})
            if page is not None:
                break
        out.update({h["id"]: h for h in page["hosts"]})
        offset += 500
        if offset >= page["total"]:
            return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hosts", type=int, default=10_000)
    p.add_argument("--requests", type=int, default=200, help="requests per latency figure")
    p.add_argument("--rate", type=float, default=4.0, help="requests a second while measuring (both kinds in turn)")
    p.add_argument("--workers", type=int, default=2, help="gunicorn workers")
    p.add_argument(
        "--settle",
        type=float,
        default=SETTLE_S,
        help=f"seconds between warming up and measuring (default {SETTLE_S:g}: past the first 5-minute level)",
    )
    p.add_argument(
        "--prometheus-gogc",
        type=int,
        default=StackConfig.prometheus_gogc,
        help=f"Go's GOGC for the raw tier, as fleetwatch up takes it (default {StackConfig.prometheus_gogc})",
    )
    p.add_argument(
        "--prometheus-memory-limit",
        type=int,
        default=0,
        metavar="MIB",
        help="a fixed heap goal for the raw tier instead of GOGC, as fleetwatch up takes it (L1/L2: 4500)",
    )
    p.add_argument("--json", type=Path)
    p.add_argument(
        "--timeline",
        type=Path,
        help="write every evaluation of every group and a per-second sample of the raw tier's figures here (JSON)",
    )
    p.add_argument(
        "--backend",
        choices=BACKENDS,
        default="prometheus",
        help="the storage backend, as fleetwatch up --backend takes it (docs/backends.md)",
    )
    p.add_argument("--keep", action="store_true", help="keep the state directory (TSDB, logs) and say where")
    args = p.parse_args()

    parts = kinds(args.hosts)
    tmp = Path(tempfile.mkdtemp(prefix="fleetwatch-bench-fleet-"))
    if args.keep:
        print(f"state, TSDB and logs in {tmp}")
    config = StackConfig(
        state_dir=tmp / "state",
        ports=Ports(*(free_port() for _ in Ports._fields)),
        scrape_interval=f"{INTERVAL_S}s",
        gateway_workers=args.workers,
        prometheus_gogc=args.prometheus_gogc,
        prometheus_memory_limit_mib=args.prometheus_memory_limit,
        backend=args.backend,
        gateway_env=GATEWAY_ENV,
    )
    paths = render_configs(config)
    for scraper in ("prometheus", "vmagent"):
        if scraper in paths:  # vmagent: --backend victoriametrics
            without_the_hosts_job(paths[scraper])
    services = {s.name: s for s in build_services(config, paths)}
    started = []
    figures: dict = {
        "hosts": args.hosts,
        "backend": args.backend,
        "prometheus_gogc": args.prometheus_gogc,
        "prometheus_memory_limit_mib": args.prometheus_memory_limit,
        "load_avg_at_start": [round(x, 2) for x in psutil.getloadavg()],
    }
    feeder = None
    try:
        for name in [n for n in services if n != "exporter"]:  # the stack's order: stores, rule engines, gateway
            services[name].start()
            started.append(services[name])
            services[name].wait_ready(120)
        prom_url = f"http://127.0.0.1:{config.ports.prometheus}"
        url = f"http://127.0.0.1:{config.ports.gateway}"
        prom = PromClient(prom_url)
        api = api_session(url)

        began = time.perf_counter()
        r = api.post(
            f"{url}/api/v1/hosts/import", data=csv_rows(parts), headers={"Content-Type": "text/csv"}, timeout=600
        )
        figures["register_s"] = round(time.perf_counter() - began, 2)
        assert r.status_code == 201, r.text[:500]
        targets = paths["local_target"].with_name("hosts.json")
        wait_until(lambda: targets.exists() and len(json.loads(targets.read_text())) == args.hosts, 60, "targets", 0.2)
        figures["register_with_targets_s"] = round(time.perf_counter() - began, 2)
        print(
            f"registered {args.hosts:,} hosts in one CSV import: {figures['register_s']} s "
            f"({figures['register_with_targets_s']} s with the targets file written)"
        )

        in_maintenance = [h for h, k in parts.items() if k.startswith("maintenance")]
        r = api.post(
            f"{url}/api/v1/alerts/silences",
            json={"scope": {"hosts": in_maintenance}, "ends_at": "2099-01-01T00:00:00Z", "comment": "bench"},
        )
        assert r.status_code == 201, r.text[:500]

        fleet = Fleet(parts)
        print(f"{len(fleet.series):,} series remote-written every {INTERVAL_S} s")
        feeder = Feeder(fleet, RemoteWriter(f"{prom_url}/api/v1/write", timeout_s=120))
        feeder.start()
        hot = sum(1 for k in parts.values() if k.endswith("hot"))
        speaking = sum(1 for k in parts.values() if k != "silent")
        # Crit needs CPU held above 90 % for a minute of recorded values: two to three minutes in.
        wait_until(
            # Six rounds: rate()'s 60 s window full (fewer samples read as a lower rate), and a minute held.
            lambda: (
                len(feeder.rounds) >= 6
                and prom.query(f'count({HELD}{{summary="cpu_pct"}} > 90)')
                and int(prom.query(f'count({HELD}{{summary="cpu_pct"}} > 90)')[0]["value"][1]) == hot
                and int(prom.query(f"count({CPU_LAYER})")[0]["value"][1]) == speaking
            ),
            600,
            "every speaking host in the layer and every hot one held above 90 %",
            5.0,
        )
        print(f"warmed up after {len(feeder.rounds)} rounds (the last spent {feeder.busy[-1]:.1f} s sending)")

        time.sleep(args.settle)
        # An access token lives 15 minutes (ACCESS_TOKEN_TTL): the console a user keeps open refreshes
        # its own; the bench logs in anew after settling and every RELOGIN_S (I4's long run got 401s).
        api, logged_in = api_session(url), time.monotonic()
        listed = all_statuses(api, url)
        wrong = [
            (h, expected_status(k), listed.get(h, {}).get("status"), listed.get(h, {}).get("status_reasons"))
            for h, k in parts.items()
            if listed.get(h, {}).get("status") != expected_status(k)
        ]
        figures["wrong_statuses"] = len(wrong)
        for h, expected, status, reasons in wrong[:5]:
            print(f"wrong status: {h} is {status} {reasons}, expected {expected}")

        rng = random.Random(1)
        list_ms, crit_ms = [], []  # answers only: what was asked and not timed was not answered
        crit_expected = sum(1 for k in parts.values() if expected_status(k) == "crit")
        crit_totals = set()
        gateway_pid = services["gateway"].process.pid
        engines = ENGINES[args.backend]
        proms = {name: f"http://127.0.0.1:{getattr(config.ports, name)}" for name in engines}
        before = {name: prometheus_figures(u) for name, u in proms.items()}
        wall, gateway_cpu, bench_cpu = time.monotonic(), cpu_s(gateway_pid), time.process_time()
        pids = {name: services[name].process.pid for name in (*engines, "alertmanager", "gateway")}
        vmalert = args.backend == "victoriametrics"  # it evaluates every file; on Prometheus two tiers do
        rules = RuleWatch(
            [proms["vmalert"]] if vmalert else [proms["prometheus"], proms["downsampler"]],
            proms["prometheus"],
            pids,
            timeline=args.timeline is not None,
            vmalert=vmalert,
        )
        rules.start()
        for n in range(args.requests):
            time.sleep(max(0.0, wall + 2 * n / args.rate - time.monotonic()))
            if time.monotonic() - logged_in > RELOGIN_S:
                api, logged_in = api_session(url), time.monotonic()
            offset = rng.randrange(0, max(1, args.hosts // 50)) * 50
            # Only answers are timed: a fast refusal (I4's expired token) would pull the percentiles down;
            # refusals and failures fail "every request answered" instead.
            took, page = timed_get(api, f"{url}/api/v1/hosts", {"limit": 50, "offset": offset})
            if page is not None:
                list_ms.append(took)
            crit_offset = rng.randrange(0, max(1, crit_expected // 50 + 1)) * 50
            took, page = timed_get(api, f"{url}/api/v1/hosts", {"status": "crit", "limit": 50, "offset": crit_offset})
            if page is not None:
                crit_ms.append(took)
                crit_totals.add(page["total"])
        rules.stopped.set()
        rules.join(20)
        if args.timeline:
            evaluations = {name: sorted(seen.values()) for name, seen in rules.seen.items()}
            by_rule = {key: list(seen.values()) for key, seen in rules.rule_seen.items()}
            args.timeline.write_text(
                json.dumps({"evaluations": evaluations, "samples": rules.timeline, "rules": by_rule})
            )
        after = {name: prometheus_figures(u) for name, u in proms.items()}
        missed = {
            k: int(v - before[name]["missed"].get(k, 0)) for name in proms for k, v in after[name]["missed"].items()
        }
        measured = time.monotonic() - wall
        cores = {name: (after[name]["cpu_s"] - before[name]["cpu_s"]) / measured for name in proms}
        alloc = {name: (after[name]["alloc_b"] - before[name]["alloc_b"]) / measured / 2**20 for name in proms}
        gcs = {name: int(after[name]["gcs"] - before[name]["gcs"]) for name in proms}
        bench_cores = (time.process_time() - bench_cpu) / measured
        gateway_cpu_ms = 1000 * (cpu_s(gateway_pid) - gateway_cpu) / (2 * args.requests)

        figures.update(
            {
                "series": len(fleet.series),
                "feed_round_s": {
                    "median": round(statistics.median(feeder.rounds), 2),
                    "max": round(max(feeder.rounds), 2),
                    "sending_median": round(statistics.median(feeder.busy), 2),
                },
                "feed_errors": len(feeder.errors),
                "host_list_ms": answer_ms(list_ms),
                "status_crit_ms": answer_ms(crit_ms),
                "status_crit_totals": sorted(crit_totals),
                "request_errors": 2 * args.requests - len(list_ms) - len(crit_ms),
                "rule_group_missed_iterations": missed,
                "prometheus_cpu_cores": {name: round(c, 2) for name, c in cores.items()},
                "prometheus_alloc_mib_per_s": {name: round(a, 1) for name, a in alloc.items()},
                "prometheus_gcs": gcs,
                "bench_cpu_cores": round(bench_cores, 2),
                # On VictoriaMetrics vmalert's levels reach the long-term tier through vmagent.
                "downsampled": downsampled_windows(proms["longterm" if vmalert else "downsampler"], measured),
                "gateway_cpu_ms_per_request": round(gateway_cpu_ms, 1),
                "status_crit_expected": crit_expected,
                "measured_s": round(measured, 1),
                "rule_group_s": rules.figures(),
                "rule_evaluations_unseen": rules.unseen,
                "prometheus_rss_mb": {name: round(rss_mb(services[name].process.pid), 1) for name in proms},
                "gateway_rss_mb": round(rss_mb(services["gateway"].process.pid), 1),
                "load_avg_at_end": [round(x, 2) for x in psutil.getloadavg()],
            }
        )
    finally:
        if feeder is not None:
            feeder.stopped.set()
            feeder.join(120)
        for service in reversed(started):
            service.stop(20)
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)  # gigabytes of TSDB at 10,000 hosts

    f = figures
    print(
        f"feed: {f['series']:,} series per round spread over {SPREAD_S:g} s, round median "
        f"{f['feed_round_s']['median']} s, max {f['feed_round_s']['max']} s "
        f"(sending {f['feed_round_s']['sending_median']} s of it), {f['feed_errors']} failed rounds"
    )
    print(f"host list, page of 50:        p50 {f['host_list_ms']['p50']} ms, p95 {f['host_list_ms']['p95']} ms")
    print(
        f"?status=crit, page of 50:     p50 {f['status_crit_ms']['p50']} ms, p95 {f['status_crit_ms']['p95']} ms "
        f"(totals {f['status_crit_totals']}, expected {f['status_crit_expected']})"
    )
    for name, seen in f["rule_group_s"].items():
        missed = f["rule_group_missed_iterations"].get(name, 0)
        print(
            f"rule group {name:<34} {seen['evaluations']:>3} evaluations: median {seen['median']:.3f} s, "
            f"max {seen['max']:.3f} s, {missed} iterations missed"
        )
        if "after_the_layer_s" in seen:
            print(f"    starting {seen['after_the_layer_s']:.2f} s into the layer's {INTERVAL_S} s interval")
        if seen["slowest"] and seen["slowest"]["cores_by_process"]:
            busy = sorted(seen["slowest"]["cores_by_process"].items(), key=lambda kv: -kv[1])
            print(f"    while its slowest ran, cores: {', '.join(f'{k} {v:.2f}' for k, v in busy)}")
        if seen["slowest"] and seen["slowest"].get("overlapping"):
            print(f"    and evaluating: {', '.join(f'{g} {t:.2f} s' for g, t in seen['slowest']['overlapping'])}")
        if "beside_a_collection" in seen:
            beside = seen["beside_a_collection"]
            print(
                "    "
                + "; ".join(
                    f"{b['evaluations']} {label}"
                    + (f": median {b['median']:.3f} s, max {b['max']:.3f} s" if b["evaluations"] else "")
                    for label, b in (
                        ("overlapping a garbage collection of the raw tier", beside["overlapping"]),
                        ("others", beside["others"]),
                    )
                )
            )
    print(
        f"while measuring ({f['measured_s']} s at {args.rate:g} requests/s): "
        f"{args.backend} used {f['prometheus_cpu_cores']} cores; the gateway "
        f"{f['gateway_cpu_ms_per_request']} ms of CPU per request (its status watcher included); "
        f"{f['request_errors']} requests failed"
    )
    print(
        f"{args.backend} allocated {f['prometheus_alloc_mib_per_s']} MiB/s and collected garbage "
        f"{f['prometheus_gcs']} times; the bench itself (feed, requests, rule watch) used {f['bench_cpu_cores']} cores"
    )
    if f["rule_evaluations_unseen"]:
        print(f"{f['rule_evaluations_unseen']} evaluations of vmalert's groups came too close together to tell apart")
    print(f"RSS: {args.backend} {f['prometheus_rss_mb']} MiB, gateway (all processes) {f['gateway_rss_mb']} MiB")
    d = f["downsampled"]
    print(
        f"1-minute windows of fleet:cpu_utilization downsampled meanwhile: {d['windows']:,}, "
        f"{d['missing']} layer samples missing from them"
    )
    print(f"hosts with a wrong status: {f['wrong_statuses']}")
    print(f"load average at start {f['load_avg_at_start']}, at end {f['load_avg_at_end']}")
    groups = {name: seen["max"] for name, seen in f["rule_group_s"].items()}
    checks = {
        "every host's status as made (0 wrong)": f["wrong_statuses"] == 0,
        f"host list p95 <= {GOAL_LIST_MS:g} ms": f["host_list_ms"]["p95"] <= GOAL_LIST_MS,
        f"?status=crit p95 <= {GOAL_LIST_MS:g} ms": f["status_crit_ms"]["p95"] <= GOAL_LIST_MS,
        "?status=crit total as made": f["status_crit_totals"] == [f["status_crit_expected"]],
        "every request answered": f["request_errors"] == 0,
        f"starter alert rules evaluate in < {GOAL_RULES_S:g} s": groups.get(ALERT_GROUP, 99) < GOAL_RULES_S,
        f"host summary rules (held levels) evaluate in < {GOAL_RULES_S:g} s": (
            groups.get(SUMMARY_PART, 99) < GOAL_RULES_S
        ),
        f"feed rounds within {INTERVAL_S} s": f["feed_round_s"]["max"] < INTERVAL_S and f["feed_errors"] == 0,
        f"every layer sample in its downsampled window (in time for the {DELAY} delay)": (
            f["downsampled"]["windows"] > 0 and f["downsampled"]["missing"] == 0
        ),
    }
    print_checks(checks, figures, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
