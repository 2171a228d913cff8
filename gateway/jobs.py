"""Seed 004's jobs API under /v1: Slurm's jobs (synced, never posted) and other schedulers' (posted), their metrics.

Roles: viewers read; other schedulers' jobs are written with an API key (the
machines that run them post, as agents do); an admin deletes. Slurm's jobs
are Slurm's: they cannot be posted, patched or pushed to, only deleted.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

from flask import current_app, g, request
from flask.views import MethodView
from sqlalchemy import or_

from gateway.auth import ADMIN, AGENT, PUBLIC, access, audit
from gateway.db import Job, db, utcnow
from gateway.errors import ApiError, Blueprint, Conflict, Forbidden, NotFound
from gateway.hosts import HOST_ID
from gateway.job_efficiency import fleet, judge, measure
from gateway.job_schemas import (
    JOB_SERIES,
    EfficiencySchema,
    FleetArgs,
    FleetSchema,
    JobArgs,
    JobListSchema,
    JobPatchSchema,
    JobSchema,
    JobSeriesSchema,
    MetricsArgs,
    PushSchema,
    runtime_s,
)
from gateway.job_sync import ACTIVE, node_column, sync_if_due
from gateway.remote_write import encode_labels
from gateway.schemas import page
from gateway.series import RANGES, label_of, plan, points, read_expr

blp = Blueprint("jobs", __name__, url_prefix="/v1", description="HPC jobs (seed 004)")


def synced() -> None:
    """Slurm's jobs brought up to date, if due (gateway/job_sync.py: one worker of all does it)."""
    config = current_app.config
    sync_if_due(current_app.extensions["prometheus"], config["JOBS_SYNC_S"], config["JOBS_SYNC_LOOKBACK_S"])


def get_job(job_id: str) -> Job:
    job = db.session.execute(db.select(Job).filter_by(id=job_id)).scalar_one_or_none()
    if job is None:
        raise NotFound(f"no job {job_id!r}", {"job_id": job_id})
    return job


def _apply(job: Job, data: dict) -> None:
    for key, value in data.items():
        setattr(job, key, node_column(",".join(value)) if key == "nodes" else value)
    if job.state == "running" and job.start_at is None:
        job.start_at = utcnow()
    if job.state not in ACTIVE and job.end_at is None:
        job.end_at = utcnow()


@blp.route("/health")
class Health(MethodView):
    @access(PUBLIC)
    @blp.doc(
        responses={
            "200": {
                "description": "OK",
                "content": {
                    "application/json": {"schema": {"type": "object", "properties": {"status": {"type": "string"}}}}
                },
            }
        }
    )
    def get(self):
        """Seed 004's health check: the service and its DB answer."""
        db.session.execute(db.select(1))
        return {"status": "ok"}


@blp.route("/jobs")
class Jobs(MethodView):
    @blp.arguments(JobArgs, location="query")
    @blp.response(200, JobListSchema)
    def get(self, args):
        """Jobs, newest first; filters: state, user, partition, node, since (7d or a time); limit/offset."""
        synced()
        query = db.select(Job).order_by(Job.pk.desc())
        for key in ("state", "user", "partition"):
            if key in args:
                query = query.where(getattr(Job, key) == args[key])
        if "node" in args:
            query = query.where(Job.nodes.contains(f",{args['node']},", autoescape=True))
        if "since" in args:
            t = args["since"]
            query = query.where(or_(Job.start_at >= t, Job.submit_at >= t, Job.end_at >= t, Job.end_at.is_(None)))
        rows, paging = page(query, args, db.session)
        return {"jobs": rows, **paging}

    @access(AGENT)
    @blp.arguments(JobSchema)
    @blp.response(201, JobSchema)
    def post(self, data):
        """A job of another scheduler (API key). All-digit ids are Slurm's, which come by themselves."""
        if data["id"].isdigit():
            raise ApiError("all-digit ids are Slurm job ids, which the gateway syncs itself", {"id": data["id"]})
        if db.session.execute(db.select(Job.pk).filter_by(id=data["id"])).first():
            raise Conflict(f"job {data['id']!r} exists", {"id": data["id"]})
        job = Job(id=data["id"], scheduler="external", summary={}, submit_at=utcnow())
        _apply(job, data)
        db.session.add(job)
        db.session.commit()
        return job


@blp.route("/jobs/efficiency")
class FleetEfficiency(MethodView):
    @blp.arguments(FleetArgs, location="query")
    @blp.response(200, FleetSchema)
    def get(self, args):
        """GPU- and CPU-hours allocated vs used (and wasted) per user or partition over ``since``, most waste first."""
        synced()
        since_s = RANGES[args["since"]]
        now = time.time()
        begin = datetime.fromtimestamp(now - since_s, UTC)
        jobs = db.session.execute(
            db.select(Job).where(Job.start_at.is_not(None), or_(Job.end_at.is_(None), Job.end_at >= begin))
        ).scalars()
        groups = fleet(current_app.extensions["prometheus"], list(jobs), since_s, args["by"], now)
        return {"by": args["by"], "since": args["since"], "groups": groups}


