"""XID events: NVML's event API faked at the pynvml boundary; the thread and collector real, scraped."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import pynvml
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from exporter.gpu import GpuCollector
from exporter.nvml import Nvml
from exporter.registry import ExporterConfig, build_registry
from exporter.xid import XidCollector, XidWatcher
from tests.fake_nvml import TAKEN_AT, UUID1, FakePynvml, err, h100
from tests.test_gpu import mig_gpu, series

NOT_SUPPORTED = pynvml.NVML_ERROR_NOT_SUPPORTED


class Node:
    """A GPU node's exporter registry: the gpu and xid collectors on one fake NVML, the watcher running."""

    def __init__(self, lib: FakePynvml):
        self.lib = lib
        nvml = Nvml(lib)
        self.gpu = GpuCollector(nvml, hostname="gpu01", clock=lambda: TAKEN_AT)
        self.watcher = XidWatcher(nvml, clock=lambda: TAKEN_AT + 7, wait_ms=20, retry_s=(0.05, 0.2), rescan_s=0.2)
        xid = XidCollector(self.watcher, self.gpu)
        config = ExporterConfig(host=False, gpu=False, processes=False, extra_collectors={"gpu": self.gpu, "xid": xid})
        self.registry, _ = build_registry(config)
        self.gpu.sampler.sample_now()
        xid.start()

    def scrape(self) -> str:
        return generate_latest(self.registry).decode()

    def success(self, collector: str) -> float | None:
        return self.registry.get_sample_value("fleet_exporter_collector_success", {"collector": collector})

    def stop(self) -> None:
        self.watcher.stop()


@pytest.fixture
def node_of():
    nodes = []

    def make(devices: list[dict[str, Any]]) -> Node:
        nodes.append(Node(FakePynvml(devices)))
        return nodes[-1]

    yield make
    for n in nodes:
        n.stop()


