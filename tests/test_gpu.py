"""GpuCollector as a scraper sees it, with NVML faked at the pynvml boundary."""

from __future__ import annotations

import logging
import sys
from types import SimpleNamespace as NS
from typing import Any

import pynvml
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.parser import text_string_to_metric_families

from exporter.gpu import GpuCollector
from exporter.nvml import NO_NVML_MESSAGE, Nvml
from exporter.processes import GpuProcess
from exporter.sampling import SampleFailed
from tests.fake_nvml import MIB, TAKEN_AT, UUID0, UUID1, FakePynvml, err, h100, memory


def collector(lib: Any, **kwargs: Any) -> GpuCollector:
    c = GpuCollector(Nvml(lib), hostname="gpu01", clock=lambda: TAKEN_AT, **kwargs)
    c.sampler.sample_now()
    return c


def scrape(c: GpuCollector) -> str:
    registry = CollectorRegistry()
    registry.register(c)
    return generate_latest(registry).decode()


def series(text: str, name: str) -> dict[tuple[str, ...], float]:
    """``name``'s samples keyed by (gpu[, GPU_I_ID])."""
    found = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name:
                key = (s.labels["gpu"], s.labels["GPU_I_ID"]) if "GPU_I_ID" in s.labels else (s.labels["gpu"],)
                found[key] = s.value
    return found


def test_two_h100s_give_dcgm_names_labels_and_values():
    idle = h100(
        UUID1,
        "00000000:00:07.0",
        nvmlDeviceGetUtilizationRates=NS(gpu=0, memory=0),
        nvmlDeviceGetMemoryInfo=memory(0, 479 * MIB),
        nvmlDeviceGetPowerUsage=76327,
        nvmlDeviceGetComputeRunningProcesses=[],
    )
    text = scrape(collector(FakePynvml([h100(), idle])))

    labels0 = (
        f'DCGM_FI_DRIVER_VERSION="580.159.04",Hostname="gpu01",UUID="{UUID0}",device="nvidia0",'
        'gpu="0",modelName="NVIDIA H100 80GB HBM3",pci_bus_id="00000000:00:06.0"'
    )
    lines = text.splitlines()
    assert "# HELP DCGM_FI_DEV_POWER_USAGE Power draw (in W)." in lines
    assert "# TYPE DCGM_FI_DEV_POWER_USAGE gauge" in lines
    assert f"DCGM_FI_DEV_POWER_USAGE{{{labels0}}} 696.508" in lines
    assert f"DCGM_FI_DEV_FB_USED{{{labels0}}} 13171.0" in lines  # v2, not v1's 13650
    expected0 = {
        "DCGM_FI_DEV_GPU_UTIL": 100,
        "DCGM_FI_DEV_MEM_COPY_UTIL": 30,
        "DCGM_FI_DEV_ENC_UTIL": 0,
        "DCGM_FI_DEV_DEC_UTIL": 0,
        "DCGM_FI_DEV_FB_USED": 13171,
        "DCGM_FI_DEV_FB_FREE": 67908,
        "DCGM_FI_DEV_FB_RESERVED": 479,
        "DCGM_FI_DEV_GPU_TEMP": 69,
        "DCGM_FI_DEV_POWER_USAGE": 696.508,
        "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION": 16370176,
        "DCGM_FI_DEV_SM_CLOCK": 1305,
        "DCGM_FI_DEV_MEM_CLOCK": 2619,
        "DCGM_FI_DEV_PCIE_REPLAY_COUNTER": 0,
    }
    for name, value in expected0.items():
        assert series(text, name)[("0",)] == value, name
    assert series(text, "DCGM_FI_DEV_GPU_UTIL") == {("0",): 100, ("1",): 0}
    assert series(text, "DCGM_FI_DEV_FB_USED") == {("0",): 13171, ("1",): 0}
    assert series(text, "DCGM_FI_DEV_POWER_USAGE")[("1",)] == 76.327
    assert "fleet_gpu_devices 2.0" in lines
    assert "fleet_gpu_sample_timestamp_seconds 1.79e+09" in lines
    assert not any("Fan" in line or "FAN" in line for line in lines)


