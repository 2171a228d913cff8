"""The Slurm cluster as seed 000 asks for it: its health, its nodes (each one an inventory host), its families.

Everything comes from the cluster collector's families in Prometheus
(``fleetwatch-exporter --slurm``, docs/slurm.md), read through the gateway's
cached client: the gateway never runs ``sinfo`` itself.
"""

from __future__ import annotations

import marshmallow as ma
from flask import current_app
from flask.views import MethodView

from gateway.db import Host, db
from gateway.errors import Blueprint

blp = Blueprint("cluster", __name__, url_prefix="/api", description="Slurm cluster state (seed 000)")

# Node states (sinfo's %T) that leave a node unable to run jobs: the cluster is degraded.
UNHEALTHY = ("down", "drained", "draining", "drain", "fail", "failing", "error", "unknown", "maint")
NODE_FIGURES = {  # family -> field of a node
    "fleet_slurm_node_cpus": "cpus_total",
    "fleet_slurm_node_cpus_allocated": "cpus_allocated",
    "fleet_slurm_node_cpu_load": "cpu_load",
    "fleet_slurm_node_memory_bytes": "memory_total_bytes",
    "fleet_slurm_node_memory_allocated_bytes": "memory_allocated_bytes",
    "fleet_slurm_node_memory_free_bytes": "memory_free_bytes",
    "fleet_slurm_node_gpus": "gpus_total",
    "fleet_slurm_node_gpus_allocated": "gpus_allocated",
}
# /api/metrics/slurm: prometheus-slurm-exporter's cluster-wide families, bounded (no per-user series).
SLURM_FAMILIES = '{__name__=~"slurm_(nodes|cpus|gpus|queue)_.+|slurm_partition_.+|fleet_slurm_(up|nodes|jobs)"}'


class Allocation(ma.Schema):
    allocated = ma.fields.Float()
    total = ma.fields.Float()


class ClusterStatusSchema(ma.Schema):
    health = ma.fields.String(metadata={"description": "ok | degraded | down | unknown (no collector answers)"})
    collector_up = ma.fields.Boolean(allow_none=True)
    last_success_age_s = ma.fields.Float(allow_none=True)
    nodes = ma.fields.Dict(metadata={"description": '{"total": N, "by_state": {"idle": N, …}}'})
    cpus = ma.fields.Nested(Allocation)
    gpus = ma.fields.Nested(Allocation)
    memory_bytes = ma.fields.Nested(Allocation)
    jobs = ma.fields.Dict(metadata={"description": '{"running": N, "pending": N}'})


class HostRef(ma.Schema):
    id = ma.fields.String()
    hostname = ma.fields.String()


class ClusterNodeSchema(ma.Schema):
    node = ma.fields.String()
    hostname = ma.fields.String()
    state = ma.fields.String()
    partitions = ma.fields.List(ma.fields.String())
    host = ma.fields.Nested(HostRef, allow_none=True, metadata={"description": "the inventory host it is"})
    cpus_allocated = ma.fields.Float(allow_none=True)
    cpus_total = ma.fields.Float(allow_none=True)
    cpu_load = ma.fields.Float(allow_none=True)
    memory_allocated_bytes = ma.fields.Float(allow_none=True)
    memory_total_bytes = ma.fields.Float(allow_none=True)
    memory_free_bytes = ma.fields.Float(allow_none=True)
    gpus_allocated = ma.fields.Float(allow_none=True)
    gpus_total = ma.fields.Float(allow_none=True)


class ClusterNodesSchema(ma.Schema):
    nodes = ma.fields.List(ma.fields.Nested(ClusterNodeSchema))


class SlurmMetricsSchema(ma.Schema):
    up = ma.fields.Boolean(allow_none=True)
    metrics = ma.fields.Dict(
        metadata={"description": 'prometheus-slurm-exporter\'s families: {"slurm_cpus_alloc": 2, …}'}
    )
    partitions = ma.fields.Dict(metadata={"description": '{"debug": {"slurm_partition_cpus_total": 2, …}}'})


def _value(result: list[dict]) -> float | None:
    return float(result[0]["value"][1]) if result else None


def _alloc(allocated: list[dict], total: list[dict]) -> dict:
    return {"allocated": _value(allocated) or 0.0, "total": _value(total) or 0.0}


