"""The metric catalog: rendered rules, name resolution, and every metric's value against psutil's or NVML's own."""

from __future__ import annotations

import json
import math
import mmap
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace as NS
from typing import NamedTuple

import psutil
import pynvml
import pytest
import requests
import yaml

from exporter import catalog_table as T
from fleetwatch.testing.waits import wait_until
from rules_compiler.catalog import CATALOG, THROTTLE_REASONS, UnknownMetric, catalog_listing, resolve, valid_names
from rules_compiler.recording import (
    GROUP,
    HELD,
    HOST_SUMMARY,
    JUDGED,
    SUMMARY_GROUP,
    rate_window_for,
    render_normalisation_rules,
)
from tests.fake_nvml import GI_MIB, TOTAL, FakePynvml, h100, mig_h100
from tests.gpu_nodes import GpuNode

GOLDEN = Path(__file__).parent / "golden" / "normalisation.yml"
MiB = 1024 * 1024
WINDOW_S = int(rate_window_for(1).removesuffix("s"))  # the stack fixture scrapes every second
EDGE_S = 1.5  # a scrape interval and the exporter's reading after the scrape's timestamp


def test_rendered_rules_match_the_golden_file():
    text = render_normalisation_rules(CATALOG, "5s", rate_window_for(5))
    if os.environ.get("UPDATE_GOLDEN"):
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text(), "catalog changed: review, then UPDATE_GOLDEN=1 pytest tests/test_catalog.py"


