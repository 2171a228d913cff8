"""A GPU node for the real stack: our real collectors and HTTP path over a fake NVML, a target of its Prometheus."""

from __future__ import annotations

import json
from pathlib import Path

from prometheus_client import start_http_server

from exporter.gpu import GpuCollector
from exporter.nvml import Nvml
from exporter.processes import ProcessScanner, TopProcessCollector
from exporter.registry import ExporterConfig, build_registry
from exporter.xid import XidCollector, XidWatcher
from fleetwatch.testing.waits import free_port
from tests.fake_nvml import FakePynvml


class GpuNode:
    """The gpu, xid and processes collectors on ``lib``, served on loopback and listed in the stack's file_sd."""

    def __init__(self, state_dir: Path, host_id: str, lib: FakePynvml, processes: bool = False):
        self.host_id, self.lib = host_id, lib
        nvml = Nvml(lib)
        self.gpu = GpuCollector(nvml, hostname=host_id, interval=1)
        self.xid = XidCollector(XidWatcher(nvml, wait_ms=100), self.gpu)
        collectors = {"gpu": self.gpu, "xid": self.xid}
        if processes:
            collectors["processes"] = TopProcessCollector(ProcessScanner(5, gpu_processes=self.gpu.processes), 1)
        config = ExporterConfig(host=False, gpu=False, processes=False, extra_collectors=collectors)
        self.registry, _ = build_registry(config)
        self._background = [c for c in collectors.values() if hasattr(c, "start")]
        self.port = free_port()
        self._server, _ = start_http_server(self.port, addr="127.0.0.1", registry=self.registry)
        for c in self._background:
            c.start()
        self._target = state_dir / "file_sd" / f"{host_id}.json"
        target = [{"targets": [f"127.0.0.1:{self.port}"], "labels": {"host_id": host_id}}]
        self._target.write_text(json.dumps(target))

    def stop(self) -> None:
        self._target.unlink()
        for c in self._background:
            c.stop()
        self._server.shutdown()