@blp.route("/cluster/status")
class ClusterStatus(MethodView):
    @blp.response(200, ClusterStatusSchema)
    def get(self):
        """Overall health: nodes by state, CPUs, GPUs and memory allocated vs total, jobs running and pending."""
        prom = current_app.extensions["prometheus"]
        (by_state, cpus_a, cpus_t, gpus_a, gpus_t, mem_a, mem_t, running, pending, up, age) = prom.query_many(
            [
                "count by (state) (fleet_slurm_node_info)",
                "sum(fleet_slurm_node_cpus_allocated)",
                "sum(fleet_slurm_node_cpus)",
                "sum(fleet_slurm_node_gpus_allocated)",
                "sum(fleet_slurm_node_gpus)",
                "sum(fleet_slurm_node_memory_allocated_bytes)",
                "sum(fleet_slurm_node_memory_bytes)",
                "max(slurm_queue_running)",
                "max(slurm_queue_pending)",
                "max(fleet_slurm_up)",
                "time() - max(fleet_slurm_last_success_timestamp_seconds)",
            ]
        )
        states = {s["metric"].get("state", ""): int(float(s["value"][1])) for s in by_state}
        collector_up = None if not up else _value(up) == 1
        if collector_up is None and not states:
            health = "unknown"
        elif collector_up is False or (states and all(s in UNHEALTHY for s in states)):
            health = "down"
        elif any(s in UNHEALTHY for s in states):
            health = "degraded"
        else:
            health = "ok"
        return {
            "health": health,
            "collector_up": collector_up,
            "last_success_age_s": _value(age),
            "nodes": {"total": sum(states.values()), "by_state": states},
            "cpus": _alloc(cpus_a, cpus_t),
            "gpus": _alloc(gpus_a, gpus_t),
            "memory_bytes": _alloc(mem_a, mem_t),
            "jobs": {"running": int(_value(running) or 0), "pending": int(_value(pending) or 0)},
        }


@blp.route("/cluster/nodes")
class ClusterNodes(MethodView):
    @blp.response(200, ClusterNodesSchema)
    def get(self):
        """Every Slurm node: state, partitions, CPUs, memory and GPUs allocated and total, and its inventory host."""
        prom = current_app.extensions["prometheus"]
        info, figures = prom.query_many(["fleet_slurm_node_info", f'{{__name__=~"{"|".join(NODE_FIGURES)}"}}'])
        nodes: dict[str, dict] = {}
        for s in info:
            m = s["metric"]
            nodes[m["node"]] = {
                "node": m["node"],
                "hostname": m.get("hostname") or m["node"],
                "state": m.get("state", ""),
                "partitions": [p for p in m.get("partitions", "").split(",") if p],
                "host": None,
                **dict.fromkeys(NODE_FIGURES.values()),
            }
        for s in figures:
            node = nodes.get(s["metric"].get("node"))
            if node is not None:
                node[NODE_FIGURES[s["metric"]["__name__"]]] = float(s["value"][1])
        _link_hosts(list(nodes.values()))
        return {"nodes": sorted(nodes.values(), key=lambda n: n["node"])}


def _link_hosts(nodes: list[dict]) -> None:
    """A Slurm node is an inventory host: matched by its NodeHostname, its NodeName, or their short names."""
    names = {n for node in nodes for n in (node["hostname"], node["node"])}
    names |= {n.split(".")[0] for n in names}
    if not names:
        return
    hosts = db.session.execute(db.select(Host.id, Host.hostname)).all()
    by_name: dict[str, dict] = {}
    for host_id, hostname in hosts:
        for key in (hostname, hostname.split(".")[0], host_id):
            by_name.setdefault(key, {"id": host_id, "hostname": hostname})
    for node in nodes:
        for key in (node["hostname"], node["node"], node["hostname"].split(".")[0]):
            if key in by_name:
                node["host"] = by_name[key]
                break


@blp.route("/metrics/slurm")
class SlurmMetrics(MethodView):
    @blp.response(200, SlurmMetricsSchema)
    def get(self):
        """The cluster now, as prometheus-slurm-exporter's families (nodes, CPUs, GPUs, queue, partitions)."""
        prom = current_app.extensions["prometheus"]
        metrics: dict[str, float] = {}
        partitions: dict[str, dict] = {}
        for s in prom.query(SLURM_FAMILIES):
            m, value = s["metric"], float(s["value"][1])
            name = m["__name__"]
            if "partition" in m:
                partitions.setdefault(m["partition"], {})[name] = value
            else:
                metrics[name] = value
        up = metrics.pop("fleet_slurm_up", None)
        return {
            "up": None if up is None else up == 1,
            "metrics": dict(sorted(metrics.items())),
            "partitions": partitions,
        }