def test_counters_keep_dcgm_exact_sample_names():
    c = collector(FakePynvml([h100()]))
    text = scrape(c)
    samples = {line.split("{")[0] for line in text.splitlines() if not line.startswith("#")}
    assert "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION" in samples
    assert "DCGM_FI_DEV_PCIE_REPLAY_COUNTER" in samples
    assert not any(name.endswith("_total") for name in samples)
    # Prometheus asks for OpenMetrics first; there the TYPE line names the series exactly.
    registry = CollectorRegistry()
    registry.register(c)
    om = generate_openmetrics(registry).decode().splitlines()
    assert "# TYPE DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION counter" in om
    assert "# TYPE DCGM_FI_DEV_PCIE_REPLAY_COUNTER counter" in om


def test_unsupported_field_is_absent_and_the_rest_stays(caplog):
    not_supported = err(pynvml.NVML_ERROR_NOT_SUPPORTED)
    lib = FakePynvml(
        [
            h100(nvmlDeviceGetPcieReplayCounter=not_supported),
            h100(UUID1, nvmlDeviceGetPcieReplayCounter=not_supported),
        ]
    )
    with caplog.at_level(logging.DEBUG, logger="exporter.nvml"):
        c = collector(lib)
        c.sampler.sample_now()
        text = scrape(c)
    assert "DCGM_FI_DEV_PCIE_REPLAY_COUNTER" not in text  # neither a series nor a HELP line
    assert series(text, "DCGM_FI_DEV_POWER_USAGE") == {("0",): 696.508, ("1",): 696.508}
    assert series(text, "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION") == {
        ("0",): 16370176,
        ("1",): 16370176,
    }
    # Said once, not per GPU nor per reading.
    assert caplog.text.count("nvmlDeviceGetPcieReplayCounter unusable here (Not Supported)") == 1


def test_function_not_found_is_logged_once(caplog):
    lib = FakePynvml([h100(nvmlDeviceGetTemperature=err(pynvml.NVML_ERROR_FUNCTION_NOT_FOUND))] * 2)
    with caplog.at_level(logging.INFO, logger="exporter.nvml"):
        c = collector(lib)
        c.sampler.sample_now()
    assert "DCGM_FI_DEV_GPU_TEMP" not in scrape(c)
    assert caplog.text.count("nvmlDeviceGetTemperature") == 1


def test_memory_falls_back_to_v1_without_reserved():
    v1_only = h100()
    v2 = v1_only["nvmlDeviceGetMemoryInfo"]

    def memory_v1(version=None):
        if version is not None:
            raise err(pynvml.NVML_ERROR_FUNCTION_NOT_FOUND)
        return v2()

    v1_only["nvmlDeviceGetMemoryInfo"] = memory_v1
    text = scrape(collector(FakePynvml([v1_only])))
    assert series(text, "DCGM_FI_DEV_FB_USED") == {("0",): 13650}
    assert "DCGM_FI_DEV_FB_RESERVED" not in text


@pytest.mark.parametrize("code", [pynvml.NVML_ERROR_LIBRARY_NOT_FOUND, pynvml.NVML_ERROR_DRIVER_NOT_LOADED])
def test_no_nvml_means_no_gpus_logged_once(caplog, code):
    with caplog.at_level(logging.WARNING):
        c = collector(FakePynvml([h100()], init_error=code))
        texts = []
        for _ in range(3):
            c.sampler.sample_now()
            texts.append(scrape(c))
    assert all("DCGM_" not in t and "fleet_gpu" not in t for t in texts)
    assert caplog.text.count(NO_NVML_MESSAGE) == 1
    assert c.processes() == []


