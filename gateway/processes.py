"""Top processes of one host (§8.4), from the exporter's top-N families via the catalog layer."""

from __future__ import annotations

import marshmallow as ma
from flask import current_app
from flask.views import MethodView

from gateway.errors import Blueprint
from gateway.process_masking import masking
from gateway.promql import selector

blp = Blueprint("processes", __name__, url_prefix="/api/v1/processes", description="Top processes")

# query ``metric`` -> (catalog series, field in the answer)
RANKINGS = {
    "cpu": ("fleet:proc_top_cpu_pct", "cpu_pct"),
    "mem": ("fleet:proc_top_mem_mb", "mem_mb"),
    "gpu_mem": ("fleet:proc_top_gpu_mem_mb", "gpu_mem_mb"),
}


class TopArgs(ma.Schema):
    host_id = ma.fields.String(required=True, validate=ma.validate.Length(min=1, max=64))
    metric = ma.fields.String(load_default="cpu", validate=ma.validate.OneOf(list(RANKINGS)))
    limit = ma.fields.Integer(load_default=10, validate=ma.validate.Range(min=1, max=100))


class ProcessSchema(ma.Schema):
    pid = ma.fields.Integer()
    name = ma.fields.String()
    user = ma.fields.String()
    slurm_job_id = ma.fields.String(allow_none=True)
    cpu_pct = ma.fields.Float(allow_none=True)
    mem_mb = ma.fields.Float(allow_none=True)
    gpu_mem_mb = ma.fields.Float(allow_none=True)
    gpu_index = ma.fields.Integer(allow_none=True)


class TopSchema(ma.Schema):
    host_id = ma.fields.String()
    metric = ma.fields.String()
    processes = ma.fields.List(ma.fields.Nested(ProcessSchema))


@blp.route("/top")
class Top(MethodView):
    @blp.arguments(TopArgs, location="query")
    @blp.response(200, TopSchema)
    def get(self, args):
        """The host's top processes by CPU, memory or GPU memory, with the other two figures where known."""
        prom = current_app.extensions["prometheus"]
        # One query for all three rankings; a process ranked in one may be missing from another (null).
        expr = " or ".join(
            f'label_replace({selector(series, {"host_id": args["host_id"]})}, "ranking", "{field}", "", "")'
            for series, field in RANKINGS.values()
        )
        processes: dict[tuple[str, str], dict] = {}
        mask = masking()
        for s in prom.query(expr):
            m = mask.labels(s["metric"])  # series stored before the policy, or from an exporter without it
            key = (m.get("pid", ""), m.get("gpu_index", ""))
            p = processes.setdefault(
                key,
                {
                    "pid": int(m.get("pid", 0)),
                    "name": m.get("name", ""),
                    "user": m.get("user", ""),
                    "slurm_job_id": m.get("slurm_job_id") or None,
                    "cpu_pct": None,
                    "mem_mb": None,
                    "gpu_mem_mb": None,
                    "gpu_index": int(m["gpu_index"]) if m.get("gpu_index") else None,
                },
            )
            p[m["ranking"]] = round(float(s["value"][1]), 2)
        # A process on a GPU also has its host-wide CPU and memory figures: copy them over.
        by_pid = {pid: p for (pid, gpu), p in processes.items() if not gpu}
        for (pid, gpu), p in processes.items():
            if gpu and pid in by_pid:
                p["cpu_pct"], p["mem_mb"] = by_pid[pid]["cpu_pct"], by_pid[pid]["mem_mb"]
        field = RANKINGS[args["metric"]][1]
        ranked = sorted((p for p in processes.values() if p[field] is not None), key=lambda p: -p[field])
        return {"host_id": args["host_id"], "metric": args["metric"], "processes": ranked[: args["limit"]]}
