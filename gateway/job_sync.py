"""Slurm jobs into the jobs table, from the cluster collector's families in Prometheus, on read.

No worker runs a timer of its own: a read of the jobs API (or /metrics) finds
the DB's stamp older than JOBS_SYNC_S and tries to move it with one UPDATE
that names the old value; the one worker or replica whose UPDATE matches does
the sync, the others serve the table as it is. The sync reads everything
Prometheus saw since the previous one (``last_over_time`` over that window),
so a job that started and ended between two reads is still caught, with its
final state. Jobs that ended keep that state and a summary of what was
measured (gateway/job_efficiency.py) once Slurm and Prometheus forget them.
"""

from __future__ import annotations

import logging
import re
import time
from datetime import UTC, datetime

from sqlalchemy import update
from sqlalchemy.exc import IntegrityError

from gateway.db import Job, JobSync, db
from gateway.errors import ApiError
from gateway.promql import Prometheus

log = logging.getLogger(__name__)

SYNC = "slurm"
MEASURED_PER_SYNC = 20
# Slurm's job states, lower-cased: where a job stands in its life (a later stage wins within one window).
ACTIVE = ("pending", "configuring", "running", "suspended", "completing", "requeued", "resizing")
RANK = {"pending": 0, "configuring": 1, "requeued": 0, "running": 2, "suspended": 2, "resizing": 2, "completing": 3}
ENDED_RANK = 4
NUMBERS = {  # family -> Job attribute
    "fleet_slurm_job_cpus": "cpus",
    "fleet_slurm_job_gpus": "gpus",
    "fleet_slurm_job_memory_bytes": "memory_bytes",
    "fleet_slurm_job_time_limit_seconds": "time_limit_s",
    "fleet_slurm_job_submit_timestamp_seconds": "submit_at",
    "fleet_slurm_job_start_timestamp_seconds": "start_at",
    "fleet_slurm_job_end_timestamp_seconds": "end_at",
}
JOB_LEVEL = '{step="",task=""}'
USAGE = {  # Job attribute -> PromQL by jobid, over every node of the job
    "cpu_usage_pct": f"100 * sum by (jobid) (rate(cgroup_cpu_total_seconds{JOB_LEVEL}[1m]))"
    f" / sum by (jobid) (cgroup_cpus{JOB_LEVEL})",
    "memory_usage_bytes": f"sum by (jobid) (cgroup_memory_rss_bytes{JOB_LEVEL})",
    "gpu_usage_pct": "avg by (jobid) (nvidia_gpu_duty_cycle)",
}


def sync_if_due(prom: Prometheus, every_s: float, lookback_s: float) -> bool:
    """Sync if the DB's stamp is older than ``every_s`` and this worker is the one that moves it; True if it synced."""
    now = time.time()
    last = _stamp()
    if now - last < every_s:
        return False
    claimed = db.session.execute(
        update(JobSync).where(JobSync.name == SYNC, JobSync.ran_at == last).values(ran_at=now)
    ).rowcount
    db.session.commit()
    if claimed != 1:
        return False  # another worker or replica took this round
    window = min(lookback_s, max(60.0, now - last + 2 * every_s))
    try:
        sync(prom, window, now)
    except ApiError as exc:  # Prometheus down: the table stays as it was, the next read tries again
        db.session.rollback()
        db.session.execute(update(JobSync).where(JobSync.name == SYNC, JobSync.ran_at == now).values(ran_at=last))
        db.session.commit()
        log.warning("job sync failed: %s", exc.message)
        return False
    return True


def _stamp() -> float:
    row = db.session.get(JobSync, SYNC)
    if row is not None:
        return row.ran_at
    db.session.add(JobSync(name=SYNC, ran_at=0.0))
    try:
        db.session.commit()
    except IntegrityError:  # another worker made it first
        db.session.rollback()
    return db.session.get(JobSync, SYNC).ran_at


