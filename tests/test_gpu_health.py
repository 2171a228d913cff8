"""GPU health families (ECC, retired pages, remapped rows, clocks event reasons, NVLink, power limit) as scraped."""

from __future__ import annotations

import logging

import pynvml
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.parser import text_string_to_metric_families

from tests.fake_nvml import UUID0, UUID1, FakePynvml, err, h100, nvlink
from tests.test_gpu import collector, scrape, series

ECC = {  # (error type, counter type) -> count
    (pynvml.NVML_MEMORY_ERROR_TYPE_CORRECTED, pynvml.NVML_VOLATILE_ECC): 12,
    (pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, pynvml.NVML_VOLATILE_ECC): 2,
    (pynvml.NVML_MEMORY_ERROR_TYPE_CORRECTED, pynvml.NVML_AGGREGATE_ECC): 340,
    (pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, pynvml.NVML_AGGREGATE_ECC): 7,
}
RETIRED = {
    pynvml.NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS: [0x1000, 0x2000, 0x3000],
    pynvml.NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR: [0x4000],
}


def sick_gpu(**answers):
    """An H100 with ECC errors, remapped rows (one pending), thermal and HW slowdown, and NVLink traffic."""
    sick = {
        "nvmlDeviceGetTotalEccErrors": lambda error_type, counter: ECC[(error_type, counter)],
        "nvmlDeviceGetRemappedRows": (5, 1, 1, 0),
        "nvmlDeviceGetCurrentClocksEventReasons": pynvml.nvmlClocksEventReasonHwSlowdown
        | pynvml.nvmlClocksEventReasonHwThermalSlowdown,
        "nvmlDeviceGetFieldValues": nvlink(3_000_000),
    }
    return h100(**{**sick, **answers})


def types(c) -> dict[str, str]:
    """Family types as Prometheus reads them: OpenMetrics, which it asks for first, names the series exactly."""
    registry = CollectorRegistry()
    registry.register(c)
    lines = generate_openmetrics(registry).decode().splitlines()
    return dict(line.split()[2:4] for line in lines if line.startswith("# TYPE "))


def test_health_families_have_dcgm_names_types_and_values():
    c = collector(FakePynvml([sick_gpu(), h100(UUID1, "00000000:00:07.0")]))
    c.sampler.sample_now()  # NVLink's rate needs two readings
    text = scrape(c)
    expected = {  # name: (type, {gpu: value})
        "DCGM_FI_DEV_ECC_SBE_VOL_TOTAL": ("counter", {("0",): 12, ("1",): 0}),
        "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL": ("counter", {("0",): 2, ("1",): 0}),
        "DCGM_FI_DEV_ECC_SBE_AGG_TOTAL": ("counter", {("0",): 340, ("1",): 0}),
        "DCGM_FI_DEV_ECC_DBE_AGG_TOTAL": ("counter", {("0",): 7, ("1",): 0}),
        "DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS": ("counter", {("0",): 5, ("1",): 0}),
        "DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS": ("counter", {("0",): 1, ("1",): 0}),
        "DCGM_FI_DEV_ROW_REMAP_PENDING": ("gauge", {("0",): 1, ("1",): 0}),
        "DCGM_FI_DEV_ROW_REMAP_FAILURE": ("gauge", {("0",): 0, ("1",): 0}),
        "DCGM_FI_DEV_CLOCKS_EVENT_REASONS": ("gauge", {("0",): 0x48, ("1",): 0x4}),
        # 3,000,000 KiB in one second: 3000 "MiB/s" by DCGM's arithmetic (KiB/s / 1000).
        "DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL": ("counter", {("0",): 3000, ("1",): 0}),
        "DCGM_FI_DEV_POWER_MGMT_LIMIT": ("gauge", {("0",): 700, ("1",): 700}),
    }
    found = types(c)
    for name, (typ, values) in expected.items():
        assert found[name] == typ, name
        assert series(text, name) == values, name
    lines = text.splitlines()
    assert "# HELP DCGM_FI_DEV_ROW_REMAP_FAILURE Whether remapping of rows has failed" in lines
    line = next(x for x in lines if x.startswith("DCGM_FI_DEV_ROW_REMAP_PENDING{") and 'gpu="0"' in x)
    assert f'UUID="{UUID0}"' in line and 'Hostname="gpu01"' in line and 'DCGM_FI_DRIVER_VERSION="580.159.04"' in line
    # Hopper remaps rows instead of retiring pages: those families are absent, not 0.
    assert "DCGM_FI_DEV_RETIRED" not in text


