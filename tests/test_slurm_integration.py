"""The exporter against a real one-node Slurm: the cluster seen by sinfo/squeue, and each job's own cgroup."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from fleetwatch.stack import Ports, wait_http
from fleetwatch.testing.waits import free_port

pytestmark = pytest.mark.integration


class Scrape(dict):
    """One /metrics answer: (family sample name, labels) -> value."""

    def get1(self, name: str, **labels: str) -> float | None:
        return self.get((name, tuple(sorted(labels.items()))))

    def where(self, name: str, **labels: str) -> dict[tuple, float]:
        return {k: v for k, v in self.items() if k[0] == name and set(labels.items()) <= set(k[1])}


def scrape(url: str) -> Scrape:
    text = requests.get(url, timeout=10).text
    return Scrape(
        ((s.name, tuple(sorted(s.labels.items()))), s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
    )


def wait_until(url: str, ok, timeout_s: float = 30.0) -> Scrape:
    """Scrape until ``ok(scrape)`` holds; fail with the last scrape's relevant part."""
    deadline = time.monotonic() + timeout_s
    while True:
        got = scrape(url)
        if ok(got):
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s} s: {ok.__doc__ or ok}")
        time.sleep(0.5)


@pytest.fixture(scope="module")
def exporter(slurm_cluster, exporter_cmd):
    """fleetwatch-exporter with the cluster collector and job accounting, reading Slurm every second."""
    port = free_port()
    argv = [*exporter_cmd, f"--listen=127.0.0.1:{port}", "--no-host", "--no-gpu", "--no-processes",
            "--slurm", "--slurm-interval=1", "--jobs", "--jobs-interval=1"]  # fmt: skip
    proc = subprocess.Popen(argv, env=slurm_cluster.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}/metrics"
    wait_http(url, proc)
    yield url
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="module")
def jobs(slurm_cluster):
    """A job that burns one CPU, one that sleeps (both run), and one that asks for every CPU (so it waits)."""
    c = slurm_cluster
    burn = c.sbatch('exec python3 -c "while True: pass"', "--job-name=burn")
    sleep = c.sbatch("exec sleep 600", "--job-name=sleep")
    c.wait_job_state(burn, "RUNNING")
    c.wait_job_state(sleep, "RUNNING")
    blocked = c.sbatch("exec sleep 600", "--job-name=blocked", f"--cpus-per-task={c.cpus}")
    c.wait_job_state(blocked, "PENDING")
    yield {"burn": burn, "sleep": sleep, "blocked": blocked}
    c.run("scancel", burn, sleep, blocked)


def test_the_cluster_collector_shows_the_node_allocated_and_the_queue(slurm_cluster, exporter, jobs):
    node = slurm_cluster.node

    def seen(s: Scrape) -> bool:
        """the three jobs in their states and the node's two allocated CPUs"""
        states = {dict(k[1])["jobid"]: dict(k[1])["state"] for k in s.where("fleet_slurm_job_info", partition="debug")}
        want = {jobs["burn"]: "RUNNING", jobs["sleep"]: "RUNNING", jobs["blocked"]: "PENDING"}
        return (
            all(states.get(j) == st for j, st in want.items())
            and s.get1("fleet_slurm_node_cpus_allocated", node=node) == 2
        )

    s = wait_until(exporter, seen)
    info = s.where("fleet_slurm_job_info", jobid=jobs["burn"])
    assert [dict(k[1]) for k in info] == [
        {"jobid": jobs["burn"], "user": "root", "account": "", "partition": "debug", "state": "RUNNING",
         "name": "burn", "nodes": node}
    ]  # fmt: skip
    state = "allocated" if slurm_cluster.cpus == 2 else "mixed"
    assert s.where("fleet_slurm_node_info", node=node, state=state, partitions="debug")
    assert s.get1("slurm_nodes_alloc" if state == "allocated" else "slurm_nodes_mix") >= 1
    assert s.get1("slurm_queue_running") >= 2 and s.get1("slurm_queue_pending") >= 1
    assert s.get1("slurm_partition_jobs_pending", partition="debug") >= 1
    assert s.get1("slurm_cpus_alloc") >= 2 and s.get1("slurm_cpus_total") >= slurm_cluster.cpus
    assert s.get1("fleet_slurm_job_cpus", jobid=jobs["blocked"]) == slurm_cluster.cpus
    assert s.get1("fleet_slurm_up") == 1
    assert time.time() - s.get1("fleet_slurm_last_success_timestamp_seconds") < 10


