"""The exporter's registry, assembled in one place from its configuration."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from prometheus_client.core import GaugeMetricFamily, Metric

from exporter import __version__
from exporter.exposition import RENDERED, ExporterRegistry

log = logging.getLogger(__name__)


@dataclass
class ExporterConfig:
    """What the exporter collects and how; the CLI fills it from flags."""

    host: bool = True
    gpu: bool = True
    processes: bool = True
    top_n: int = 10
    process_interval_s: float = 5.0
    gpu_interval_s: float = 5.0
    proc_root: str = "/proc"
    sys_root: str = "/sys"
    rootfs: str = "/"  # where /etc/os-release is read
    textfile_directory: str = ""  # node_exporter's --collector.textfile.directory; "" reads none
    hostname: str = ""
    hostname_label: str = "Hostname"  # dcgm-exporter's key; newer versions say "hostname"
    slurm: bool = False  # the cluster collector (sinfo/squeue or slurmrestd), on the controller host
    slurm_interval_s: float = 15.0
    slurm_timeout_s: float = 10.0
    slurm_max_jobs: int = 2000
    slurmrestd_url: str = ""  # read slurmrestd instead of running sinfo/squeue
    slurmrestd_token_file: str = ""
    slurmrestd_user: str = ""
    jobs: bool | None = None  # per-job accounting; None: on where slurmd has made its cgroups
    jobs_interval_s: float = 5.0
    cgroup_root: str = "/sys/fs/cgroup"
    extra_collectors: dict = field(default_factory=dict)  # name -> collector, for tests


class InstrumentedCollectors:
    """Runs each named collector and reports, like node_exporter, whether it succeeded and how long it took.

    A failing collector drops only its own families; the failure is logged
    once (until it recovers), not at every scrape.
    """

    def __init__(self, collectors: dict):
        self._collectors = collectors
        self._failing: set[str] = set()

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        # Within ExporterRegistry.exposition, a collector that keeps its families formatted hands over bytes.
        rendered = RENDERED.get()
        success = GaugeMetricFamily(
            "fleet_exporter_collector_success", "Whether a collector succeeded.", labels=["collector"]
        )
        duration = GaugeMetricFamily(
            "fleet_exporter_collector_duration_seconds",
            "How long a collector took at this scrape.",
            labels=["collector"],
        )
        # The same figures under node_exporter's names, which its dashboards' "Node Exporter" row reads.
        node_success = GaugeMetricFamily(
            "node_scrape_collector_success", "node_exporter: Whether a collector succeeded.", labels=["collector"]
        )
        node_duration = GaugeMetricFamily(
            "node_scrape_collector_duration_seconds",
            "node_exporter: Duration of a collector scrape.",
            labels=["collector"],
        )
        for name, collector in self._collectors.items():
            start = time.perf_counter()
            try:
                if rendered is not None and hasattr(collector, "rendered"):
                    part, families = collector.rendered(), []
                    if part is not None:
                        rendered.append(part)
                else:
                    families = list(collector.collect())
            except Exception as exc:  # noqa: BLE001 - one source's failure must not fail the scrape
                if name not in self._failing:
                    log.warning("collector %s failed: %s", name, exc)
                    self._failing.add(name)
                ok = 0
            else:
                if name in self._failing:
                    log.info("collector %s recovered", name)
                    self._failing.discard(name)
                ok = 1
                # A family without a series is left out, as node_exporter writes none.
                yield from (f for f in families if f.samples)
            took = time.perf_counter() - start
            for fam, value in ((success, ok), (node_success, ok), (duration, took), (node_duration, took)):
                fam.add_metric([name], value)
        yield from (success, duration, node_success, node_duration)
        info = GaugeMetricFamily("fleet_exporter_build_info", "The exporter's version; always 1.", labels=["version"])
        info.add_metric([__version__], 1)
        yield info


def build_registry(config: ExporterConfig) -> tuple[ExporterRegistry, list]:
    """The registry for ``config`` and the background-sampling collectors to start and stop."""
    collectors: dict = {}
    background: list = []
    gpu = None
    if config.host:
        from exporter.host import HostCollector
        from exporter.node import node_collectors

        collectors["host"] = HostCollector(proc_root=config.proc_root)
        collectors.update(node_collectors(config.proc_root, config.sys_root, config.rootfs, config.textfile_directory))
    if config.gpu:
        from exporter.gpu import GpuCollector
        from exporter.nvml import Nvml
        from exporter.xid import XidCollector, XidWatcher

        nvml = Nvml()
        gpu = GpuCollector(
            nvml,
            hostname=config.hostname,
            hostname_label=config.hostname_label,
            interval=config.gpu_interval_s,
        )
        xid = XidCollector(XidWatcher(nvml), gpu)  # its own collector: "unsupported" is its own success 0
        collectors["gpu"] = gpu
        collectors["xid"] = xid
        background += [gpu, xid]
    if config.processes:
        from exporter.processes import ProcessScanner, TopProcessCollector

        scanner = ProcessScanner(
            config.top_n,
            proc_root=config.proc_root,
            gpu_processes=gpu.processes if gpu is not None else list,
        )
        top = TopProcessCollector(scanner, interval=config.process_interval_s)
        collectors["processes"] = top
        background.append(top)
    if config.slurm:
        collectors["slurm"] = _slurm(config)
        background.append(collectors["slurm"])
    if config.jobs or config.jobs is None and _slurm_cgroups(config.cgroup_root):
        from exporter.cgroups import JobCgroups
        from exporter.jobs import JobCollector

        jobs = JobCollector(
            JobCgroups(config.cgroup_root, config.proc_root),
            # The GPU collector's own reading: NVML is read once for both; --no-gpu means no GPU attribution.
            gpu_devices=_newest_devices(gpu) if gpu is not None else list,
            proc_root=config.proc_root,
            interval=config.jobs_interval_s,
        )
        collectors["jobs"] = jobs
        background.append(jobs)
    collectors.update(config.extra_collectors)
    registry = ExporterRegistry(auto_describe=False)
    registry.register(InstrumentedCollectors(collectors))
    return registry, background


def _slurm(config: ExporterConfig):
    from exporter.slurm import SlurmCollector
    from exporter.slurm_state import SlurmCommands, SlurmRest

    if config.slurmrestd_url:
        source = SlurmRest(
            config.slurmrestd_url,
            config.slurmrestd_token_file,
            user=config.slurmrestd_user or None,
            timeout=config.slurm_timeout_s,
        )
    else:
        source = SlurmCommands(timeout=config.slurm_timeout_s)
    return SlurmCollector(source, interval=config.slurm_interval_s, max_jobs=config.slurm_max_jobs)


def _slurm_cgroups(root: str) -> bool:
    from exporter.cgroups import slurm_cgroups_present

    found = slurm_cgroups_present(root)
    log.info("per-job accounting %s", "on: Slurm job cgroups found" if found else f"off: no Slurm cgroups in {root}")
    return found


def _newest_devices(gpu):
    from exporter.sampling import SampleFailed

    def devices() -> list:
        try:
            sample = gpu.sampler.latest()
        except SampleFailed:
            return []
        return sample.value.devices if sample is not None else []

    return devices