def test_promtool_accepts_the_rules(tmp_path):
    path = tmp_path / "rules.yml"
    path.write_text(render_normalisation_rules(CATALOG, "5s", "20s"))
    r = subprocess.run(["/usr/bin/promtool", "check", "rules", str(path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"SUCCESS: {len(CATALOG) + len(JUDGED) + 1} rules found" in r.stdout  # + discovered


def test_a_host_is_held_above_the_crit_line_after_a_whole_minute_of_recorded_values(tmp_path):
    """Prometheus's own rule engine (promtool test rules) over raw memory readings every 15 s: a host at
    95 % for a minute of the layer's values is held (crit), one at 95 % for 45 s is not."""
    (tmp_path / "rules.yml").write_text(render_normalisation_rules(CATALOG, "15s", rate_window_for(15)))
    total = {f'node_memory_MemTotal_bytes{{host_id="{h}"}}': "100x20" for h in ("steady", "blip")}
    # Samples every 15 s from 0 s: 50 % used, then 95 % from 60 s on (steady) or for 60-105 s (blip).
    available = {
        'node_memory_MemAvailable_bytes{host_id="steady"}': "50x3 5x16",
        'node_memory_MemAvailable_bytes{host_id="blip"}': "50x3 5x3 50x12",
    }
    # Two filesystems of one host, one full from 60 s on: the host is held at that one's level.
    disks = {
        'node_filesystem_size_bytes{host_id="steady", mountpoint="/"}': "100x20",
        'node_filesystem_size_bytes{host_id="steady", mountpoint="/data"}': "100x20",
        'node_filesystem_avail_bytes{host_id="steady", mountpoint="/"}': "60x20",
        'node_filesystem_avail_bytes{host_id="steady", mountpoint="/data"}': "50x3 3x16",
    }

    def held(at: str, *hosts: str, field: str = "mem_pct", value: float = 95) -> dict:
        samples = [
            {"labels": f'fleet:host_summary_held{{host_id="{h}", summary="{field}"}}', "value": value} for h in hosts
        ]
        return {"expr": f'fleet:host_summary_held{{summary="{field}"}}', "eval_time": at, "exp_samples": samples}

    tests = {
        "rule_files": ["rules.yml"],
        "evaluation_interval": "15s",
        "tests": [
            {
                "interval": "15s",
                "input_series": [{"series": k, "values": v} for k, v in {**total, **available, **disks}.items()],
                "promql_expr_test": [
                    held("105s"),  # 45 s of 95 % recorded (60-105 s): too short for either
                    held("120s", "steady"),  # a minute recorded (60-120 s); blip's held a 50 % at 120 s
                    held("180s", "steady"),
                    held("105s", field="disk_pct"),
                    held("180s", "steady", field="disk_pct", value=97),
                ],
            }
        ],
    }
    (tmp_path / "test.yml").write_text(yaml.safe_dump(tests))
    r = subprocess.run(["/usr/bin/promtool", "test", "rules", "test.yml"], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_the_shared_table_names_catalog_metrics_with_their_labels():
    """exporter/catalog_table.py, which the agent evaluates, holds catalog names only, labelled as the catalog is."""
    for name in (*T.HOST_GAUGES, *T.RATES, *T.GPU_GAUGES, *T.PROCESSES):
        assert name in CATALOG, name
    assert all(CATALOG[name].labels == (T.RATE_LABEL,) for name in T.RATES)
    assert all(CATALOG[name].labels == ("gpu_index",) for name in T.GPU_GAUGES)
    assert all(CATALOG[name].labels[:4] == T.PROCESS_LABELS for name in T.PROCESSES)


def test_resolve_per_core_and_plain_names():
    entry, matchers = resolve("cpu.core.1")
    assert (entry.record, entry.labels, matchers) == ("fleet:cpu_core", ("core",), {"core": "1"})
    assert resolve("mem.used_pct") == (CATALOG["mem.used_pct"], {})


@pytest.mark.parametrize("name", ["nope", "cpu.core", "cpu.core.x", "cpu.utilization.1", "fleet:cpu_utilization"])
def test_resolve_unknown_lists_the_valid_names(name):
    with pytest.raises(UnknownMetric) as err:
        resolve(name)
    assert err.value.valid == valid_names()
    assert "cpu.core.N" in str(err.value) and "gpu.memory_used_pct" in str(err.value)


def test_catalog_listing():
    listing = {m["name"]: m for m in catalog_listing()}
    assert sorted(listing) == valid_names()
    assert listing["cpu.core.N"]["labels"] == ["core"]
    assert listing["gpu.power_w"] == {
        "name": "gpu.power_w",
        "unit": "W",
        "description": "GPU board power draw",
        "labels": ["gpu_index"],
    }
    assert listing["net.tx_mbps"]["unit"] == "Mbps" and listing["disk.throughput_read_mbps"]["unit"] == "MB/s"
    assert all(m["description"] and isinstance(m["labels"], list) for m in listing.values())


# Against the real stack: each recorded value beside psutil's (or the fake NVML's) reading of the same moment.


def query(prom, promql: str, at: float | None = None) -> list[dict]:
    params = {"query": promql} if at is None else {"query": promql, "time": at}
    body = requests.get(f"{prom.url}/api/v1/query", params=params, timeout=10).json()
    assert body["status"] == "success", f"{promql}: {body}"
    return body["data"]["result"]


def selector(series: str, **labels: str) -> str:
    # json.dumps escapes a value as PromQL's double-quoted strings need.
    return series + "{" + ",".join(f"{k}={json.dumps(v)}" for k, v in labels.items()) + "}"


def by(prom, metric: str, label: str, host: str, at: float | None = None, **labels: str) -> dict[str, float]:
    """The recorded metric's values by one label, at ``at`` (or as soon as there are any)."""
    promql = selector(CATALOG[metric].record, host_id=host, **labels)
    result = query(prom, promql, at) if at else prom.wait_for(promql)
    assert result, f"no {promql} at {at}"
    return {s["metric"].get(label, ""): float(s["value"][1]) for s in result}


def one(prom, metric: str, host: str, at: float | None = None, **labels: str) -> float:
    values = by(prom, metric, "host_id", host, at, **labels)
    assert len(values) == 1, values
    return values[host]


def near(got: float, want: float, tolerance: float) -> None:
    assert math.isfinite(got) and abs(got - want) <= tolerance, f"Prometheus {got}, source {want} (±{tolerance})"


class CounterLog:
    """psutil's disk and net counters every 0.1 s, to difference over the window a rule evaluation read.

    A rule evaluated at ``e`` reads [e - window, e], and ``e`` lies up to an interval (more when the
    machine is busy) before the moment the test asks at: writes of other processes in between (page
    writeback, journal commits) are in a delta taken at that moment but in no rate Prometheus recorded.
    """

    STEP_S = 0.1

    def __init__(self) -> None:
        self.samples: list[tuple[float, dict, dict]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            now = time.time()
            self.samples.append((now, psutil.disk_io_counters(perdisk=True), psutil.net_io_counters(pernic=True)))
            self._stop.wait(self.STEP_S)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _at(self, t: float, kind: str) -> dict:
        when, disk, net = min(self.samples, key=lambda s: abs(s[0] - t))
        assert abs(when - t) <= 3 * self.STEP_S, f"no counters logged near {t} ({self.samples[0][0]}-{when})"
        return disk if kind == "disk" else net

    def delta(self, kind: str, start: float, end: float) -> dict[str, NS]:
        """Per device (``disk``) or interface (``net``): each counter's growth from ``start`` to ``end``."""
        before, after = self._at(start, kind), self._at(end, kind)
        return {
            k: NS(**{f: getattr(a, f) - getattr(before[k], f) for f in a._fields})
            for k, a in after.items()
            if k in before
        }


class Window(NamedTuple):
    """What psutil saw over one rate window of load; Prometheus is asked for its value at ``t1``."""

    host: str
    t1: float
    cpu_pct: list[float]  # per core, over the window
    counters: CounterLog  # disk and net, from before the window to t1
    busy_pid: int
    busy_cpu_pct: float
    hog_pid: int
    hog_rss_bytes: int


def _disk_traffic(path: Path, mib: int) -> None:
    with open(path, "wb") as f:
        for _ in range(mib):
            f.write(bytes(MiB))
            # One fsync per MiB: at least `mib` write requests, however the block layer merges them.
            f.flush()
            os.fsync(f.fileno())
    # O_DIRECT, 16 KiB at a time: every read reaches the disk (past cache and readahead), and reads outnumber writes.
    buffer = mmap.mmap(-1, 16 * 1024)  # page-aligned, as O_DIRECT needs
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    try:
        while os.readv(fd, [buffer]):
            pass
    finally:
        os.close(fd)
        buffer.close()


@pytest.fixture(scope="module")
def window(stack, prom, gpu_node, tmp_path_factory) -> Window:
    """The rate window before ``t1``: a busy process, a 256 MiB process and disk traffic, per psutil."""
    assert stack.config.scrape_interval == "1s"
    # The exporter `fleetwatch up` started (other tests add targets to the same job).
    instance = stack.urls()["exporter"].removeprefix("http://").removesuffix("/metrics")
    host = prom.wait_for(f'up{{instance="{instance}"}} == 1')[0]["metric"]["host_id"]
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    hog = subprocess.Popen(
        [sys.executable, "-c", "import time; b = b'x' * (256 << 20); print(flush=True); time.sleep(120)"],
        stdout=subprocess.PIPE,
    )
    counters = CounterLog()
    try:
        hog.stdout.readline()  # its memory is touched
        time.sleep(3)  # counters logged from before the window of an evaluation up to two intervals late
        # psutil's window [t0, t1] is Prometheus's rate window ending at t1; the traffic starts 2 s in and
        # ends 3 s before the end, so scrapes a second apart and a late rule evaluation still frame it.
        t0 = time.time()
        busy0 = psutil.Process(busy.pid).cpu_times()
        psutil.cpu_percent(percpu=True)
        time.sleep(2)
        _disk_traffic(tmp_path_factory.mktemp("disk") / "blob", 32)
        left = t0 + WINDOW_S - time.time()
        assert left >= 3, f"the traffic took {WINDOW_S - left - 2:.1f} s: too long to frame in one window"
        time.sleep(left)
        t1 = time.time()
        cpu = psutil.cpu_percent(percpu=True)
        busy1 = psutil.Process(busy.pid).cpu_times()
        rss = psutil.Process(hog.pid).memory_info().rss
    finally:
        counters.stop()
        busy.kill()
        hog.kill()
        busy.wait()
        hog.wait()
    # The rule evaluations at t1 are written once one a second later is (each group evaluates in order).
    prom.wait_for(f'timestamp(fleet:cpu_utilization{{host_id="{host}"}}) > {t1 + 1}', timeout_s=15)
    busy_s = (busy1.user + busy1.system) - (busy0.user + busy0.system)
    return Window(
        host,
        t1,
        cpu,
        counters,
        busy.pid,
        100 * busy_s / (t1 - t0),
        hog.pid,
        rss,
    )


def check_cpu_utilization(prom, w: Window) -> None:
    got = one(prom, "cpu.utilization", w.host, w.t1)
    near(got, sum(w.cpu_pct) / len(w.cpu_pct), 10)
    assert got >= 0.8 * 100 / len(w.cpu_pct)  # the busy loop is one core's worth


def check_cpu_core(prom, w: Window) -> None:
    assert set(by(prom, "cpu.core", "core", w.host, w.t1)) == {str(i) for i in range(len(w.cpu_pct))}
    for i, want in enumerate(w.cpu_pct):
        entry, matchers = resolve(f"cpu.core.{i}")
        got = by(prom, entry.name, "core", w.host, w.t1, **matchers)
        # The scheduler moves the busy loop between cores: a second at the window's edge is 1/15 of it.
        near(got[str(i)], want, 25)


def near_soon(got, want, tolerance: float, tries: int = 4, relative: float = 0.0) -> None:
    """``near`` on fresh readings, a second apart until one pair agrees: the two sources read at other moments.

    ``relative``: a share of the source's reading added to ``tolerance``, for counts that churn in proportion.
    """
    for _ in range(tries - 1):
        wanted = want()
        if abs(got() - wanted) <= tolerance + relative * abs(wanted):
            return
        time.sleep(1)
    wanted = want()
    near(got(), wanted, tolerance + relative * abs(wanted))


def check_load(n: int, tolerance: float):
    def check(prom, w: Window) -> None:
        near_soon(lambda: one(prom, f"cpu.load{n}", w.host), lambda: os.getloadavg()[(1, 5, 15).index(n)], tolerance)

    return check


def check_now(metric: str, reading, tolerance: float, relative: float = 0.0, **labels: str):
    def check(prom, w: Window) -> None:
        near_soon(lambda: one(prom, metric, w.host, **labels), reading, tolerance, relative=relative)

    return check


def check_rates(metric: str, counters: str, fields: tuple[str, ...], scale: float, tol: tuple, must_see: bool = True):
    """Over the window, the recorded rate times its length equals psutil's counter delta, per device."""
    relative, absolute = tol

    def check(prom, w: Window) -> None:
        # The evaluation Prometheus answers with at t1, and so the window its rate() read.
        ends = query(prom, f"timestamp({selector(CATALOG[metric].record, host_id=w.host)})", w.t1)
        assert ends, f"no {metric} at {w.t1}"
        end = float(ends[0]["value"][1])
        start = end - WINDOW_S

        def growth(since: float, until: float) -> dict[str, float]:
            deltas = w.counters.delta(counters, since, until)
            return {d: sum(getattr(c, f) for f in fields) * scale for d, c in deltas.items()}

        want = growth(start, end)
        # rate() reads the counters at scrapes a second apart and extrapolates from the first and last to
        # the window's edges: what happened within a scrape of either edge (a burst of page writeback or
        # journal commits) it can only estimate from the window's average, so that growth widens the bound.
        edges = [growth(start, start + EDGE_S), growth(end - EDGE_S, end)]
        got = by(prom, metric, "device", w.host, w.t1)
        assert got and set(got) <= set(want), (got.keys(), want.keys())
        unseen = {d: sum(edge[d] for edge in edges) for d in got}
        for device, rate in got.items():
            near(rate * WINDOW_S, want[device], relative * want[device] + absolute + unseen[device])
        if must_see:  # the window's traffic was counted away from its edges, not only background noise
            assert max(want[d] - unseen[d] for d in got) > 3 * absolute, (want, unseen)

    return check


def check_top_cpu(prom, w: Window) -> None:
    # Each reading covers the last second: their average over the window is comparable to psutil's.
    record = selector(CATALOG["proc.top.cpu_pct"].record, host_id=w.host, pid=str(w.busy_pid))
    result = query(prom, f"avg_over_time({record}[{WINDOW_S}s])", w.t1)
    assert len(result) == 1, result
    near(float(result[0]["value"][1]), w.busy_cpu_pct, 15)


def check_top_mem(prom, w: Window) -> None:
    got = by(prom, "proc.top.mem_mb", "pid", w.host, w.t1, pid=str(w.hog_pid))
    near(got[str(w.hog_pid)], w.hog_rss_bytes / MiB, 2)


def vm():
    return psutil.virtual_memory()


def tcp_sockets_in_use() -> int:
    # /proc/net/sockstat's "inuse" counts every TCP socket but those in TIME_WAIT.
    return sum(1 for c in psutil.net_connections("tcp") if c.status != psutil.CONN_TIME_WAIT)


def disk_used_pct_node_way() -> float:
    du = psutil.disk_usage("/")  # free is f_bavail: node_exporter's avail
    return 100 * (1 - du.free / du.total)


MEM_TOL_MIB = 48  # memory moves between readings a second apart; Buffers alone is ~4 MiB
HOST_CHECKS = {
    "cpu.utilization": check_cpu_utilization,
    "cpu.core": check_cpu_core,
    "cpu.load1": check_load(1, 0.3),
    "cpu.load5": check_load(5, 0.2),
    "cpu.load15": check_load(15, 0.1),
    "mem.used_pct": check_now("mem.used_pct", lambda: 100 * (vm().total - vm().available) / vm().total, 1.0),
    "mem.used_mb": check_now("mem.used_mb", lambda: (vm().total - vm().available) / MiB, MEM_TOL_MIB),
    "mem.available_mb": check_now("mem.available_mb", lambda: vm().available / MiB, MEM_TOL_MIB),
    # psutil's `cached` is Cached + SReclaimable, as free(1) shows it.
    "mem.cache_mb": check_now("mem.cache_mb", lambda: vm().cached / MiB, MEM_TOL_MIB),
    "mem.swap_pct": check_now("mem.swap_pct", lambda: psutil.swap_memory().percent, 0.5),
    "disk.used_pct": check_now("disk.used_pct", disk_used_pct_node_way, 0.5, mountpoint="/"),
    "disk.iops_read": check_rates("disk.iops_read", "disk", ("read_count",), 1, (0.25, 10)),
    "disk.iops_write": check_rates("disk.iops_write", "disk", ("write_count",), 1, (0.25, 10)),
    "disk.throughput_read_mbps": check_rates("disk.throughput_read_mbps", "disk", ("read_bytes",), 1e-6, (0.25, 3)),
    "disk.throughput_write_mbps": check_rates("disk.throughput_write_mbps", "disk", ("write_bytes",), 1e-6, (0.25, 3)),
    # Tests send nothing off this host (only loopback, which the exporter leaves out, like node_exporter):
    # the NICs' own background traffic is what the recorded rates are checked against.
    "net.tx_mbps": check_rates("net.tx_mbps", "net", ("bytes_sent",), 8e-6, (0.2, 5), must_see=False),
    "net.rx_mbps": check_rates("net.rx_mbps", "net", ("bytes_recv",), 8e-6, (0.2, 5), must_see=False),
    "net.errors": check_rates("net.errors", "net", ("errin", "errout"), 1, (0.2, 2), must_see=False),
    "net.drops": check_rates("net.drops", "net", ("dropin", "dropout"), 1, (0.2, 2), must_see=False),
    # Sockets open and close by the hundred while the rest of the suite runs: the reading is seconds old.
    "net.sockets_active": check_now("net.sockets_active", tcp_sockets_in_use, 10, relative=0.1),
    "proc.top.cpu_pct": check_top_cpu,
    "proc.top.mem_mb": check_top_mem,
}


# A GPU node with NVML faked at the pynvml boundary: an H100 under load (tests/fake_nvml.py) and an H100 in
# MIG mode with two GPU instances. Our real collectors and HTTP path, scraped by the real Prometheus.
GPU0_USED, GPU0_RESERVED = 13171 * MiB + 12345, 479 * MiB + 1000  # as h100() answers
GI_GPM_PCT = {2: (80.0, 55.0, 20.0), 9: (10.0, 0.0, 5.0)}  # GPU instance id: graphics, tensor, DRAM active in %
GPU0_HEALTH = {  # two uncorrectable ECC errors, a row remap pending, thermal slowdown at the power cap
    "nvmlDeviceGetTotalEccErrors": lambda kind, counter: 2 if (kind, counter) == (1, 0) else 0,  # volatile DBE
    "nvmlDeviceGetRemappedRows": (3, 1, 1, 0),
    "nvmlDeviceGetCurrentClocksEventReasons": 0x44,
}


@pytest.fixture(scope="module")
def gpu_node(stack, prom):
    """The host id of a fake-NVML GPU node; its processes are this test run's own pids."""
    gpm = (
        pynvml.NVML_GPM_METRIC_GRAPHICS_UTIL,
        pynvml.NVML_GPM_METRIC_ANY_TENSOR_UTIL,
        pynvml.NVML_GPM_METRIC_DRAM_BW_UTIL,
    )
    mig = mig_h100(os.getppid(), gpm_mig={gi: dict(zip(gpm, pct, strict=True)) for gi, pct in GI_GPM_PCT.items()})
    h100_procs = [NS(pid=os.getpid(), usedGpuMemory=1234 * MiB)]
    lib = FakePynvml([h100(nvmlDeviceGetComputeRunningProcesses=h100_procs, **GPU0_HEALTH), mig])
    node = GpuNode(stack.config.state_dir, "gpu-node-catalog", lib, processes=True)
    lib.xid(1, 94, gpu_instance_id=9)  # a contained ECC error in GPU 1's instance 9
    yield node.host_id
    node.stop()


GPU0_TOTAL = GPU0_USED // MiB + GPU0_RESERVED // MiB + (TOTAL - GPU0_USED - GPU0_RESERVED) // MiB
MIG_USED = sum(used for _, used, _ in GI_MIB.values())
MIG_TOTAL = sum(total for total, _, _ in GI_MIB.values())
GPU_CHECKS = {  # metric: {gpu_index: what NVML said, in the metric's unit}
    "gpu.utilization": {"0": 100},  # NVML has no utilization for a MIG GPU: no series
    "gpu.memory_used_mb": {"0": 13171, "1": MIG_USED},
    "gpu.memory_total_mb": {"0": GPU0_TOTAL, "1": MIG_TOTAL},
    "gpu.memory_used_pct": {"0": 100 * 13171 / GPU0_TOTAL, "1": 100 * MIG_USED / MIG_TOTAL},
    "gpu.temperature_c": {"0": 69, "1": 69},
    "gpu.power_w": {"0": 696.508, "1": 696.508},
    "gpu.xid_last": {"0": 0, "1": 94},
    "gpu.ecc_uncorrectable": {"0": 2, "1": 0},
    "gpu.remapped_rows_pending": {"0": 1, "1": 0},
    "gpu.row_remap_failed": {"0": 0, "1": 0},
    # 0x44 on GPU 0, 0x4 (sw_power_cap) on GPU 1 as h100() answers: every throttling reason, 0 or 1.
    "gpu.throttled": {
        (gpu, reason): int(reason == "sw_power_cap" or (gpu, reason) == ("0", "hw_thermal_slowdown"))
        for gpu in "01"
        for reason in THROTTLE_REASONS
    },
    **{
        metric: {("1", str(gi), "3g.40gb"): pct[i] for gi, pct in GI_GPM_PCT.items()}
        for i, metric in enumerate(
            ("gpu.instance.utilization", "gpu.instance.tensor_active_pct", "gpu.instance.dram_active_pct")
        )
    },
    "gpu.instance.memory_used_mb": {("1", str(gi), "3g.40gb"): used for gi, (_, used, _) in GI_MIB.items()},
}


def check_gpu(metric: str):
    """All of the metric's series (keyed by its labels' values) as NVML said, once every GPU was scraped."""
    labels = CATALOG[metric].labels

    def check(prom, host: str) -> None:
        def every_gpu():  # each GPU (and MIG instance), once all have been read twice
            result = prom.query(selector(CATALOG[metric].record, host_id=host))
            keys = [tuple(s["metric"][label] for label in labels) for s in result]
            got = {key if len(key) > 1 else key[0]: float(s["value"][1]) for key, s in zip(keys, result, strict=True)}
            return got if got.keys() == GPU_CHECKS[metric].keys() else None

        got = wait_until(every_gpu, 15, f"{metric} of every GPU")
        assert got == pytest.approx(GPU_CHECKS[metric], rel=1e-9)

    return check


def check_top_gpu_mem(prom, host: str) -> None:
    want = {(str(os.getpid()), "0"): 1234.0, (str(os.getppid()), "1"): 700.0}

    def top_gpu_mem() -> tuple[list[dict], dict]:
        result = prom.wait_for(selector(CATALOG["proc.top.gpu_mem_mb"].record, host_id=host))
        return result, {(s["metric"]["pid"], s["metric"]["gpu_index"]): float(s["value"][1]) for s in result}

    result, _ = wait_until(lambda: (found := top_gpu_mem())[1] == want and found, 15, f"GPU processes {want}")
    mine = next(s["metric"] for s in result if s["metric"]["pid"] == str(os.getpid()))
    assert mine["name"] == psutil.Process().name() and mine["user"] == psutil.Process().username()


# A Slurm compute node: one job's v1 cgroups in a fake tree, its CPU counter advancing at half a CPU-second
# a second on its 2 CPUs, and one of its processes on a fake-NVML H100. Our real collectors and HTTP path.
JOB = "4242"
JOB_CPU_RATE = 0.5  # CPU-seconds a second


@pytest.fixture(scope="module")
def job_node(stack, tmp_path_factory):
    """The host id of a node running Slurm job JOB."""
    import threading

    from prometheus_client import start_http_server

    from exporter.cgroups import JobCgroups
    from exporter.jobs import JobCollector
    from exporter.nvml import Nvml
    from exporter.registry import ExporterConfig, build_registry
    from fleetwatch.testing.cgroups import fake_proc, process, v1_job
    from fleetwatch.testing.waits import free_port

    base = tmp_path_factory.mktemp("job-node")
    root, proc = base / "cgroup", fake_proc(base / "proc")
    v1_job(root, int(JOB), 1000, usage_ns=0, cpus="0-1", rss=300 * MiB, cache=100 * MiB, limit=2048 * MiB)
    process(proc, 4321, f"6:freezer:/slurm_vm/uid_1000/job_{JOB}/step_0\n", 1000)
    lib = FakePynvml([h100(nvmlDeviceGetComputeRunningProcesses=[NS(pid=4321, usedGpuMemory=1234 * MiB)])])
    jobs = JobCollector(JobCgroups(root, proc), gpu_devices=Nvml(lib).devices, proc_root=proc, interval=1)
    usage = root / "cpuacct" / "slurm_vm" / "uid_1000" / f"job_{JOB}" / "cpuacct.usage"
    stop, t0 = threading.Event(), time.time()

    def burn():  # the kernel's counter of a job using half a CPU; replaced whole, never read half-written
        while not stop.wait(0.1):
            usage.with_suffix(".tmp").write_text(f"{int((time.time() - t0) * JOB_CPU_RATE * 1e9)}\n")
            usage.with_suffix(".tmp").replace(usage)

    threading.Thread(target=burn, daemon=True).start()
    registry, _ = build_registry(
        ExporterConfig(host=False, gpu=False, processes=False, jobs=False, extra_collectors={"jobs": jobs})
    )
    port = free_port()
    server, _ = start_http_server(port, addr="127.0.0.1", registry=registry)
    jobs.start()
    target = [{"targets": [f"127.0.0.1:{port}"], "labels": {"host_id": "job-node-catalog"}}]
    (stack.config.state_dir / "file_sd" / "job-node-catalog.json").write_text(json.dumps(target))
    yield "job-node-catalog"
    (stack.config.state_dir / "file_sd" / "job-node-catalog.json").unlink()
    stop.set()
    jobs.stop()
    server.shutdown()


JOB_CHECKS = {  # metric: (labels beyond host_id and jobid, what the cgroup or NVML says, tolerance)
    "job.cpu_pct": ({}, 100 * JOB_CPU_RATE / 2, 3),
    "job.cpus": ({}, 2, 0),
    "job.mem_used_mb": ({}, 400, 0),
    "job.mem_rss_mb": ({}, 300, 0),
    "job.mem_limit_mb": ({}, 2048, 0),
    "job.gpu.utilization": ({"gpu_index": "0"}, 100, 0),
    "job.gpu.memory_used_mb": ({"gpu_index": "0"}, 1234, 0),
}


def check_job(metric: str):
    labels, want, tolerance = JOB_CHECKS[metric]

    def check(prom, host: str) -> None:
        # A rate needs a full window of scrapes: poll until the recorded value settles near the source's.
        deadline = time.monotonic() + 30
        while True:
            got = by(prom, metric, "jobid", host, **labels)
            if (set(got) == {JOB} and abs(got[JOB] - want) <= tolerance) or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert set(got) == {JOB}, got
        near(got[JOB], want, tolerance)

    return check


CHECKS = {
    **HOST_CHECKS,
    **{metric: check_gpu(metric) for metric in GPU_CHECKS},
    "proc.top.gpu_mem_mb": check_top_gpu_mem,
    **{metric: check_job(metric) for metric in JOB_CHECKS},
}
ON_GPU_NODE = {*GPU_CHECKS, "proc.top.gpu_mem_mb"}


def test_every_catalog_metric_is_checked():
    assert sorted(CHECKS) == sorted(CATALOG)


@pytest.mark.parametrize("metric", sorted(CATALOG))
def test_recorded_metric_equals_the_sources_reading(request, prom, metric):
    """fleet:<metric> beside psutil's or NVML's reading, with exactly host_id and the metric's own labels."""
    if metric in ON_GPU_NODE:
        host = context = request.getfixturevalue("gpu_node")
    elif metric in JOB_CHECKS:
        host = context = request.getfixturevalue("job_node")
    else:
        context = request.getfixturevalue("window")
        host = context.host
    CHECKS[metric](prom, context)
    series = query(prom, selector(CATALOG[metric].record, host_id=host))
    # Prometheus drops empty labels (slurm_job_id outside a job): the metric's labels at most, host_id always.
    allowed = {"__name__", "host_id", *CATALOG[metric].labels}
    assert series and all({"__name__", "host_id"} <= set(s["metric"]) <= allowed for s in series), series


def test_every_judged_field_is_its_hosts_maximum():
    """The whole fleet's warn levels are read as the judged layer series at or above the line
    (gateway/host_status.py): right only where the field is the largest of its host's series."""
    assert all(HOST_SUMMARY[field][1] == "max" for field in JUDGED)


def test_the_held_levels_follow_the_layer_in_its_group_except_for_vmalert_where_they_have_their_own():
    def groups(**kw) -> dict[str, list[str]]:
        doc = yaml.safe_load(render_normalisation_rules(CATALOG, "15s", "60s", **kw))
        assert all(g["interval"] == "15s" for g in doc["groups"][:-1])  # all but discovery
        return {g["name"]: [r["record"] for r in g["rules"]] for g in doc["groups"]}

    prometheus, vmalert = groups(), groups(from_layer=False)
    assert SUMMARY_GROUP not in prometheus
    held_from = prometheus[GROUP].index(HELD)
    assert prometheus[GROUP][held_from:] == [HELD] * len(JUDGED)  # after every layer rule
    assert vmalert[SUMMARY_GROUP] == prometheus[GROUP][held_from:]
    assert vmalert[GROUP] == prometheus[GROUP][:held_from]


def test_cpu_utilization_reads_the_cores_recorded_before_it_except_for_vmalert():
    def rules(**kw) -> dict[str, tuple[int, str]]:
        doc = yaml.safe_load(render_normalisation_rules(CATALOG, "5s", "20s", **kw))
        return {r["record"]: (n, r["expr"]) for n, r in enumerate(doc["groups"][0]["rules"])}

    layered = rules()
    assert layered["fleet:cpu_utilization"][1] == "avg by (host_id) (fleet:cpu_core)"
    assert layered["fleet:cpu_core"][0] < layered["fleet:cpu_utilization"][0]  # same evaluation, in order
    assert "node_cpu_seconds_total" in rules(from_layer=False)["fleet:cpu_utilization"][1]
    derived = rules(host_id_from="instance")  # an adopted Prometheus: the cores read the derived copies
    assert derived["fleet:cpu_utilization"][1] == "avg by (host_id) (fleet:cpu_core)"
    assert "fleet_src:node_cpu_seconds_total" in derived["fleet:cpu_core"][1]