def test_the_burners_cpu_seconds_grow_one_a_second_and_the_sleepers_not(slurm_cluster, exporter, jobs):
    burn, sleep = jobs["burn"], jobs["sleep"]

    def both(s: Scrape) -> bool:
        """CPU seconds for both running jobs"""
        return all(s.get1("cgroup_cpu_total_seconds", jobid=j, step="", task="") is not None for j in (burn, sleep))

    first = wait_until(exporter, both)
    own0 = _cgroup_seconds(slurm_cluster, burn), time.monotonic()
    time.sleep(5)
    last = wait_until(exporter, both)
    own1 = _cgroup_seconds(slurm_cluster, burn), time.monotonic()

    elapsed = last.get1("fleet_jobs_sample_timestamp_seconds") - first.get1("fleet_jobs_sample_timestamp_seconds")
    assert elapsed >= 3

    def rate(jobid: str) -> float:
        key = {"jobid": jobid, "step": "", "task": ""}
        return (last.get1("cgroup_cpu_total_seconds", **key) - first.get1("cgroup_cpu_total_seconds", **key)) / elapsed

    # The cgroup's own counter over (about) the same seconds: what the exporter reports is what the kernel counts.
    own_rate = (own1[0] - own0[0]) / (own1[1] - own0[1])
    assert rate(burn) == pytest.approx(own_rate, abs=0.15)
    # One CPU's worth at most, ~1 on an idle machine; on one shared with other work (CI: 2 cores under a
    # load of 10) the burner gets a fraction of its core, which its cgroup's counter above says.
    assert 0.1 <= rate(burn) <= 1.1, rate(burn)
    assert rate(sleep) < 0.05, rate(sleep)
    key = {"jobid": burn, "step": "", "task": ""}
    assert last.get1("cgroup_cpus", **key) == 1
    assert last.get1("cgroup_memory_rss_bytes", **key) > 1024 * 1024  # a python3 process
    assert last.get1("cgroup_memory_total_bytes", **key) > 0
    assert last.get1("cgroup_uid", jobid=burn) == 0


def test_a_gpu_belongs_to_the_real_job_whose_process_uses_it(slurm_cluster, jobs):
    """NVML (faked: no GPU here) lists the burner's real pid on GPU 0; its real cgroup names the job."""
    from types import SimpleNamespace as NS

    from exporter.cgroups import JobCgroups
    from exporter.jobs import JobCollector
    from exporter.nvml import Nvml
    from tests.fake_nvml import UUID0, FakePynvml, h100

    burn = jobs["burn"]
    listed = slurm_cluster.run("scontrol", "listpids", burn).split("\n")[1:]  # PID JOBID STEPID …
    pid = int(next(line.split()[0] for line in listed if line.split() and line.split()[1] == burn))
    lib = FakePynvml([h100(nvmlDeviceGetComputeRunningProcesses=[NS(pid=pid, usedGpuMemory=2048 << 20)])])
    collector = JobCollector(JobCgroups("/sys/fs/cgroup"), gpu_devices=Nvml(lib).devices)
    collector.sampler.sample_now()
    gpu = {
        s.name: (s.labels, s.value)
        for family in collector.collect()
        if family.name.startswith(("nvidia_gpu_", "fleet_job_gpu_"))
        for s in family.samples
    }
    labels, value = gpu["nvidia_gpu_jobId"]
    assert value == int(burn) and labels["jobid"] == burn and labels["userid"] == "0" and labels["uuid"] == UUID0
    assert gpu["fleet_job_gpu_memory_bytes"] == ({"jobid": burn, "gpu": "0", "UUID": UUID0, "GPU_I_ID": ""}, 2048 << 20)