def eventually(check: Callable[[], Any], timeout_s: float = 3.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while not (result := check()):
        assert time.monotonic() < deadline, "not within the time"
        time.sleep(0.02)
    return result


def scrape_when(node: Node, needle: str, timeout_s: float = 3.0) -> str:
    """The first scrape that shows ``needle``."""
    return eventually(lambda: next((t for t in (node.scrape(),) if needle in t), None), timeout_s)


def lines_of(text: str, name: str) -> list[str]:
    return [x for x in text.splitlines() if x.startswith(name + "{")]


def test_xid_event_appears_within_one_scrape(node_of):
    node = node_of([h100(), h100(UUID1, "00000000:00:07.0")])
    eventually(lambda: node.lib.event_sets_created == 1 and node.success("xid") == 1)
    before = node.scrape()
    assert series(before, "DCGM_FI_DEV_XID_ERRORS") == {("0",): 0, ("1",): 0}  # as dcgm-exporter: 0 before any
    assert "fleet_gpu_xid_errors_total" not in before

    node.lib.xid(0, 79)
    text = scrape_when(node, "err_code", timeout_s=1.0)
    assert series(text, "DCGM_FI_DEV_XID_ERRORS") == {("0",): 79, ("1",): 0}
    (line,) = [x for x in lines_of(text, "DCGM_FI_DEV_XID_ERRORS") if 'gpu="0"' in x]
    assert 'err_code="79"' in line and 'err_msg="GPU has fallen off the bus"' in line and 'Hostname="gpu01"' in line
    assert series(text, "fleet_gpu_xid_errors_total") == {("0",): 1}
    assert series(text, "fleet_gpu_xid_last_timestamp_seconds") == {("0",): TAKEN_AT + 7}

    for _ in range(2):
        node.lib.xid(0, 13)
    text = scrape_when(node, 'xid="13"} 2.0')
    assert series(text, "DCGM_FI_DEV_XID_ERRORS")[("0",)] == 13  # the last one, whichever it was
    counted = {
        s.labels["xid"]: s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == "fleet_gpu_xid_errors_total"
    }
    assert counted == {"13": 2, "79": 1}
    assert node.success("xid") == 1 and node.success("gpu") == 1


def test_xid_on_a_mig_instance_is_attributed_to_it(node_of):
    node = node_of([mig_gpu()])
    eventually(lambda: node.success("xid") == 1 and node.lib.event_sets_created)
    assert series(node.scrape(), "DCGM_FI_DEV_XID_ERRORS") == {("0", "2"): 0, ("0", "9"): 0}
    node.lib.xid(0, 94, gpu_instance_id=9)
    text = scrape_when(node, "err_code")
    assert series(text, "DCGM_FI_DEV_XID_ERRORS") == {("0", "2"): 0, ("0", "9"): 94}
    (line,) = [x for x in lines_of(text, "DCGM_FI_DEV_XID_ERRORS") if 'GPU_I_ID="9"' in x]
    assert 'GPU_I_PROFILE="1g.10gb"' in line and 'err_msg="Contained ECC error"' in line


def test_xid_of_the_whole_mig_gpu_has_no_instance_labels(node_of):
    node = node_of([mig_gpu()])
    eventually(lambda: node.success("xid") == 1 and node.lib.event_sets_created)
    node.lib.xid(0, 79)
    text = scrape_when(node, "err_code")
    assert series(text, "DCGM_FI_DEV_XID_ERRORS") == {("0",): 79, ("0", "2"): 0, ("0", "9"): 0}


def test_unsupported_events_fail_only_the_xid_collector_logged_once(node_of, caplog):
    with caplog.at_level(logging.INFO):
        node = node_of(
            [h100(nvmlDeviceRegisterEvents=err(NOT_SUPPORTED)), h100(UUID1, nvmlDeviceGetSupportedEventTypes=0)]
        )
        eventually(lambda: node.success("xid") == 0)
        eventually(lambda: node.lib.event_sets_created >= 3)  # it looks again, for a driver loaded later
        text = node.scrape()
    assert "DCGM_FI_DEV_XID_ERRORS" not in text
    assert series(text, "DCGM_FI_DEV_GPU_TEMP") == {("0",): 69, ("1",): 69} and node.success("gpu") == 1
    assert caplog.text.count("no GPU here reports XID events") == 1
    assert node.lib.event_sets_freed >= 2


def test_driver_error_restarts_the_thread_logged_once(node_of, caplog):
    with caplog.at_level(logging.WARNING):
        node = node_of([h100()])
        eventually(lambda: node.success("xid") == 1 and node.lib.event_sets_created == 1)
        for _ in range(3):  # three failures in a row: one log line
            node.lib.events.put(err(pynvml.NVML_ERROR_UNKNOWN))
        eventually(lambda: node.lib.event_sets_created == 4 and node.success("xid") == 1)
    failures = [r for r in caplog.records if r.name == "exporter.xid" and "event thread failed" in r.getMessage()]
    assert len(failures) == 1
    assert node.lib.event_sets_freed == 3
    node.lib.xid(0, 48)
    assert eventually(lambda: series(node.scrape(), "DCGM_FI_DEV_XID_ERRORS") == {("0",): 48})


def test_lost_gpu_then_back_keeps_counting(node_of):
    node = node_of([h100()])
    eventually(lambda: node.success("xid") == 1 and node.lib.event_sets_created == 1)
    node.lib.xid(0, 13)
    node.lib.events.put(err(pynvml.NVML_ERROR_GPU_IS_LOST))
    eventually(lambda: node.lib.event_sets_created == 2)
    node.lib.xid(0, 13)
    assert eventually(lambda: series(node.scrape(), "fleet_gpu_xid_errors_total") == {("0",): 2})


def test_host_without_nvml_has_no_xid_families_and_no_failure():
    lib = FakePynvml([h100()], init_error=pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)
    node = Node(lib)
    try:
        eventually(lambda: node.success("xid") == 1)
        assert "XID" not in node.scrape() and lib.event_sets_created == 0
    finally:
        node.stop()


@pytest.mark.gpu
def test_real_nvml_registers_for_xid_events():
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        pytest.skip(f"NVML does not initialise here: {exc}")
    pynvml.nvmlShutdown()
    config = ExporterConfig(host=False, processes=False, hostname="test")
    registry, background = build_registry(config)
    for collector in background:
        collector.start()
    try:
        success = {"collector": "xid"}
        eventually(lambda: registry.get_sample_value("fleet_exporter_collector_success", success) == 1, 5)
        text = generate_latest(registry).decode()
        assert series(text, "DCGM_FI_DEV_XID_ERRORS")  # 0, or the XIDs since start
    finally:
        for collector in background:
            collector.stop()
