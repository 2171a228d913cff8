"""The jobs API's schemas: what a job, its series, its efficiency and the fleet view look like."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import marshmallow as ma

from gateway.db import Job
from gateway.metrics import Point
from gateway.schemas import Page, PageArgs, Pattern, UtcDateTime
from rules_compiler.promql import seconds

JOB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
STATES = ("pending", "running", "suspended", "completed", "failed", "cancelled", "timeout")
# GET /v1/jobs/{id}/metrics and POST: the catalog series of a job, and how its nodes/GPUs combine.
JOB_SERIES = {  # answer field -> (record, how a job's nodes and GPUs combine, the pushed body's field)
    "cpu_pct": ("fleet:job_cpu_pct", "avg", "cpuUsage"),
    "memory_mb": ("fleet:job_mem_used_mb", "sum", "memoryUsageMb"),
    "gpu_pct": ("fleet:job_gpu_utilization", "avg", "gpuUsage"),
}


def _since(text: str) -> datetime:
    try:
        return datetime.now(UTC) - timedelta(seconds=seconds(text))
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ma.ValidationError("a duration (7d, 12h) or an RFC 3339 time") from None


class NodesField(ma.fields.List):
    """A list of node names in the API; ",a,b," in the jobs table (see gateway/job_sync.py)."""

    def __init__(self, **kwargs):
        super().__init__(ma.fields.String(validate=Pattern(r"^[A-Za-z0-9._-]{1,253}$")), **kwargs)

    def _serialize(self, value, attr, obj, **kwargs):
        return [n for n in (value or "").split(",") if n]


class JobArgs(PageArgs):
    state = ma.fields.String(validate=ma.validate.Length(max=16))
    user = ma.fields.String(validate=ma.validate.Length(max=64))
    partition = ma.fields.String(validate=ma.validate.Length(max=64))
    node = ma.fields.String(validate=Pattern(r"^[A-Za-z0-9._-]{1,253}$"))
    since = ma.fields.Function(
        deserialize=_since,
        metadata={
            "description": "started, submitted or ended after: 7d, 12h or an RFC 3339 time",
            "openapi": {
                "description": "started, submitted or ended after: 7d, 12h or an RFC 3339 time",
                "anyOf": [
                    {"type": "string", "pattern": "^[0-9]{1,6}[smhd]$"},
                    {"type": "string", "format": "date-time"},
                ],
            },
        },
    )


class JobSchema(ma.Schema):
    id = ma.fields.String(required=True, validate=Pattern(JOB_ID))
    scheduler = ma.fields.String(dump_only=True)
    user = ma.fields.String(load_default="", validate=ma.validate.Length(max=64))
    name = ma.fields.String(load_default="", validate=ma.validate.Length(max=200))
    account = ma.fields.String(load_default="", validate=ma.validate.Length(max=64))
    partition = ma.fields.String(load_default="", validate=ma.validate.Length(max=64))
    state = ma.fields.String(load_default="running", validate=ma.validate.OneOf(STATES))
    nodes = NodesField(load_default=list, metadata={"example": ["node-1", "node-2"]})
    cpus = ma.fields.Integer(allow_none=True, validate=ma.validate.Range(min=0, max=10**7))
    gpus = ma.fields.Integer(allow_none=True, validate=ma.validate.Range(min=0, max=10**6))
    memory_bytes = ma.fields.Float(allow_none=True, validate=ma.validate.Range(min=0))
    time_limit_s = ma.fields.Integer(allow_none=True, validate=ma.validate.Range(min=0))
    submit_time = UtcDateTime(attribute="submit_at", allow_none=True)
    start_time = UtcDateTime(attribute="start_at", allow_none=True)
    end_time = UtcDateTime(attribute="end_at", allow_none=True)
    runtime_s = ma.fields.Method("_runtime", dump_only=True)
    cpu_usage_pct = ma.fields.Float(dump_only=True, allow_none=True)  # none until a sample arrives
    memory_usage_bytes = ma.fields.Float(dump_only=True, allow_none=True)
    gpu_usage_pct = ma.fields.Float(dump_only=True, allow_none=True)
    summary = ma.fields.Dict(dump_only=True)
    created_at = UtcDateTime(dump_only=True)
    updated_at = UtcDateTime(dump_only=True)

    def _runtime(self, job) -> int | None:
        return runtime_s(job)


class JobPatchSchema(JobSchema):
    class Meta:
        exclude = ("id",)


class JobListSchema(Page):
    jobs = ma.fields.List(ma.fields.Nested(JobSchema))


class PushSchema(ma.Schema):
    cpuUsage = ma.fields.Float(validate=ma.validate.Range(min=0, max=100))  # the seed's names
    memoryUsageMb = ma.fields.Float(validate=ma.validate.Range(min=0, max=2**40))
    gpuUsage = ma.fields.Float(validate=ma.validate.Range(min=0, max=100))
    timestamp = UtcDateTime(metadata={"description": "when measured; default now"})
    node = ma.fields.String(load_default="", validate=Pattern(r"^[A-Za-z0-9._-]{0,253}$"))


class JobSeriesSchema(ma.Schema):
    job_id = ma.fields.String()
    resolution = ma.fields.String(allow_none=True, metadata={"description": "the step: 5s, 1m, 5m, 1h"})
    tier = ma.fields.String()
    series = ma.fields.Dict(
        keys=ma.fields.String(metadata={"enum": list(JOB_SERIES)}),
        values=ma.fields.List(ma.fields.Nested(Point)),
    )


class GpuUseSchema(ma.Schema):
    gpu = ma.fields.String(metadata={"description": "NVML index on its node"})
    host = ma.fields.String()
    uuid = ma.fields.String()
    mean_utilization_pct = ma.fields.Float()
    idle_pct = ma.fields.Float()
    idle_minutes = ma.fields.Float()


class EfficiencySchema(ma.Schema):
    job_id = ma.fields.String()
    state = ma.fields.String()
    elapsed_s = ma.fields.Integer()
    cpus = ma.fields.Float(allow_none=True)
    cpu_seconds = ma.fields.Float(allow_none=True)
    cpu_efficiency_pct = ma.fields.Float(allow_none=True)
    memory_peak_bytes = ma.fields.Float(allow_none=True)
    memory_requested_bytes = ma.fields.Float(allow_none=True)
    gpus_allocated = ma.fields.Integer(allow_none=True)
    gpus = ma.fields.List(ma.fields.Nested(GpuUseSchema))
    verdict = ma.fields.String(metadata={"description": "good | wasteful | unknown"})
    reasons = ma.fields.List(ma.fields.String(), metadata={"example": ["GPU 1 idle 92 % of the job: request 1 GPU"]})
    measured_at = ma.fields.Float()


class FleetGroupSchema(ma.Schema):
    user = ma.fields.String()
    partition = ma.fields.String()
    jobs = ma.fields.Integer()
    gpu_hours_allocated = ma.fields.Float()
    gpu_hours_used = ma.fields.Float()
    gpu_hours_wasted = ma.fields.Float()
    gpu_efficiency_pct = ma.fields.Float(allow_none=True)
    cpu_hours_allocated = ma.fields.Float()
    cpu_hours_used = ma.fields.Float()
    cpu_hours_wasted = ma.fields.Float()
    cpu_efficiency_pct = ma.fields.Float(allow_none=True)


class FleetSchema(ma.Schema):
    by = ma.fields.String()
    since = ma.fields.String()
    groups = ma.fields.List(ma.fields.Nested(FleetGroupSchema))


class MetricsArgs(ma.Schema):
    resolution = ma.fields.String(validate=ma.validate.OneOf(("raw", "1m", "5m", "1h")))


class FleetArgs(ma.Schema):
    by = ma.fields.String(load_default="user", validate=ma.validate.OneOf(("user", "partition")))
    since = ma.fields.String(load_default="7d", validate=ma.validate.OneOf(("1h", "6h", "24h", "7d", "30d")))


def runtime_s(job: Job) -> int | None:
    if job.start_at is None:
        return None
    end = job.end_at or datetime.now(UTC)
    start = job.start_at if job.start_at.tzinfo else job.start_at.replace(tzinfo=UTC)
    end = end if end.tzinfo else end.replace(tzinfo=UTC)
    return max(0, int((end - start).total_seconds()))
