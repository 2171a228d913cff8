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
from pathlib import Path
from types import SimpleNamespace as NS

import pynvml
import pytest
from prometheus_client.metrics_core import Metric

from exporter.catalog_points import Translator
from exporter.catalog_table import CUMULATIVE_GAUGES
from exporter.cgroups import JobCgroups
from exporter.gpu import GpuCollector
from exporter.host import HostCollector
from exporter.jobs import JobCollector
from exporter.node.diskstats import DiskstatsCollector
from exporter.node.netdev import NetdevCollector
from exporter.nvml import Nvml
from exporter.processes import ProcessScanner, TopProcessCollector
from exporter.xid import XidCollector, XidWatcher
from fleetwatch.testing import services
from fleetwatch.testing.cgroups import MiB, fake_proc, process, v1_job
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
    """This host's /proc with one more disk and NIC whose counters advance by set steps: every rate has a series."""

    def __init__(self, root: Path):
        self.root = root
        (root / "net").mkdir(parents=True)
        self.advance(0)

    def advance(self, n: int) -> None:
        reads, sectors = 100 + 40 * n, 8 * (100 + 400 * n)
        disk = f"   8      16 vdz {reads} {n} {sectors} {5 + n} {200 + 30 * n} 0 {24 * n} 6 0 {7 + 2 * n} 11\n"
        (self.root / "diskstats").write_text(Path("/proc/diskstats").read_text() + disk)
        rx = f"{10**9 + 12_345 * n} {5000 + 9 * n} {3 * n} {n} 0 0 0 0"
        tx = f"{7 * 10**8 + 678 * n} {4000 + 5 * n} 2 {n} 0 0 0 0"
        (self.root / "net" / "dev").write_text(Path("/proc/net/dev").read_text() + f" fake0: {rx} {tx}\n")


def job_node(base) -> tuple[JobCollector, Path]:
    """A compute node's job collector: job 4242 on 2 CPUs with one process on an H100 (fake cgroups, fake NVML)."""
    root, proc = base / "cgroup", fake_proc(base / "proc")
    v1_job(root, 4242, 1000, usage_ns=10**10, cpus="0-1", rss=300 * MiB, cache=100 * MiB, limit=2048 * MiB)
    process(proc, 4321, "6:freezer:/slurm_vm/uid_1000/job_4242/step_0\n", 1000)
    lib = FakePynvml([h100(nvmlDeviceGetComputeRunningProcesses=[NS(pid=4321, usedGpuMemory=1234 * MiB)])])
    usage = root / "cpuacct" / "slurm_vm" / "uid_1000" / "job_4242" / "cpuacct.usage"
    return JobCollector(JobCgroups(root, proc), gpu_devices=Nvml(lib).devices, proc_root=proc, interval=60), usage


@pytest.fixture(scope="module")
def scrapes(tmp_path_factory):
    """Families of two scrapes of the host, disk, network, GPU, top-process and job collectors, a moment apart."""
    jobs, usage = job_node(tmp_path_factory.mktemp("job-node"))
    devices = FixedDevices(tmp_path_factory.mktemp("proc"))
    disks, nics = DiskstatsCollector(str(devices.root)), NetdevCollector(str(devices.root))
    host = HostCollector()
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
        jobs.sampler.sample_now()
        collectors = (host, disks, nics, gpu, xid, top, jobs)
        a = [family for c in collectors for family in c.collect()]
        devices.advance(1)
        usage.write_text(f"{10**10 + 5 * 10**9}\n")  # the job used 5 CPU-seconds since
        time.sleep(0.3)  # real counters move too
        jobs.sampler.sample_now()
        b = [family for c in collectors for family in c.collect()]
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
            if cumulative(family)
            else s
            for s in family.samples
        ]
        out.append(copy)
    return out


def cumulative(family: Metric) -> bool:
    return family.type == "counter" or family.name in CUMULATIVE_GAUGES


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
            slope = (s.value - before[(s.name, frozenset(s.labels.items()))]) / DT if cumulative(family) else 0
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