@blp.route("/jobs/<string:job_id>")
class JobItem(MethodView):
    @blp.response(200, JobSchema)
    def get(self, job_id):
        """One job."""
        synced()
        return get_job(job_id)

    @access(AGENT)
    @blp.arguments(JobPatchSchema(partial=True))
    @blp.response(200, JobSchema)
    def patch(self, data, job_id):
        """Change a posted job (API key): its state (an ended state sets its end time), nodes, …"""
        job = get_job(job_id)
        if job.scheduler == "slurm":
            raise Conflict("a Slurm job changes in Slurm, not here", {"job_id": job_id})
        _apply(job, data)
        db.session.commit()
        return job

    @access(ADMIN)
    @blp.response(204)
    def delete(self, job_id):
        """Forget a job (admin)."""
        job = get_job(job_id)
        db.session.delete(job)
        audit("job.delete", job_id)
        db.session.commit()


@blp.route("/jobs/<string:job_id>/metrics")
class JobMetrics(MethodView):
    @blp.arguments(MetricsArgs, location="query")
    @blp.response(200, JobSeriesSchema)
    def get(self, args, job_id):
        """CPU %, memory MiB and GPU % over the job's life, at the resolution its length calls for (as for hosts)."""
        job = get_job(job_id)
        if job.start_at is None:
            return {"job_id": job_id, "resolution": None, "series": {k: [] for k in JOB_SERIES}}
        elapsed = runtime_s(job) or 1
        range_ = next((name for name, span in RANGES.items() if span >= elapsed), "90d")
        tiers = current_app.extensions["tiers"]
        how = plan(tiers, range_, args.get("resolution"))
        prom = tiers.of(how.tier)
        start = (
            job.start_at.replace(tzinfo=UTC).timestamp() if job.start_at.tzinfo is None else job.start_at.timestamp()
        )
        # On whole steps, the end rounded up: a job's last samples (or a push a second ago) are in.
        end = -(-(start + elapsed) // how.step_s) * how.step_s
        start = (start // how.step_s) * how.step_s
        series = {}
        for field, (record, combine, _) in JOB_SERIES.items():
            expr = f"{combine}({read_expr(record, {'jobid': job_id}, how)})"
            result = prom.query_range(expr, start, end, how.step_s)
            series[field] = points(result[0]["values"]) if result else []
        return {"job_id": job_id, "resolution": label_of(how.step_s), "tier": how.tier, "series": series}

    @access(AGENT)
    @blp.arguments(PushSchema)
    @blp.response(202, PushSchema)
    def post(self, data, job_id):
        """Pushed figures of a posted job (API key): stored in Prometheus by remote write, as ingest does."""
        job = get_job(job_id)
        if job.scheduler == "slurm":
            raise Conflict("a Slurm job's figures come from its cgroups", {"job_id": job_id})
        ts = data.get("timestamp") or datetime.now(UTC)
        ts_ms = int((ts if ts.tzinfo else ts.replace(tzinfo=UTC)).timestamp() * 1000)
        host_id = data["node"] or "external"
        if not HOST_ID.match(host_id):
            raise ApiError("node: a host id (letters, digits, '.', '_', '-', at most 64)", {"node": host_id[:80]})
        series = []
        for record, _, field in JOB_SERIES.values():
            if field in data:
                labels = [("__name__", record), ("host_id", host_id), ("jobid", job_id)]
                if record == "fleet:job_gpu_utilization":
                    labels.append(("gpu_index", "0"))
                series.append((encode_labels(labels), [(ts_ms, data[field], len(series))]))
        if not series:
            raise ApiError(
                "nothing to record: send cpuUsage, memoryUsageMb or gpuUsage", {"fields": list(request.json or {})}
            )
        # The key's binding and budgets, as for /api/v1/ingest: a key bound to one host writes no other's series.
        budgets, scope = current_app.extensions["key_budgets"], g.principal.scope
        new_host = budgets.admit_host(scope, host_id)
        over = budgets.admit_series(scope, [labels for labels, _ in series], new_host)
        budgets.record()
        db.session.commit()  # admitted before the store, as ingest does: a 503 then leaves the budget counted
        if over:  # nothing stored: the job's figures are one measurement, not points to keep in part
            limit = budgets.series_budget(scope)
            raise Forbidden(f"series budget: this API key has {limit} series", {"max_series": limit})
        counters = current_app.extensions["request_metrics"]
        errors: list = []
        current_app.extensions["point_store"].store(series, errors, counters)
        if errors:
            raise ApiError(f"refused by the store: {errors[0]['reason']}", {"errors": errors})
        if "cpuUsage" in data:
            job.cpu_usage_pct = data["cpuUsage"]
        if "memoryUsageMb" in data:
            job.memory_usage_bytes = data["memoryUsageMb"] * 2**20
        if "gpuUsage" in data:
            job.gpu_usage_pct = data["gpuUsage"]
        db.session.commit()
        return data


@blp.route("/jobs/<string:job_id>/efficiency")
class JobEfficiency(MethodView):
    @blp.response(200, EfficiencySchema)
    def get(self, job_id):
        """CPU efficiency, memory peak vs requested, per-GPU use and idle minutes, a verdict with reasons."""
        synced()
        job = get_job(job_id)
        figures = job.summary if job.state not in ACTIVE and job.summary else None
        if figures is None:
            figures = measure(current_app.extensions["prometheus"], job)
            if job.state not in ACTIVE and figures.get("elapsed_s"):  # ended, not yet measured: kept from now on
                job.summary = figures
                db.session.commit()
        return {"job_id": job_id, "state": job.state, **figures, **judge(figures), "measured_at": time.time()}
