"""The Slurm cluster collector: nodes, CPUs, GPUs and the queue in prometheus-slurm-exporter's names.

``sinfo``/``squeue`` take tens of milliseconds on an idle controller and
seconds on a loaded one, so a `Sampler` reads Slurm in the background and
builds the families there; a scrape only serves them. When Slurm stops
answering, the last good families stay served, ``fleet_slurm_up`` drops to 0
and ``fleet_slurm_last_success_timestamp_seconds`` says how old they are.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import NamedTuple, Protocol

from prometheus_client.core import GaugeMetricFamily, Metric

from exporter.exposition import PreRenderedCollector, Rendered
from exporter.sampling import Sampler
from exporter.slurm_state import ClusterState, Job, Node, SlurmUnavailable

log = logging.getLogger(__name__)

# prometheus-slurm-exporter's slurm_nodes_<x>: which of sinfo's long states each counts.
NODE_FAMILIES = {
    "alloc": ("allocated",),
    "comp": ("completing",),
    "down": ("down",),
    "drain": ("drained", "draining"),
    "err": ("error",),
    "fail": ("fail", "failing"),
    "idle": ("idle",),
    "maint": ("maint",),
    "mix": ("mixed",),
    "resv": ("reserved",),
}
# Nodes whose free CPUs cannot take work: sinfo counts those CPUs as "other".
UNAVAILABLE = frozenset({"down", "drained", "draining", "error", "fail", "failing", "maint"})
QUEUE_STATES = (
    "pending",
    "running",
    "suspended",
    "cancelled",
    "completing",
    "completed",
    "configuring",
    "failed",
    "timeout",
    "preempted",
    "node_fail",
)
# Which jobs keep their per-job series when there are more than the cap: running, then waiting, then the rest.
_JOB_RANK = {"RUNNING": 0, "COMPLETING": 0, "CONFIGURING": 0, "PENDING": 1, "SUSPENDED": 1}
JOB_LABELS = ["jobid", "user", "account", "partition", "state", "name", "nodes"]


class ClusterSource(Protocol):
    def read(self) -> ClusterState: ...


class Reading(NamedTuple):
    families: list[Metric]  # from the newest good answer ([] before the first), then the read's own state
    rendered: Rendered  # the same, formatted once


class SlurmCollector(PreRenderedCollector):
    """Serves the newest cluster state read by ``source`` (commands or slurmrestd).

    Sample output (check by hand with ``curl -s localhost:9101/metrics | grep slurm_``)::

        # HELP slurm_nodes_alloc Allocated nodes
        # TYPE slurm_nodes_alloc gauge
        slurm_nodes_alloc 1.0
        fleet_slurm_job_info{jobid="4",user="alice",partition="debug",state="RUNNING",name="train",…} 1.0
    """

    def __init__(
        self,
        source: ClusterSource,
        interval: float = 15.0,
        max_jobs: int = 2000,
        clock: Callable[[], float] = time.time,
    ):
        self._source = source
        self._max_jobs = max_jobs
        self._clock = clock
        self._families: list[Metric] = []
        self._rendered = Rendered(b"", b"")  # the same, formatted once per answer
        self._last_success: float | None = None
        self._error: str | None = None
        self._sampler: Sampler[Reading] = Sampler("slurm", self._read, interval, clock=clock)

    def _read(self) -> Reading:
        # Runs on the sampler's thread only: the fields below are never written elsewhere.
        start = time.perf_counter()
        try:
            state = self._source.read()
        except SlurmUnavailable as exc:
            if self._error != str(exc):
                log.warning("Slurm did not answer: %s (serving the last answer)", exc)
            self._error = str(exc)
            ok = False
        else:
            if self._error is not None:
                log.info("Slurm answers again")
                self._error = None
            self._families = cluster_families(state, self._max_jobs)
            self._rendered = Rendered.of(self._families)
            self._last_success = self._clock()
            ok = True
        status = [_gauge("fleet_slurm_up", "Whether Slurm answered the newest read (1) or not (0).", ok)]
        if self._last_success is not None:
            status.append(
                _gauge(
                    "fleet_slurm_last_success_timestamp_seconds",
                    "When Slurm last answered, in Unix time: the age of the slurm_* series served.",
                    self._last_success,
                )
            )
        duration = _gauge(
            "fleet_slurm_read_duration_seconds", "How long the newest read of Slurm took.", time.perf_counter() - start
        )
        status.append(duration)
        return Reading([*self._families, *status], Rendered.joined(self._rendered, Rendered.of(status)))


def cluster_families(state: ClusterState, max_jobs: int) -> list[Metric]:
    """Every family of one cluster state."""
    return [*_node_families(state.nodes), *_queue_families(state.jobs, state.nodes), *_job_families(state, max_jobs)]


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _node_families(nodes: list[Node]) -> Iterator[Metric]:
    states = Counter(n.state for n in nodes)
    for family, members in NODE_FAMILIES.items():
        yield _gauge(f"slurm_nodes_{family}", f"{family.capitalize()} nodes", sum(states[m] for m in members))
    yield _gauge("fleet_slurm_nodes", "Nodes Slurm knows, in any state", len(nodes))
    cpus = _cpu_split(nodes)
    for part, doc in (("alloc", "Allocated"), ("idle", "Idle"), ("other", "Mix"), ("total", "Total")):
        yield _gauge(f"slurm_cpus_{part}", f"{doc} CPUs", cpus[part])
    gpus, alloc_gpus = sum(n.gpus for n in nodes), sum(n.alloc_gpus for n in nodes)
    yield _gauge("slurm_gpus_alloc", "Allocated GPUs", alloc_gpus)
    yield _gauge("slurm_gpus_idle", "Idle GPUs", gpus - alloc_gpus)
    yield _gauge("slurm_gpus_total", "Total GPUs", gpus)
    if gpus:
        yield _gauge("slurm_gpus_utilization", "Total GPU utilization", alloc_gpus / gpus)

    partitions = sorted({p for n in nodes for p in n.partitions})
    per_partition = {p: _cpu_split([n for n in nodes if p in n.partitions]) for p in partitions}
    for part, key in (("allocated", "alloc"), ("idle", "idle"), ("other", "other"), ("total", "total")):
        family = GaugeMetricFamily(
            f"slurm_partition_cpus_{part}", f"{part.capitalize()} CPUs for partition", labels=["partition"]
        )
        for p in partitions:
            family.add_metric([p], per_partition[p][key])
        yield family

    info = GaugeMetricFamily(
        "fleet_slurm_node_info",
        "A Slurm node: its state as sinfo prints it (%T) and its partitions, comma-separated; always 1",
        labels=["node", "hostname", "state", "partitions"],
    )
    per_node = {
        "cpus": ("CPUs of a node", lambda n: n.cpus),
        "cpus_allocated": ("CPUs of a node allocated to jobs", lambda n: n.alloc_cpus),
        "cpu_load": ("Load average of a node, as slurmd reports it", lambda n: n.cpu_load),
        "memory_bytes": ("Memory of a node Slurm may allocate (RealMemory)", lambda n: n.memory_bytes),
        "memory_allocated_bytes": ("Memory of a node allocated to jobs", lambda n: n.alloc_memory_bytes),
        "memory_free_bytes": ("Free memory of a node, as slurmd reports it", lambda n: n.free_memory_bytes),
        "gpus": ("GPUs of a node (gres/gpu)", lambda n: n.gpus),
        "gpus_allocated": ("GPUs of a node allocated to jobs", lambda n: n.alloc_gpus),
    }
    families = {k: GaugeMetricFamily(f"fleet_slurm_node_{k}", doc, labels=["node"]) for k, (doc, _) in per_node.items()}
    for n in nodes:
        info.add_metric([n.name, n.hostname, n.state, ",".join(n.partitions)], 1)
        for key, (_, value) in per_node.items():
            v = value(n)
            if v is not None:
                families[key].add_metric([n.name], v)
    yield info
    yield from families.values()


def _cpu_split(nodes: list[Node]) -> dict[str, int]:
    alloc = sum(n.alloc_cpus for n in nodes)
    other = sum(n.cpus - n.alloc_cpus for n in nodes if n.state in UNAVAILABLE)
    total = sum(n.cpus for n in nodes)
    return {"alloc": alloc, "idle": total - alloc - other, "other": other, "total": total}


def _queue_families(jobs: list[Job], nodes: list[Node]) -> Iterator[Metric]:
    states = Counter(j.state.lower() for j in jobs)
    for state in QUEUE_STATES:
        doc = f"{state.replace('_', ' ').capitalize()} jobs in queue"
        yield _gauge(f"slurm_queue_{state}", doc, states[state])
    yield _gauge(
        "slurm_queue_pending_dependency",
        "Pending jobs because of dependency in queue",
        sum(1 for j in jobs if j.state == "PENDING" and j.reason == "Dependency"),
    )
    pending = Counter(p for j in jobs if j.state == "PENDING" for p in j.partition.split(",") if p)
    family = GaugeMetricFamily("slurm_partition_jobs_pending", "Pending jobs for partition", labels=["partition"])
    for p in sorted({p for n in nodes for p in n.partitions} | set(pending)):
        family.add_metric([p], pending[p])
    yield family
    for key, label in (("user", "user"), ("account", "account")):
        counts = {
            "jobs_pending": Counter(getattr(j, key) for j in jobs if j.state == "PENDING"),
            "jobs_running": Counter(getattr(j, key) for j in jobs if j.state == "RUNNING"),
            "cpus_running": Counter(),
            "jobs_suspended": Counter(getattr(j, key) for j in jobs if j.state == "SUSPENDED"),
        }
        for j in jobs:
            if j.state == "RUNNING":
                counts["cpus_running"][getattr(j, key)] += j.cpus
        for what, counter in counts.items():
            doc = f"{what.replace('_', ' ').capitalize()} for {key}"
            family = GaugeMetricFamily(f"slurm_{key}_{what}", doc, labels=[label])
            for name, value in sorted(counter.items()):
                family.add_metric([name], value)
            yield family


def _job_families(state: ClusterState, max_jobs: int) -> Iterator[Metric]:
    ranked = sorted(state.jobs, key=lambda j: (_JOB_RANK.get(j.state, 2), int(j.jobid) if j.jobid.isdigit() else 0))
    kept = ranked[:max_jobs]
    info = GaugeMetricFamily(
        "fleet_slurm_job_info", "A job slurmctld holds (queued, running or recently ended); always 1", labels=JOB_LABELS
    )
    per_job = {
        "cpus": ("CPUs allocated to a job (requested while pending)", lambda j: j.cpus),
        "gpus": ("GPUs allocated to a job (requested while pending)", lambda j: j.gpus),
        "memory_bytes": ("Memory allocated to a job (requested while pending)", lambda j: j.memory_bytes),
        "submit_timestamp_seconds": ("When a job was submitted, in Unix time", lambda j: j.submit_time or None),
        "start_timestamp_seconds": ("When a job started, in Unix time", lambda j: j.start_time or None),
        "end_timestamp_seconds": ("When a job ended, in Unix time", lambda j: j.end_time or None),
        "time_limit_seconds": ("A job's time limit; absent when unlimited", lambda j: j.time_limit_s),
    }
    families = {k: GaugeMetricFamily(f"fleet_slurm_job_{k}", doc, labels=["jobid"]) for k, (doc, _) in per_job.items()}
    for j in kept:
        info.add_metric([j.jobid, j.user, j.account, j.partition, j.state, j.name, j.nodes], 1)
        for key, (_, value) in per_job.items():
            v = value(j)
            if v is not None:
                families[key].add_metric([j.jobid], v)
    yield info
    yield from families.values()
    yield _gauge("fleet_slurm_jobs", "Jobs slurmctld holds, whether or not they have per-job series", len(state.jobs))
    yield _gauge(
        "fleet_slurm_jobs_dropped",
        "Jobs left out of the per-job series at the newest read because of --slurm-max-jobs",
        len(ranked) - len(kept),
    )