def sync(prom: Prometheus, window_s: float, now: float) -> None:
    """Every Slurm job Prometheus saw in the last ``window_s`` seconds, into the jobs table."""
    from gateway.job_efficiency import measure

    w = f"[{int(window_s)}s]"
    queries = [f"last_over_time(fleet_slurm_job_info{w})"]
    queries += [f"last_over_time({family}{w})" for family in NUMBERS]
    queries += list(USAGE.values())
    answers = prom.query_many(queries)
    seen: dict[str, dict] = {}
    for s in answers[0]:
        m = s["metric"]
        state = m.get("state", "").lower()
        rank = RANK.get(state, ENDED_RANK)
        if m.get("jobid") and rank >= seen.get(m["jobid"], {}).get("rank", -1):
            seen[m["jobid"]] = {**m, "state": state, "rank": rank}
    if not seen:
        return
    numbers = {
        attr: _by_jobid(result) for attr, result in zip(NUMBERS.values(), answers[1 : 1 + len(NUMBERS)], strict=True)
    }
    usage = {attr: _by_jobid(result) for attr, result in zip(USAGE, answers[1 + len(NUMBERS) :], strict=True)}
    rows = {j.id: j for j in db.session.execute(db.select(Job).where(Job.id.in_(list(seen)))).scalars()}
    ended: list[Job] = []
    for jobid, m in seen.items():
        job = rows.get(jobid)
        if job is None:
            job = Job(id=jobid, scheduler="slurm", summary={})
            db.session.add(job)
        elif job.scheduler != "slurm" or job.state not in ACTIVE:
            continue  # a posted job of the same id, or one already ended: what is stored stays
        job.user, job.name, job.account = m.get("user", ""), m.get("name", ""), m.get("account", "")
        job.partition, job.state, job.nodes = m.get("partition", ""), m["state"], node_column(m.get("nodes", ""))
        for attr, values in numbers.items():
            if jobid in values:
                value = values[jobid]
                setattr(job, attr, datetime.fromtimestamp(value, UTC) if attr.endswith("_at") else round(value))
        if job.state in ACTIVE:
            for attr, values in usage.items():
                setattr(job, attr, values.get(jobid))
        else:
            job.end_at = job.end_at or datetime.fromtimestamp(now, UTC)
            ended.append(job)
    db.session.commit()
    # Measured at their end, while Prometheus still holds their series; a burst of endings is measured
    # MEASURED_PER_SYNC at a time here (a read waits for this), the rest when their efficiency is asked for.
    for job in ended[:MEASURED_PER_SYNC]:
        try:
            job.summary = measure(prom, job)
        except ApiError as exc:
            log.warning("no summary for job %s: %s", job.id, exc.message)
    db.session.commit()


def _by_jobid(result: list[dict]) -> dict[str, float]:
    return {s["metric"]["jobid"]: float(s["value"][1]) for s in result if "jobid" in s["metric"]}


def node_column(hostlist: str) -> str:
    """Slurm's hostlist as stored: ",a,b," (so that one LIKE finds a node on every database)."""
    return "," + "".join(f"{n}," for n in expand_hostlist(hostlist))


def expand_hostlist(hostlist: str, limit: int = 1000) -> list[str]:
    """``node[01-03,7],gpu1`` -> node01, node02, node03, node7, gpu1 (at most ``limit`` names)."""
    names: list[str] = []
    for prefix, ranges, suffix in re.findall(r"([^,\[\]]*)(?:\[([^\]]*)\])?([^,\[\]]*),?", hostlist):
        if not ranges:
            if prefix + suffix:
                names.append(prefix + suffix)
            continue
        for part in ranges.split(","):
            lo, _, hi = part.partition("-")
            for i in range(int(lo), int(hi or lo) + 1):
                names.append(f"{prefix}{i:0{len(lo)}d}{suffix}")
                if len(names) >= limit:
                    return names
    return names[:limit]
