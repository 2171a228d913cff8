"""Efficiency verdicts on canned figures (gateway/job_efficiency.judge), and Slurm's hostlists."""

from __future__ import annotations

from gateway.job_efficiency import GiB, judge
from gateway.job_sync import expand_hostlist, node_column


def figures(**over) -> dict:
    base = {
        "elapsed_s": 3600,
        "cpus": 4,
        "cpu_seconds": 4 * 3600 * 0.9,
        "cpu_efficiency_pct": 90.0,
        "memory_peak_bytes": 6 * GiB,
        "memory_requested_bytes": 8 * GiB,
        "gpus": [],
    }
    return base | over


def gpu(index: str, mean: float, idle: float) -> dict:
    return {"gpu": index, "mean_utilization_pct": mean, "idle_pct": idle, "idle_minutes": idle * 0.6}


def test_a_busy_job_that_fits_its_request_is_good():
    assert judge(figures()) == {"verdict": "good", "reasons": []}


def test_a_short_job_is_not_judged():
    got = judge(figures(elapsed_s=12))
    assert got["verdict"] == "unknown" and "too short" in got["reasons"][0]


def test_low_cpu_on_many_cpus_says_how_many_to_request():
    got = judge(figures(cpus=8, cpu_efficiency_pct=12.0))
    # 12 % of 8 CPUs is ~1 CPU busy; with 20 % headroom: 2.
    assert got == {
        "verdict": "wasteful",
        "reasons": ["CPU efficiency 12 %: 1.0 of 8 CPUs busy on average: request 2 CPUs"],
    }


def test_one_idle_cpu_is_a_waiting_job_unless_it_feeds_a_busy_gpu():
    waiting = judge(figures(cpus=1, cpu_efficiency_pct=2.0))
    assert waiting["verdict"] == "wasteful" and "mostly waited" in waiting["reasons"][0]
    feeding = judge(figures(cpus=1, cpu_efficiency_pct=2.0, gpus=[gpu("0", 95.0, 1.0)]))
    assert feeding == {"verdict": "good", "reasons": []}


def test_memory_far_below_or_near_the_request():
    low = judge(figures(memory_peak_bytes=1.2 * GiB, memory_requested_bytes=32 * GiB))
    assert low["reasons"] == ["memory peak 1.2 GiB of 32.0 GiB requested (4 %): request 2 GiB"]
    high = judge(figures(memory_peak_bytes=7.9 * GiB, memory_requested_bytes=8 * GiB))
    assert high["reasons"] == ["memory peak 99 % of the 8.0 GiB requested: near the limit: request 10 GiB"]
    small = judge(figures(memory_peak_bytes=0.1 * GiB, memory_requested_bytes=1 * GiB))
    assert small["verdict"] == "good"  # under 1 GiB of slack is not worth a reason


def test_an_idle_gpu_beside_a_busy_one_says_request_one_gpu():
    got = judge(figures(gpus=[gpu("0", 80.0, 3.0), gpu("1", 0.4, 92.0)]))
    assert got == {"verdict": "wasteful", "reasons": ["GPU 1 idle 92 % of the job: request 1 GPU"]}


def test_all_gpus_idle_says_run_without_gpus():
    got = judge(figures(gpus=[gpu("0", 0.0, 100.0), gpu("1", 1.0, 97.0)]))
    assert got["reasons"] == ["no GPU used: its 2 GPU(s) idle 97 % or more of the job: run it without GPUs"]


def test_hostlists_expand_as_slurm_writes_them():
    assert expand_hostlist("node[01-03,7],gpu1") == ["node01", "node02", "node03", "node7", "gpu1"]
    assert expand_hostlist("vm") == ["vm"]
    assert expand_hostlist("") == []
    assert node_column("a[1-2]") == ",a1,a2,"
    assert len(expand_hostlist("n[1-100000]")) == 1000  # bounded
