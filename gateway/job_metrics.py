"""Seed 004's ``hpc_job_*`` families on the gateway's /metrics, from the jobs table at scrape time.

Per-job gauges cover running jobs only, at most JOBS_METRICS_MAX of them (the
newest): the series count stays bounded however many jobs the table keeps.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from flask import current_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from sqlalchemy import func

from gateway.db import Job, db
from gateway.errors import ApiError

log = logging.getLogger(__name__)

LABELS = ["job_id", "user", "partition", "state", "scheduler"]


class JobCollector:
    """hpc_job_runtime_seconds, _cpu_usage_percent, _memory_usage_bytes, _gpu_usage_percent, _state_total, _total."""

    def collect(self):
        from gateway.jobs import synced

        try:
            synced()
        except ApiError as exc:  # the table as it is: /metrics must answer whatever Prometheus does
            log.warning("job sync before /metrics failed: %s", exc.message)
        now = datetime.now(UTC)
        families = {
            "runtime": GaugeMetricFamily("hpc_job_runtime_seconds", "Current job runtime in seconds", labels=LABELS),
            "cpu": GaugeMetricFamily("hpc_job_cpu_usage_percent", "Current CPU usage percentage", labels=LABELS),
            "memory": GaugeMetricFamily("hpc_job_memory_usage_bytes", "Current memory usage in bytes", labels=LABELS),
            "gpu": GaugeMetricFamily("hpc_job_gpu_usage_percent", "Current GPU usage percentage", labels=LABELS),
        }
        running = db.session.execute(
            db.select(Job)
            .where(Job.state == "running")
            .order_by(Job.pk.desc())
            .limit(current_app.config["JOBS_METRICS_MAX"])
        ).scalars()
        for job in running:
            labels = [job.id, job.user, job.partition, job.state, job.scheduler]
            if job.start_at is not None:
                start = job.start_at if job.start_at.tzinfo else job.start_at.replace(tzinfo=UTC)
                families["runtime"].add_metric(labels, max(0.0, (now - start).total_seconds()))
            for key, value in (
                ("cpu", job.cpu_usage_pct),
                ("memory", job.memory_usage_bytes),
                ("gpu", job.gpu_usage_pct),
            ):
                if value is not None:
                    families[key].add_metric(labels, value)
        yield from families.values()
        states = GaugeMetricFamily("hpc_job_state_total", "Number of jobs in each state", labels=["state"])
        for state, count in db.session.execute(db.select(Job.state, func.count()).group_by(Job.state)):
            states.add_metric([state], count)
        yield states
        # The table's keys only grow (AUTOINCREMENT): the highest one counts every job ever made, deleted or not.
        total = CounterMetricFamily("hpc_job", "Total number of jobs created")
        total.add_metric([], db.session.execute(db.select(func.max(Job.pk))).scalar() or 0)
        yield total