def test_clocks_event_reasons_are_decoded_per_reason():
    c = collector(FakePynvml([sick_gpu(), h100(UUID1, "00000000:00:07.0")]))
    text = scrape(c)
    got = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "fleet_gpu_clocks_event_reason":
                got[(s.labels["gpu"], s.labels["reason"])] = s.value
    assert types(c)["fleet_gpu_clocks_event_reason"] == "gauge"
    active = sorted(key for key, v in got.items() if v == 1)
    assert active == [("0", "hw_slowdown"), ("0", "hw_thermal_slowdown"), ("1", "sw_power_cap")]
    assert len(got) == 2 * 9  # every reason on each GPU: 0 is "not now", a value a graph can show


def test_retired_pages_on_a_gpu_that_retires_pages():
    v100 = h100(
        nvmlDeviceGetRetiredPages=lambda cause: RETIRED[cause],
        nvmlDeviceGetRetiredPagesPendingStatus=pynvml.NVML_FEATURE_ENABLED,
        nvmlDeviceGetRemappedRows=err(pynvml.NVML_ERROR_NOT_SUPPORTED),
    )
    text = scrape(collector(FakePynvml([v100])))
    assert series(text, "DCGM_FI_DEV_RETIRED_SBE") == {("0",): 3}
    assert series(text, "DCGM_FI_DEV_RETIRED_DBE") == {("0",): 1}
    assert series(text, "DCGM_FI_DEV_RETIRED_PENDING") == {("0",): 1}
    assert "REMAPPED_ROWS" not in text and "ROW_REMAP" not in text


def test_nvlink_rate_is_zero_first_then_per_second():
    c = collector(FakePynvml([sick_gpu()]))
    assert series(scrape(c), "DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL") == {("0",): 0}
    c.sampler.sample_now()
    assert series(scrape(c), "DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL") == {("0",): 3000}


def test_gpu_without_nvlink_has_no_nvlink_series():
    def no_links(fields):
        return [pynvml.c_nvmlFieldValue_t(fieldId=f, nvmlReturn=pynvml.NVML_ERROR_NOT_SUPPORTED) for f, _ in fields]

    c = collector(FakePynvml([h100(nvmlDeviceGetFieldValues=no_links)]))
    c.sampler.sample_now()
    text = scrape(c)
    assert "NVLINK" not in text and series(text, "DCGM_FI_DEV_POWER_MGMT_LIMIT") == {("0",): 700}


HEALTH_CALLS = (
    "nvmlDeviceGetTotalEccErrors",
    "nvmlDeviceGetRetiredPages",
    "nvmlDeviceGetRetiredPagesPendingStatus",
    "nvmlDeviceGetRemappedRows",
    "nvmlDeviceGetCurrentClocksEventReasons",
    "nvmlDeviceGetCurrentClocksThrottleReasons",
    "nvmlDeviceGetPowerManagementLimit",
    "nvmlDeviceGetFieldValues",
)


@pytest.mark.parametrize(
    "code",
    [pynvml.NVML_ERROR_NOT_SUPPORTED, pynvml.NVML_ERROR_FUNCTION_NOT_FOUND, pynvml.NVML_ERROR_NO_PERMISSION],
    ids=["not-supported", "old-driver", "no-permission"],
)
def test_every_health_call_failing_leaves_the_rest(caplog, code):
    broken = h100(**{call: err(code) for call in HEALTH_CALLS})
    with caplog.at_level(logging.INFO, logger="exporter.nvml"):
        c = collector(FakePynvml([broken, sick_gpu(uuid=UUID1, pci="00000000:00:07.0")]))
        c.sampler.sample_now()
        text = scrape(c)
    assert series(text, "DCGM_FI_DEV_POWER_USAGE") == {("0",): 696.508, ("1",): 696.508}
    for name in ("DCGM_FI_DEV_ECC_DBE_VOL_TOTAL", "DCGM_FI_DEV_ROW_REMAP_PENDING", "DCGM_FI_DEV_POWER_MGMT_LIMIT"):
        assert series(text, name).keys() == {("1",)}, name
    assert series(text, "DCGM_FI_DEV_CLOCKS_EVENT_REASONS") == {("1",): 0x48}
    for call in HEALTH_CALLS:  # each said once, though two readings asked
        assert caplog.text.count(f"NVML {call} unusable here") == 1, call


