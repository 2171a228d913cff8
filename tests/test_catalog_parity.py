"""One exporter scrape, both implementations of the catalog: the recording rules in a real Prometheus and
the push agent's Translator give every catalog metric the same value.

Two scrapes A and B of our collectors (psutil and /proc with one more NIC and disk, an H100 and a MIG H100
faked at the pynvml boundary) are the fixed input. The agent reads them ``DT`` seconds apart. Prometheus
gets them by remote write, as a backfill: B's gauges, and each counter moving on from B at the rate A→B
implies ((B - A) / DT per second), one sample a second from GRID_S before to GRID_S after the moment of
writing. Its own rule evaluations then each see whole seconds of that straight line in their window, so
rate() (extrapolation included) is exactly the agent's (B - A) / DT, whatever the moment they run.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from types import SimpleNamespace as NS

import psutil
import pynvml
import pytest
from prometheus_client.metrics_core import Metric

from exporter.catalog_points import Translator
from exporter.gpu import GpuCollector
from exporter.host import HostCollector
from exporter.nvml import Nvml
from exporter.processes import ProcessScanner, TopProcessCollector
from exporter.xid import XidCollector, XidWatcher
from fleetwatch.testing import services
from fleetwatch.testing.prom import PromClient
from fleetwatch.testing.waits import wait_until
from gateway.remote_write import RemoteWriter, encode_labels, encode_sample, encode_series
from rules_compiler.catalog import CATALOG, resolve
from rules_compiler.recording import render_normalisation_rules
from tests.fake_nvml import FakePynvml, h100, mig_h100

pytestmark = pytest.mark.integration  # a real Prometheus

DT = 10.0  # seconds between the agent's two scrapes
HOST = "parity-host"
GRID_S = 90  # the line runs this long either side of the moment it is written


class FixedDevices:
    """psutil with one more NIC and disk whose counters advance by set steps: every rate has a series."""

    def __init__(self):
        self.scrape = 0

    def __getattr__(self, name):
        return getattr(psutil, name)

    def net_io_counters(self, pernic=False):
        n = self.scrape
        fake = NS(bytes_recv=10**9 + 12_345 * n, packets_recv=5000 + 9 * n, errin=3 * n, dropin=n)
        fake.__dict__.update(bytes_sent=7 * 10**8 + 678 * n, packets_sent=4000 + 5 * n, errout=2, dropout=n)
        return {**psutil.net_io_counters(pernic=True), "fake0": fake}

    def disk_io_counters(self, perdisk=False):
        n = self.scrape
        fake = NS(read_count=100 + 40 * n, read_merged_count=n, read_bytes=4096 * (100 + 400 * n), read_time=5 + n)
        fake.__dict__.update(write_count=200 + 30 * n, write_merged_count=0, write_bytes=4096 * 3 * n, write_time=6)
        fake.busy_time = 7 + 2 * n
        return {**(psutil.disk_io_counters(perdisk=True) or {}), "fakedisk0": fake}


@pytest.fixture(scope="module")
def scrapes():
    """Families of two scrapes of the host, GPU and top-process collectors, a moment apart."""
    ps = FixedDevices()
    host = HostCollector(ps=ps)
    gpm = (
        pynvml.NVML_GPM_METRIC_GRAPHICS_UTIL,
        pynvml.NVML_GPM_METRIC_ANY_TENSOR_UTIL,
        pynvml.NVML_GPM_METRIC_DRAM_BW_UTIL,
    )
    mig = mig_h100(
        1,
        gpm_mig={2: dict(zip(gpm, (80.0, 55.0, 20.0), strict=True)), 9: dict(zip(gpm, (10.0, 0.0, 5.0), strict=True))},
    )
    lib = FakePynvml([h100(nvmlDeviceGetComputeRunningProcesses=[NS(pid=1, usedGpuMemory=1234 << 20)]), mig])
    nvml = Nvml(lib)
    gpu = GpuCollector(nvml, hostname="parity", interval=0.2)  # GPM ratios need two readings
    xid = XidCollector(XidWatcher(nvml, wait_ms=100), gpu)
    top = TopProcessCollector(ProcessScanner(5, gpu_processes=gpu.processes), interval=60)
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])  # a process in the CPU ranking
    gpu.start()
    xid.start()
    top.start()
    try:
        lib.xid(1, 94, gpu_instance_id=9)
        wait_until(lambda: any(f.name.startswith("DCGM_FI_PROF") for f in gpu.collect()), 10, "GPM ratios")
        wait_until(lambda: any(s.value == 94 for f in xid.collect() for s in f.samples), 10, "the fake XID")
        a = [*host.collect(), *gpu.collect(), *xid.collect(), *top.collect()]
        ps.scrape = 1
        time.sleep(0.3)  # real counters move too
        b = [*host.collect(), *gpu.collect(), *xid.collect(), *top.collect()]
    finally:
        top.stop()
        xid.stop()
        gpu.stop()
        busy.kill()
        busy.wait()
    return a, never_back(a, b)


def never_back(a, b) -> list[Metric]:
    """B with each counter at least A's: Linux's iowait can step back, and a rate is then undefined on both sides."""
    before = {(s.name, frozenset(s.labels.items())): s.value for f in a for s in f.samples}
    out = []
    for family in b:
        copy = Metric(family.name, family.documentation, family.type)
        copy.samples = [
            s._replace(value=max(s.value, before.get((s.name, frozenset(s.labels.items())), s.value)))
            if family.type == "counter"
            else s
            for s in family.samples
        ]
        out.append(copy)
    return out


def agent_values(a, b) -> dict[tuple, float]:
    translator = Translator()
    translator.points(a, 1_000_000.0)
    values = {}
    for name, value, labels in translator.points(b, 1_000_000.0 + DT):
        entry, implied = resolve(name)
        key = (entry.name, frozenset({**labels, **implied}.items()))
        assert key not in values, f"{key} twice"
        values[key] = value
    return values


def write_line(url: str, a, b, t0: float) -> None:
    """B's gauges, and each counter on the straight line through B at t0 with A→B's rate, every second around t0."""
    before = {(s.name, frozenset(s.labels.items())): s.value for f in a for s in f.samples}
    grid_ms = [int(t0 + k) * 1000 for k in range(-GRID_S, GRID_S + 1)]
    series = []
    for family in b:
        for s in family.samples:
            slope = (s.value - before[(s.name, frozenset(s.labels.items()))]) / DT if family.type == "counter" else 0
            labels = sorted({**s.labels, "host_id": HOST, "job": "parity", "instance": "parity"}.items())
            encoded = [encode_sample(s.value + slope * (ms / 1000 - t0), ms) for ms in grid_ms]
            series.append(encode_series(encode_labels([("__name__", s.name), *labels]), encoded))
    RemoteWriter(f"{url}/api/v1/write").write(series)


@pytest.fixture(scope="module")
def prometheus_values(scrapes, tmp_path_factory):
    """Every fleet: series of HOST the recording rules wrote, from the line written around now."""
    d = tmp_path_factory.mktemp("parity")
    (d / "rules.yml").write_text(render_normalisation_rules(CATALOG, "1s", "4s"))
    config = {"global": {"evaluation_interval": "1s"}, "rule_files": [str(d / "rules.yml")]}
    with services.prometheus(d / "data", json.dumps(config)) as server:
        write_line(server.url, *scrapes, time.time())
        prom = PromClient(server.url)
        # Evaluations from here on lie in the middle of the line: every window holds whole seconds of it.
        prom.wait_for(f'fleet:cpu_utilization{{host_id="{HOST}"}}', 30)
        result = prom.query(f'{{__name__=~"fleet:.+", __name__!~"fleet:host_summary.*", host_id="{HOST}"}}')
    by_record = {m.record: m for m in CATALOG.values()}
    values = {}
    for series in result:
        labels = dict(series["metric"])
        entry = by_record[labels.pop("__name__")]
        assert labels.pop("host_id") == HOST and set(labels) <= set(entry.labels), series
        values[(entry.name, frozenset(labels.items()))] = float(series["value"][1])
    return values


def test_every_catalog_metric_has_values_from_both(scrapes, prometheus_values):
    agent = agent_values(*scrapes)
    assert {name for name, _ in agent} == set(CATALOG)
    assert {name for name, _ in prometheus_values} == set(CATALOG)


@pytest.mark.parametrize("metric", sorted(CATALOG))
def test_the_agent_and_the_recording_rules_agree(scrapes, prometheus_values, metric):
    """The same series (catalog labels and values alike) from the agent's translation and from Prometheus."""
    agent = {k: v for k, v in agent_values(*scrapes).items() if k[0] == metric}
    recorded = {k: v for k, v in prometheus_values.items() if k[0] == metric}
    assert agent, f"the agent computed no {metric}"
    assert set(agent) == set(recorded)
    for key, value in agent.items():
        assert recorded[key] == pytest.approx(value, rel=1e-6, abs=1e-6), key