def test_the_cluster_collector_reads_slurmrestd(slurm_cluster, exporter_cmd, jobs, tmp_path):
    """The same families from slurmrestd (JWT from `scontrol token`), as from sinfo/squeue."""
    from fleetwatch.testing.slurm import SlurmUnavailable

    try:
        rest = slurm_cluster.start_slurmrestd()
    except SlurmUnavailable as exc:
        pytest.skip(str(exc))
    token = tmp_path / "slurm.jwt"
    token.write_text(slurm_cluster.token() + "\n")
    token.chmod(0o600)
    port = free_port()
    argv = [*exporter_cmd, f"--listen=127.0.0.1:{port}", "--no-host", "--no-gpu", "--no-processes", "--no-jobs",
            f"--slurmrestd-url={rest}", f"--slurmrestd-token-file={token}", "--slurmrestd-user=root",
            "--slurm-interval=1"]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        wait_http(url, proc)

        def seen(s: Scrape) -> bool:
            """the node and the pending job, read from slurmrestd"""
            return bool(
                s.where("fleet_slurm_node_info", node=slurm_cluster.node)
                and s.where("fleet_slurm_job_info", jobid=jobs["blocked"], state="PENDING")
            )

        s = wait_until(url, seen)
        assert s.get1("fleet_slurm_up") == 1
        assert s.get1("fleet_slurm_node_cpus", node=slurm_cluster.node) == slurm_cluster.cpus
        token.write_text("not-a-token\n")  # expired or revoked: Slurm refuses, the last answer stays

        def refused(s: Scrape) -> bool:
            """fleet_slurm_up 0 with the last answer still served"""
            return s.get1("fleet_slurm_up") == 0

        s = wait_until(url, refused)
        assert s.where("fleet_slurm_node_info", node=slurm_cluster.node)
    finally:
        proc.terminate()
        proc.wait(10)


def test_ended_jobs_leave_the_node_and_keep_their_final_state(slurm_cluster, exporter, jobs):
    slurm_cluster.run("scancel", jobs["burn"])

    def gone(s: Scrape) -> bool:
        """the cancelled job's cgroup series gone, its info CANCELLED"""
        return not s.where("cgroup_cpu_total_seconds", jobid=jobs["burn"]) and bool(
            s.where("fleet_slurm_job_info", jobid=jobs["burn"], state="CANCELLED")
        )

    s = wait_until(exporter, gone)
    assert s.where("cgroup_cpu_total_seconds", jobid=jobs["sleep"])  # the other one still runs
    assert s.get1("fleet_slurm_job_end_timestamp_seconds", jobid=jobs["burn"]) > 0


def _cgroup_seconds(cluster, jobid: str) -> float:
    return int((cluster.job_cgroup(jobid) / "cpuacct.usage").read_text()) / 1e9


def _free_base_port() -> int:
    """N such that every port `fleetwatch up --base-port N` takes (Ports.from_base: N..N+7) is free on loopback."""
    import socket

    taken = len(Ports._fields)
    for _ in range(50):
        base = free_port()
        if base + taken - 1 > 65535:
            continue
        with contextlib.ExitStack() as held:
            try:
                for port in Ports.from_base(base):
                    s = held.enter_context(socket.socket())
                    s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return base
    raise AssertionError(f"no {taken} free consecutive ports")


def _fleetwatch_up(tmp_path, env: dict, *flags: str) -> tuple[list[str], str]:
    """Start `fleetwatch up`, keep its start-up lines and the exporter's /metrics, stop it with Ctrl-C."""
    argv = [sys.executable, "-m", "fleetwatch.cli", "up", f"--state-dir={tmp_path / 'state'}",
            f"--base-port={_free_base_port()}", *flags]  # fmt: skip
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line.rstrip())
            if line.startswith("  slurm"):
                break
        exporter = next(x.split()[-1] for x in lines if x.strip().startswith("exporter"))
        metrics = requests.get(exporter, timeout=10).text
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(60)
    assert proc.returncode == 0
    return lines, metrics


def test_fleetwatch_up_turns_slurm_on_where_sinfo_answers(slurm_cluster, tmp_path):
    lines, metrics = _fleetwatch_up(tmp_path, slurm_cluster.env)
    assert "  slurm         on: sinfo answered (1 node): cluster state and per-job accounting" in lines
    assert 'fleet_exporter_collector_success{collector="slurm"} 1.0' in metrics
    assert 'fleet_exporter_collector_success{collector="jobs"} 1.0' in metrics
    assert f'fleet_slurm_node_info{{hostname="{slurm_cluster.host}",node="{slurm_cluster.node}"' in metrics


def test_fleetwatch_up_no_slurm(slurm_cluster, tmp_path):
    lines, metrics = _fleetwatch_up(tmp_path, slurm_cluster.env, "--no-slurm")
    assert "  slurm         off (--no-slurm)" in lines
    assert 'collector="slurm"' not in metrics and 'collector="jobs"' not in metrics
