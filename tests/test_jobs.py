"""Per-job accounting on fake cgroup trees (v1 as Debian's Slurm lays it out, v2 as slurmstepd.scope) and fake NVML."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from types import SimpleNamespace as NS

import pytest
import requests

from exporter.cgroups import JobCgroups, cpulist_count, slurm_cgroups_present
from exporter.jobs import JobCollector
from exporter.nvml import Nvml
from exporter.registry import ExporterConfig, build_registry
from fleetwatch.stack import wait_http
from fleetwatch.testing.cgroups import MEM_TOTAL_KB, V1_NO_LIMIT, MiB, fake_proc, process, v1_job, v2_tree, write
from fleetwatch.testing.waits import free_port
from tests.fake_nvml import UUID0, UUID1, FakePynvml, h100


@pytest.fixture
def proc(tmp_path) -> Path:
    """A proc root with meminfo, the driver's GPU information, and the GPU processes' cgroup files."""
    return fake_proc(tmp_path / "proc")


@pytest.fixture
def v1(tmp_path) -> Path:
    root = tmp_path / "cgroup"
    v1_job(root, 42, 1000, usage_ns=93_100_000_000, cpus="0-1,4", rss=512 * MiB, cache=64 * MiB, limit=4096 * MiB)
    v1_job(root, 43, 1001, usage_ns=20_000_000, cpus="", rss=MiB, cache=0, limit=V1_NO_LIMIT,
           devices="c 1:3 rwm\nc 195:255 rwm\nc 195:3 rwm\n")  # fmt: skip
    return root


def registry_for(collector: JobCollector):
    registry, _ = build_registry(
        ExporterConfig(host=False, gpu=False, processes=False, jobs=False, extra_collectors={"jobs": collector})
    )
    collector.sampler.sample_now()
    return registry


def job(registry, family: str, jobid: str) -> float | None:
    return registry.get_sample_value(family, {"jobid": jobid, "step": "", "task": ""})


def test_v1_job_cgroups_in_cgroup_exporters_names(v1, proc):
    r = registry_for(JobCollector(JobCgroups(v1, proc), proc_root=proc))
    assert job(r, "cgroup_cpu_total_seconds", "42") == pytest.approx(93.1)
    assert job(r, "cgroup_cpu_user_seconds", "42") == pytest.approx((9310 - 50) / os.sysconf("SC_CLK_TCK"))
    assert job(r, "cgroup_cpus", "42") == 3
    assert job(r, "cgroup_cpus", "43") == 16  # an empty cpuset is its parent's
    assert job(r, "cgroup_memory_rss_bytes", "42") == 512 * MiB
    assert job(r, "cgroup_memory_used_bytes", "42") == 576 * MiB
    assert job(r, "cgroup_memory_cache_bytes", "42") == 64 * MiB
    assert job(r, "cgroup_memory_shmem_bytes", "42") == 32 * MiB  # cache - active/inactive file, as jobstats sums it
    assert job(r, "cgroup_memory_total_bytes", "42") == 4096 * MiB
    assert job(r, "cgroup_memory_total_bytes", "43") == MEM_TOTAL_KB * 1024  # no limit: the node's memory
    assert job(r, "cgroup_memory_fail_count", "42") == 2
    assert r.get_sample_value("cgroup_uid", {"jobid": "43"}) == 1001
    assert r.get_sample_value("fleet_job_memory_peak_bytes", {"jobid": "42"}) == 577 * MiB
    assert r.get_sample_value("fleet_jobs") == 2
    assert r.get_sample_value("fleet_exporter_collector_success", {"collector": "jobs"}) == 1


def test_v1_where_only_the_freezer_names_the_job(tmp_path, proc):
    # Constrain*=no (facts/slurm, base config): the job is known, its CPU and memory are not.
    root = tmp_path / "cgroup"
    write(root / "freezer/slurm_vm/uid_0/job_5/step_batch/cgroup.procs", "7150\n")
    write(root / "cpuacct/cpuacct.usage", "1\n")
    r = registry_for(JobCollector(JobCgroups(root, proc), proc_root=proc))
    assert r.get_sample_value("fleet_jobs") == 1
    assert r.get_sample_value("cgroup_uid", {"jobid": "5"}) == 0
    assert job(r, "cgroup_cpu_total_seconds", "5") is None  # absent, not a fake 0


def test_v2_job_cgroups(tmp_path, proc):
    root = tmp_path / "cgroup"
    v2_tree(root, proc)
    r = registry_for(JobCollector(JobCgroups(root, proc), proc_root=proc))
    assert job(r, "cgroup_cpu_total_seconds", "7") == 61
    assert job(r, "cgroup_cpu_system_seconds", "7") == 1
    assert job(r, "cgroup_cpus", "7") == 4
    assert job(r, "cgroup_memory_used_bytes", "7") == 300 * MiB
    assert job(r, "cgroup_memory_rss_bytes", "7") == 200 * MiB
    assert job(r, "cgroup_memory_shmem_bytes", "7") == 10 * MiB
    assert job(r, "cgroup_memory_total_bytes", "7") == 8192 * MiB  # "max": the scope's limit above it
    assert job(r, "cgroup_memory_fail_count", "7") == 1
    assert r.get_sample_value("cgroup_uid", {"jobid": "7"}) == 1234  # v2 paths carry none: its process's owner
    assert r.get_sample_value("fleet_job_memory_peak_bytes", {"jobid": "7"}) == 400 * MiB


def test_gpus_belong_to_the_jobs_whose_processes_use_them(tmp_path, proc):
    root = tmp_path / "cgroup"
    v2_tree(root, proc)
    process(proc, 6002, "0::/system.slice/vm_slurmstepd.scope/job_7/step_1/user/task_0\n", 1234)
    process(proc, 6100, "0::/user.slice/user-0.slice/session-1.scope\n", 0)  # outside Slurm
    gpu0 = h100(nvmlDeviceGetComputeRunningProcesses=[
        NS(pid=6001, usedGpuMemory=1000 * MiB), NS(pid=6002, usedGpuMemory=500 * MiB),
        NS(pid=6100, usedGpuMemory=7 * MiB), NS(pid=9999, usedGpuMemory=MiB),  # 9999 has exited
    ])  # fmt: skip
    gpu1 = h100(UUID1, "00000000:00:07.0", nvmlDeviceGetComputeRunningProcesses=[])
    nvml = Nvml(FakePynvml([gpu0, gpu1]))
    r = registry_for(JobCollector(JobCgroups(root, proc), gpu_devices=nvml.devices, proc_root=proc))
    labels = {"ordinal": "0", "minor_number": "3", "uuid": UUID0, "name": "NVIDIA H100 80GB HBM3", "GPU_I_ID": "",
              "jobid": "7", "userid": "1234"}  # fmt: skip
    assert r.get_sample_value("nvidia_gpu_jobId", labels) == 7
    assert r.get_sample_value("nvidia_gpu_jobUid", labels) == 1234
    assert r.get_sample_value("nvidia_gpu_duty_cycle", labels) == 100
    assert r.get_sample_value("nvidia_gpu_memory_used_bytes", labels) == 13171 * MiB  # the GPU's, as NVML reads it
    job_mem = {"jobid": "7", "gpu": "0", "UUID": UUID0, "GPU_I_ID": ""}
    assert r.get_sample_value("fleet_job_gpu_memory_bytes", job_mem) == 1500 * MiB  # the job's two processes
    series = [s for m in r.collect() if m.name == "nvidia_gpu_jobId" for s in m.samples]
    assert len(series) == 1  # GPU 1 runs nothing of a job; process 6100 is in no job


def test_a_gpu_bound_to_a_job_counts_while_idle(v1, proc):
    # Job 43's devices cgroup allows /dev/nvidia3 (minor 3 is GPU 0 here); it runs nothing on it.
    nvml = Nvml(
        FakePynvml([h100(nvmlDeviceGetComputeRunningProcesses=[], nvmlDeviceGetUtilizationRates=NS(gpu=0, memory=0))])
    )
    r = registry_for(JobCollector(JobCgroups(v1, proc), gpu_devices=nvml.devices, proc_root=proc))
    series = {s.labels["jobid"]: s.value for m in r.collect() if m.name == "nvidia_gpu_duty_cycle" for s in m.samples}
    assert series == {"43": 0}
    assert (
        r.get_sample_value("fleet_job_gpu_memory_bytes", {"jobid": "43", "gpu": "0", "UUID": UUID0, "GPU_I_ID": ""})
        == 0
    )


def test_detection_of_slurm_cgroups(tmp_path, v1):
    assert slurm_cgroups_present(v1)
    empty = tmp_path / "plain"
    write(empty / "cpuacct" / "cpuacct.usage", "1\n")
    assert not slurm_cgroups_present(empty)
    v2 = tmp_path / "v2"
    write(v2 / "cgroup.controllers", "cpu memory\n")
    assert not slurm_cgroups_present(v2)
    (v2 / "system.slice" / "slurmstepd.scope").mkdir(parents=True)
    assert slurm_cgroups_present(v2)


@pytest.mark.parametrize("text, count", [("0", 1), ("0-3", 4), ("0-1,4,6-7", 5)])
def test_cpulist_count(text, count):
    assert cpulist_count(text) == count


def test_the_exporter_turns_jobs_on_where_slurm_cgroups_exist(exporter_cmd, v1, tmp_path):
    """fleetwatch-exporter as a user runs it: --jobs by default on this tree, off on a tree without Slurm."""

    def families(cgroup_root) -> str:
        port = free_port()
        argv = [*exporter_cmd, f"--listen=127.0.0.1:{port}", "--no-host", "--no-gpu", "--no-processes",
                f"--cgroup-root={cgroup_root}"]  # fmt: skip
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            wait_http(f"http://127.0.0.1:{port}/metrics", proc)
            return requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        finally:
            proc.terminate()
            proc.wait(10)

    on = families(v1)
    assert 'cgroup_cpu_total_seconds{jobid="42",step="",task=""} 93.1' in on
    assert 'fleet_exporter_collector_success{collector="jobs"} 1.0' in on
    plain = tmp_path / "plain"
    write(plain / "cpuacct" / "cpuacct.usage", "1\n")
    assert 'collector="jobs"' not in families(plain)