def test_pynvml_not_installed_means_no_gpus(caplog, monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes `import pynvml` raise ImportError
    with caplog.at_level(logging.WARNING):
        c = collector(None)
        c.sampler.sample_now()
        assert scrape(c) == ""
    assert caplog.text.count(NO_NVML_MESSAGE) == 1


def test_broken_nvml_fails_the_collector():
    c = collector(FakePynvml([h100()], init_error=pynvml.NVML_ERROR_LIB_RM_VERSION_MISMATCH))
    with pytest.raises(SampleFailed):
        list(c.collect())
    assert c.processes() == []


def test_lost_gpu_is_left_out_and_others_reported(caplog):
    lib = FakePynvml([{"lost": True}, h100(UUID1)])
    with caplog.at_level(logging.ERROR, logger="exporter.nvml"):
        c = collector(lib)
        c.sampler.sample_now()
        text = scrape(c)
    assert series(text, "DCGM_FI_DEV_GPU_TEMP") == {("1",): 69}
    assert "fleet_gpu_devices 1.0" in text.splitlines()
    assert caplog.text.count("GPU 0 is lost") == 1


def mig_gpu(**answers: Any) -> dict[str, Any]:
    """An H100 in MIG mode: a 3g.40gb and a 1g.10gb GI (two compute instances), sparse slots."""
    name = "NVIDIA H100 80GB HBM3 MIG "
    big = {
        "nvmlDeviceGetName": name + "3g.40gb",
        "nvmlDeviceGetGpuInstanceId": 2,
        "nvmlDeviceGetMemoryInfo": memory(20000 * MIB, 0),
        "nvmlDeviceGetComputeRunningProcesses": [NS(pid=800, usedGpuMemory=20000 * MIB)],
    }
    small = {
        "nvmlDeviceGetName": name + "1g.10gb",
        "nvmlDeviceGetGpuInstanceId": 9,
        "nvmlDeviceGetMemoryInfo": memory(512 * MIB, 0),
        "nvmlDeviceGetComputeRunningProcesses": [NS(pid=900, usedGpuMemory=512 * MIB)],
    }
    small_ci1 = {
        **small,
        "nvmlDeviceGetComputeRunningProcesses": [NS(pid=901, usedGpuMemory=1 * MIB)],
    }
    slots = {0: big, 3: small, 4: small_ci1}
    not_found = err(pynvml.NVML_ERROR_NOT_FOUND)

    def by_index(i: int) -> Any:
        return slots.get(i, not_found)

    return h100(
        UUID1,
        "00000000:00:07.0",
        nvmlDeviceGetMigMode=[1, 1],
        nvmlDeviceGetMaxMigDeviceCount=7,
        nvmlDeviceGetMigDeviceHandleByIndex=by_index,
        nvmlDeviceGetUtilizationRates=err(pynvml.NVML_ERROR_NOT_SUPPORTED),
        gpm_mig={  # GPM percentages per GPU instance id
            2: {
                pynvml.NVML_GPM_METRIC_GRAPHICS_UTIL: 80.0,
                pynvml.NVML_GPM_METRIC_ANY_TENSOR_UTIL: 55.0,
                pynvml.NVML_GPM_METRIC_DRAM_BW_UTIL: 20.0,
            },
            9: {
                pynvml.NVML_GPM_METRIC_GRAPHICS_UTIL: 10.0,
                pynvml.NVML_GPM_METRIC_ANY_TENSOR_UTIL: 0.0,
                pynvml.NVML_GPM_METRIC_DRAM_BW_UTIL: 5.0,
            },
        },
        **answers,
    )


def test_mig_gpu_has_instance_series_without_utilization():
    c = collector(FakePynvml([h100(), mig_gpu()]))
    text = scrape(c)
    assert series(text, "DCGM_FI_DEV_FB_USED") == {
        ("0",): 13171,
        ("1", "2"): 20000,
        ("1", "9"): 512,
    }
    # Device-wide readings are repeated on every instance, as dcgm-exporter does.
    assert series(text, "DCGM_FI_DEV_GPU_TEMP") == {("0",): 69, ("1", "2"): 69, ("1", "9"): 69}
    assert series(text, "DCGM_FI_DEV_GPU_UTIL") == {("0",): 100}
    assert series(text, "DCGM_FI_DEV_MEM_COPY_UTIL") == {("0",): 30}
    assert series(text, "DCGM_FI_DEV_ENC_UTIL") == {("0",): 0}
    assert series(text, "DCGM_FI_DEV_DEC_UTIL") == {("0",): 0}
    line = next(x for x in text.splitlines() if x.startswith("DCGM_FI_DEV_FB_USED") and 'GPU_I_ID="9"' in x)
    assert 'GPU_I_PROFILE="1g.10gb"' in line and f'UUID="{UUID1}"' in line and 'device="nvidia1"' in line
    assert "fleet_gpu_devices 2.0" in text.splitlines()
    assert sorted(c.processes()) == [
        GpuProcess(473, "0", UUID0, 13801357312),
        GpuProcess(800, "1", UUID1, 20000 * MIB),
        GpuProcess(900, "1", UUID1, 512 * MIB),
        GpuProcess(901, "1", UUID1, 1 * MIB),
    ]


def test_hostname_label_switch():
    text = scrape(collector(FakePynvml([h100()]), hostname_label="hostname"))
    line = next(x for x in text.splitlines() if x.startswith("DCGM_FI_DEV_GPU_TEMP{"))
    assert 'hostname="gpu01"' in line and "Hostname=" not in line
    with pytest.raises(ValueError):
        GpuCollector(Nvml(FakePynvml([])), hostname="gpu01", hostname_label="host")


def test_processes_come_from_the_latest_sample():
    lib = FakePynvml([h100()])
    c = GpuCollector(Nvml(lib), hostname="gpu01")
    assert c.processes() == []  # before the first sample
    c.sampler.sample_now()
    assert c.processes() == [GpuProcess(473, "0", UUID0, 13801357312)]  # pid 474: memory N/A


def test_shutdown_releases_nvml_once():
    lib = FakePynvml([h100()])
    nvml = Nvml(lib)
    assert len(nvml.devices()) == 1
    nvml.shutdown()
    nvml.shutdown()
    assert lib.shutdowns == 1


@pytest.mark.gpu
def test_real_nvml_reports_every_gpu():
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        pytest.skip(f"NVML does not initialise here: {exc}")
    try:
        count = pynvml.nvmlDeviceGetCount()
    finally:
        pynvml.nvmlShutdown()
    c = GpuCollector(Nvml(), hostname="test")
    c.sampler.sample_now()
    text = scrape(c)
    assert len(series(text, "DCGM_FI_DEV_POWER_USAGE")) >= count > 0
    assert series(text, "DCGM_FI_DEV_FB_FREE")
    assert f"fleet_gpu_devices {float(count)}" in text.splitlines()
    for p in c.processes():
        assert p.used_bytes > 0 and p.pid > 0


PROF = ("DCGM_FI_PROF_GR_ENGINE_ACTIVE", "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE", "DCGM_FI_PROF_DRAM_ACTIVE")


def test_gpm_ratios_appear_from_the_second_reading():
    lib = FakePynvml([h100(), h100(uuid=UUID1, pci="00000000:00:07.0")])
    c = collector(lib)
    first = scrape(c)
    assert all(name not in first for name in PROF)  # one GPM sample is not an interval yet
    assert series(first, "DCGM_FI_DEV_GPU_UTIL") == {("0",): 100.0, ("1",): 100.0}
    for _ in range(2):  # each reading compares with the one before, in the same two buffers
        c.sampler.sample_now()
        text = scrape(c)
        assert series(text, "DCGM_FI_PROF_GR_ENGINE_ACTIVE") == {("0",): 0.96, ("1",): 0.96}
        assert series(text, "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE") == {("0",): 0.415, ("1",): 0.415}
        assert series(text, "DCGM_FI_PROF_DRAM_ACTIVE") == {("0",): 0.3, ("1",): 0.3}
    assert "# HELP DCGM_FI_PROF_PIPE_TENSOR_ACTIVE Ratio of cycles the tensor (HMMA) pipe is active." in text
    assert "# TYPE DCGM_FI_PROF_PIPE_TENSOR_ACTIVE gauge" in text
    line = next(x for x in text.splitlines() if x.startswith("DCGM_FI_PROF_DRAM_ACTIVE{") and 'gpu="1"' in x)
    assert f'UUID="{UUID1}"' in line and 'Hostname="gpu01"' in line and 'modelName="NVIDIA H100 80GB HBM3"' in line
    assert lib.gpm_allocated == 4


@pytest.mark.parametrize(
    "support",
    [
        NS(isSupportedDevice=0),  # an A100: DCGM needs its profiling module there
        err(pynvml.NVML_ERROR_NOT_SUPPORTED),
        err(pynvml.NVML_ERROR_FUNCTION_NOT_FOUND),  # a driver older than GPM
    ],
    ids=["unsupported", "not-supported", "old-driver"],
)
def test_gpu_without_gpm_has_no_prof_series_but_the_rest(support):
    lib = FakePynvml([h100(nvmlGpmQueryDeviceSupport=support), h100(uuid=UUID1, pci="00000000:00:07.0")])
    c = collector(lib)
    c.sampler.sample_now()
    text = scrape(c)
    assert series(text, "DCGM_FI_PROF_GR_ENGINE_ACTIVE") == {("1",): 0.96}
    assert series(text, "DCGM_FI_DEV_GPU_UTIL") == {("0",): 100.0, ("1",): 100.0}
    assert lib.gpm_allocated == 2  # none for GPU 0


def test_mig_instances_have_prof_series_from_gpm():
    lib = FakePynvml([mig_gpu(), h100(uuid=UUID0)])
    c = collector(lib)
    assert all(name not in scrape(c) for name in PROF)  # one sample per instance is not an interval yet
    c.sampler.sample_now()
    text = scrape(c)
    # GPU 0 is in MIG mode: one series per GPU instance, none for the whole GPU.
    assert series(text, "DCGM_FI_PROF_GR_ENGINE_ACTIVE") == {("0", "2"): 0.8, ("0", "9"): 0.1, ("1",): 0.96}
    assert series(text, "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE") == {("0", "2"): 0.55, ("0", "9"): 0.0, ("1",): 0.415}
    assert series(text, "DCGM_FI_PROF_DRAM_ACTIVE") == {("0", "2"): 0.2, ("0", "9"): 0.05, ("1",): 0.3}
    line = next(x for x in text.splitlines() if x.startswith("DCGM_FI_PROF_DRAM_ACTIVE{") and 'GPU_I_ID="9"' in x)
    assert 'GPU_I_PROFILE="1g.10gb"' in line and f'UUID="{UUID1}"' in line
    nvml = Nvml(lib)
    nvml.devices()
    nvml.devices()
    nvml.shutdown()  # every buffer, the instances' too, is freed
    assert lib.gpm_freed == 6 and lib.gpm_allocated == 12


def test_destroyed_mig_instance_frees_its_gpm_samples():
    gpu = mig_gpu()
    lib = FakePynvml([gpu])
    c = collector(lib)
    c.sampler.sample_now()
    gpu["nvmlDeviceGetMigDeviceHandleByIndex"] = lambda i: gpu_slots_without_gi_9(i)
    c.sampler.sample_now()
    assert lib.gpm_freed == 2  # GPU instance 9's two buffers
    assert series(scrape(c), "DCGM_FI_PROF_DRAM_ACTIVE") == {("0", "2"): 0.2}


def gpu_slots_without_gi_9(i: int) -> Any:
    return mig_gpu()["nvmlDeviceGetMigDeviceHandleByIndex"](i) if i == 0 else err(pynvml.NVML_ERROR_NOT_FOUND)


def test_mig_gpu_without_gpm_has_no_prof_series():
    c = collector(FakePynvml([mig_gpu(nvmlGpmQueryDeviceSupport=NS(isSupportedDevice=0))]))  # an A100
    c.sampler.sample_now()
    text = scrape(c)
    assert series(text, "DCGM_FI_DEV_FB_USED")
    assert all(name not in text for name in PROF)


def test_gpm_failure_on_one_gpu_is_logged_once_and_spares_the_other(caplog):
    broken = h100(nvmlGpmSampleGet=err(pynvml.NVML_ERROR_UNKNOWN))
    with caplog.at_level(logging.INFO, logger="exporter.nvml"):
        c = collector(FakePynvml([broken, h100(uuid=UUID1, pci="00000000:00:07.0")]))
        for _ in range(3):
            c.sampler.sample_now()
    text = scrape(c)
    assert series(text, "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE") == {("1",): 0.415}
    assert series(text, "DCGM_FI_DEV_GPU_UTIL") == {("0",): 100.0, ("1",): 100.0}
    failures = [r for r in caplog.records if "GPM failed" in r.getMessage()]
    assert len(failures) == 1 and UUID0 in failures[0].getMessage()


def test_gpm_recovers_after_a_failed_sample():
    fails = iter([None, err(pynvml.NVML_ERROR_UNKNOWN)])
    flaky = h100(nvmlGpmSampleGet=lambda: next(fails, None))
    c = collector(FakePynvml([flaky]))  # reading 1: the first sample
    c.sampler.sample_now()  # reading 2: its sample fails
    assert all(name not in scrape(c) for name in PROF)
    c.sampler.sample_now()  # reading 3: measured against reading 1
    assert series(scrape(c), "DCGM_FI_PROF_DRAM_ACTIVE") == {("0",): 0.3}


def test_lost_gpu_during_gpm_is_left_out():
    c = collector(FakePynvml([h100(nvmlGpmSampleGet=err(pynvml.NVML_ERROR_GPU_IS_LOST)), h100(uuid=UUID1)]))
    assert series(scrape(c), "DCGM_FI_DEV_GPU_UTIL") == {("1",): 100.0}


def test_shutdown_frees_the_gpm_samples():
    lib = FakePynvml([h100(), h100(uuid=UUID1, pci="00000000:00:07.0")])
    nvml = Nvml(lib)
    nvml.devices()
    nvml.devices()
    nvml.shutdown()
    assert lib.gpm_allocated == lib.gpm_freed == 4
