"""The exporter's registry, assembled in one place from its configuration."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric

from exporter import __version__

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
    hostname: str = ""
    hostname_label: str = "Hostname"  # dcgm-exporter's key; newer versions say "hostname"
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
        success = GaugeMetricFamily(
            "fleet_exporter_collector_success", "Whether a collector succeeded.", labels=["collector"]
        )
        duration = GaugeMetricFamily(
            "fleet_exporter_collector_duration_seconds",
            "How long a collector took at this scrape.",
            labels=["collector"],
        )
        for name, collector in self._collectors.items():
            start = time.perf_counter()
            try:
                families = list(collector.collect())
            except Exception as exc:  # noqa: BLE001 - one source's failure must not fail the scrape
                if name not in self._failing:
                    log.warning("collector %s failed: %s", name, exc)
                    self._failing.add(name)
                success.add_metric([name], 0)
            else:
                if name in self._failing:
                    log.info("collector %s recovered", name)
                    self._failing.discard(name)
                success.add_metric([name], 1)
                yield from families
            duration.add_metric([name], time.perf_counter() - start)
        yield success
        yield duration
        info = GaugeMetricFamily("fleet_exporter_build_info", "The exporter's version; always 1.", labels=["version"])
        info.add_metric([__version__], 1)
        yield info


def build_registry(config: ExporterConfig) -> tuple[CollectorRegistry, list]:
    """The registry for ``config`` and the background-sampling collectors to start and stop."""
    collectors: dict = {}
    background: list = []
    gpu = None
    if config.host:
        from exporter.host import HostCollector

        collectors["host"] = HostCollector(proc_root=config.proc_root)
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
    collectors.update(config.extra_collectors)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(InstrumentedCollectors(collectors))
    return registry, background