def test_clocks_event_reasons_fall_back_to_the_throttle_call():
    old = h100(
        nvmlDeviceGetCurrentClocksEventReasons=err(pynvml.NVML_ERROR_FUNCTION_NOT_FOUND),
        nvmlDeviceGetCurrentClocksThrottleReasons=pynvml.nvmlClocksThrottleReasonSwThermalSlowdown,
    )
    assert series(scrape(collector(FakePynvml([old]))), "DCGM_FI_DEV_CLOCKS_EVENT_REASONS") == {("0",): 0x20}


def test_lost_gpu_while_reading_health_is_left_out():
    lost = h100(nvmlDeviceGetRemappedRows=err(pynvml.NVML_ERROR_GPU_IS_LOST))
    text = scrape(collector(FakePynvml([lost, h100(UUID1)])))
    assert series(text, "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL") == {("1",): 0}


def real_reading(call, *args):
    """What the real GPU 0 answers to ``call``, or None where it cannot (the family must then be absent)."""
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    try:
        return getattr(pynvml, call)(h, *args)
    except pynvml.NVMLError:
        return None


@pytest.mark.gpu
def test_real_nvml_health_families_equal_nvmls_own_answers():
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        pytest.skip(f"NVML does not initialise here: {exc}")
    from exporter.gpu import GpuCollector
    from exporter.nvml import Nvml

    try:
        c = GpuCollector(Nvml(), hostname="test")
        c.sampler.sample_now()
        c.sampler.sample_now()  # NVLink's rate and GPM need two readings
        text = scrape(c)
        volatile, aggregate = pynvml.NVML_VOLATILE_ECC, pynvml.NVML_AGGREGATE_ECC
        corrected, uncorrected = pynvml.NVML_MEMORY_ERROR_TYPE_CORRECTED, pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED
        rows = real_reading("nvmlDeviceGetRemappedRows")
        limit = real_reading("nvmlDeviceGetPowerManagementLimit")
        want = {  # counters and settings that do not move between two reads a moment apart
            "DCGM_FI_DEV_ECC_SBE_VOL_TOTAL": real_reading("nvmlDeviceGetTotalEccErrors", corrected, volatile),
            "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL": real_reading("nvmlDeviceGetTotalEccErrors", uncorrected, volatile),
            "DCGM_FI_DEV_ECC_SBE_AGG_TOTAL": real_reading("nvmlDeviceGetTotalEccErrors", corrected, aggregate),
            "DCGM_FI_DEV_ECC_DBE_AGG_TOTAL": real_reading("nvmlDeviceGetTotalEccErrors", uncorrected, aggregate),
            "DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS": rows and rows[0],
            "DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS": rows and rows[1],
            "DCGM_FI_DEV_ROW_REMAP_PENDING": rows and rows[2],
            "DCGM_FI_DEV_ROW_REMAP_FAILURE": rows and rows[3],
            "DCGM_FI_DEV_RETIRED_PENDING": real_reading("nvmlDeviceGetRetiredPagesPendingStatus"),
            "DCGM_FI_DEV_POWER_MGMT_LIMIT": limit and limit / 1000,
        }
        for name, value in want.items():
            got = series(text, name).get(("0",))
            assert got == (None if value is None else pytest.approx(value)), name
        # These move: present exactly where NVML answers.
        assert (("0",) in series(text, "DCGM_FI_DEV_CLOCKS_EVENT_REASONS")) == (
            real_reading("nvmlDeviceGetCurrentClocksEventReasons") is not None
            or real_reading("nvmlDeviceGetCurrentClocksThrottleReasons") is not None
        )
        support = real_reading("nvmlGpmQueryDeviceSupport")
        mig = real_reading("nvmlDeviceGetMigMode")
        if support is not None and support.isSupportedDevice and not (mig and mig[0]):
            assert ("0",) in series(text, "DCGM_FI_PROF_GR_ENGINE_ACTIVE")  # Hopper and newer
        shown = ("DCGM_FI_DEV_ECC", "DCGM_FI_DEV_R", "DCGM_FI_DEV_C", "DCGM_FI_DEV_NVLINK", "DCGM_FI_DEV_POWER_MGMT")
        print("\n".join(x for x in text.splitlines() if x.startswith((*shown, "DCGM_FI_PROF", "fleet_gpu_clocks"))))
    finally:
        pynvml.nvmlShutdown()
