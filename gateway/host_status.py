"""A host's status (§8.2), judged from what Prometheus records: for a page of hosts, or the whole fleet.

A page of the host list costs one round of concurrent PromQL queries for the
whole page (its hosts' layer series the summary combines, values held over the
last minute, heartbeat, sick GPUs), never one per host; hosts down now cost one
more look back for their last heartbeat. Filtering by status and the status
watcher judge the whole fleet from only what judges (values held above the
crit line and levels above the warn line: usually a handful of series, and one
heartbeat per host), then show a page.
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

from flask import current_app
from sqlalchemy import or_

from gateway.alert_silences import maintenance
from gateway.db import Host, HostStatusSeen, db
from gateway.discovery import discovered_from, discovery_queries, heartbeat
from gateway.gpu_health import problems_query, reasons_by_host
from gateway.promql import any_of, selector
from rules_compiler.catalog import CATALOG
from rules_compiler.recording import CRIT_PCT, HELD, HELD_FOR, HOST_SUMMARY, JUDGED, judged_records, summary_sources

WARN_PCT = 70.0
HEARTBEAT_LOST_S = 120
NEVER_SEEN = "crit: never seen"  # no heartbeat now, and none found by a look back (if one was made)
NO_HEARTBEAT = "crit: no heartbeat for 2m"
SILENT = (NEVER_SEEN, NO_HEARTBEAT)  # the reasons of a host without a heartbeat now
SUMMARY_SOURCES = summary_sources(CATALOG)
JUDGED_SOURCES = list(judged_records(CATALOG))
_COMBINE = {"max": max, "sum": math.fsum, "avg": lambda v: math.fsum(v) / len(v)}


def state_queries(
    host_ids: list[str], whole_fleet: bool = False, summary: bool = True, down: list[str] | None = None
) -> list[str]:
    """The PromQL ``judge`` reads, for ``host_ids`` (or every host, ``whole_fleet``).

    Without ``summary``, only the judged levels at or above the warn line: what
    decides a status, without the summary a page shows. ``down``: hosts known to
    have no heartbeat now, whose last one is looked for in the same round.
    """

    # Only the hosts asked about: a page of 50 costs Prometheus a tenth of the fleet
    # (for the whole fleet a matcher of every id would only add work).
    hosts = {} if whole_fleet else {"host_id": host_ids}

    def sel(name: str, **matchers: str) -> str:
        return selector(name, matchers, regex=hosts)

    beat, beat_matchers = heartbeat()
    if summary:
        # One selector for every field: the page's hosts named once, their series combined in Python.
        now = any_of(list(SUMMARY_SOURCES), hosts)
    else:
        # Every judged field combines by max: a host is at or above the warn line where any series is.
        now = f"{any_of(JUDGED_SOURCES)} >= {WARN_PCT:g}"
    return [
        now,
        # Only the hosts held above the crit line: usually none, instead of every host's minimum.
        f"{sel(HELD)} > {CRIT_PCT:g}",
        f"max by (host_id) ({_beats(sel(beat, **beat_matchers))})",
        problems_query(None if whole_fleet else host_ids),  # only sick or degraded GPUs: usually none
        *([_look_back(down)] if down else []),
    ]


def _beats(up: str) -> str:
    """When each ``up`` series last said 1: its sample's own time, where it says 1 now.

    Not ``timestamp(up == 1)``: the timestamp of an expression is the evaluation's
    on Prometheus (a beat up to 5 min old, the lookback, looked fresh) and, on VictoriaMetrics, one a
    cached subquery kept (minutes old while samples came every 15 s: 9,775 hosts of
    10,000 "no heartbeat" in bench/fleet.py --backend victoriametrics). Of a plain
    selector both give the sample's.
    """
    return f"(timestamp({up}) and {up} == 1)"


def _summaries(series: list[dict]) -> dict[str, dict[str, float]]:
    """Each host's summary fields from its layer series, combined as HOST_SUMMARY says (NaN left out)."""
    found: dict[tuple[str, tuple[str, str]], list[float]] = {}
    for s in series:
        source, value = SUMMARY_SOURCES.get(s["metric"].get("__name__", "")), float(s["value"][1])
        if source is not None and not math.isnan(value):
            found.setdefault((s["metric"].get("host_id", ""), source), []).append(value)
    values: dict[str, dict[str, float]] = {}
    for (host_id, (field, how)), v in found.items():
        values.setdefault(host_id, {})[field] = _round(_COMBINE[how](v))
    return values


def _look_back(down: list[str]) -> str:
    """The last heartbeat in 15 min of hosts without one now."""
    beat, beat_matchers = heartbeat()
    up = selector(beat, beat_matchers, regex={"host_id": down})
    return f"max by (host_id) (max_over_time({_beats(up)}[15m:15s]))"


def judge(
    prom, host_ids: list[str], results: list[list[dict]], pushed: frozenset[str] = frozenset(), look_back: bool = True
) -> dict:
    """Summary, status, reasons and last-seen time of every host in ``host_ids``, from state_queries' answers.

    A successful scrape of a host's exporter (``up == 1``) is its heartbeat; the
    15-minute look back for the last good one is asked only for hosts down now
    (unless it was asked with the rest), and only for the reason's words: a host
    with no heartbeat in the last 5 min is crit whatever it finds.
    """
    now_result, held_result, seen_result, gpu_result, *looked = results
    gpu_reasons = reasons_by_host(gpu_result)

    values = _summaries(now_result)
    held = {(s["metric"].get("host_id", ""), s["metric"]["summary"]) for s in held_result}
    flagged = {h for h, _ in held} | {h for h, v in values.items() if any((v.get(f) or 0) >= WARN_PCT for f in JUDGED)}
    seen = {s["metric"].get("host_id", ""): float(s["value"][1]) for s in seen_result}
    # A pushing host has no `up`: its agent's last push judges it (push_status), so
    # looking back 15 min for its scrapes would cost a query whose answer is thrown away.
    down = [h for h in host_ids if h not in seen and h not in pushed]
    if down and look_back and not looked:
        looked = [prom.query(_look_back(down))]
    if looked:
        seen = {**seen, **{s["metric"]["host_id"]: float(s["value"][1]) for s in looked[0]}}
    now = time.time()
    empty = dict.fromkeys(HOST_SUMMARY)
    state = {}
    for host_id in host_ids:  # the whole fleet, at times: the usual host (nothing flagged) costs little
        summary = {**empty, **values.get(host_id, {})}
        reasons = []
        if host_id in flagged:
            for field in JUDGED:
                if (host_id, field) in held:
                    reasons.append(f"crit: {field} above {CRIT_PCT:g} for {HELD_FOR}")
                elif summary[field] is not None and summary[field] >= WARN_PCT:
                    reasons.append(f"warn: {field} at {summary[field]:g}")
        if host_id in gpu_reasons:
            reasons += gpu_reasons[host_id]
        last_seen = seen.get(host_id)
        if last_seen is None or now - last_seen > HEARTBEAT_LOST_S:
            reasons.append(NO_HEARTBEAT if last_seen else NEVER_SEEN)
        state[host_id] = {
            "metrics_summary": summary,
            "status": _level(reasons) if reasons else "ok",
            "status_reasons": reasons,
            "last_seen": last_seen,
        }
    return state


def fleet_state(
    prom, host_ids: list[str], whole_fleet: bool = False, pushed: frozenset[str] = frozenset()
) -> dict[str, dict]:
    """Summary, status and last-seen time of every host in ``host_ids`` (see judge)."""
    if not host_ids:
        return {}
    return judge(prom, host_ids, prom.query_many(state_queries(host_ids, whole_fleet)), pushed)


def status_of(
    host_id: str, pushes: bool, last_seen_at: datetime | None, state: dict, muted: dict[str, str]
) -> tuple[str, list[str]]:
    """A host's status and reasons as the API shows them: its agent's pushes judge a pushing host; maintenance wins."""
    s = state.get(host_id, {})
    status, reasons = s.get("status", "crit"), s.get("status_reasons", [])
    if pushes:
        status, reasons = push_status(reasons, last_seen_at)
    if host_id in muted:  # a maintenance window is open on it: its alerts are muted
        status, reasons = "maintenance", [f"maintenance: {muted[host_id]}", *reasons]
    return status, reasons


def push_status(reasons: list[str], last_seen_at: datetime | None) -> tuple[str, list[str]]:
    """A pushing host has no scrape to judge its heartbeat by: its agent's last push or beat is."""
    reasons = [r for r in reasons if "heartbeat" not in r and "never seen" not in r]
    if last_seen_at is None:
        reasons.append("crit: agent never seen")
    elif time.time() - timestamp(last_seen_at) > HEARTBEAT_LOST_S:
        reasons.append("crit: agent silent for 2m")
    return _level(reasons), reasons


@contextmanager
def _no_cycle_collection() -> Iterator[None]:
    # Judging 10,000 hosts makes some 50,000 dicts, lists and rows and not one reference cycle:
    # the collector's passes meanwhile found nothing and cost a third of the time.
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def judged_fleet(
    prom, tags: dict[str, str] | None = None, look_back: bool = True, from_record: str | None = None
) -> list[tuple[object, str, list[str] | None]]:
    """Every host with ``tags`` (or all, discovered ones too) in the list's order, its status and reasons.

    Rows carry id, pushes and tags only: the page shown is read again in full.
    Without ``look_back``, the reasons of hosts down for over 5 min say "never seen".
    With ``from_record`` (a status), only the hosts the status watcher's last
    round recorded under that status, their reasons None, and those it did not
    record (newer than it: usually none), judged now.
    """
    with _no_cycle_collection():
        return _judged_fleet(prom, tags, look_back, from_record)


def _judged_fleet(
    prom, tags: dict[str, str] | None, look_back: bool, from_record: str | None
) -> list[tuple[object, str, list[str] | None]]:
    # The table's columns, not the ORM's: its row handling, and turning 10,000 last_seen_at into
    # datetimes, cost more than judging them. Only pushing hosts' last pushes are read.
    table, seen = Host.__table__.c, HostStatusSeen.__table__.c
    listed = db.select(table.id, table.pushes, *([table.tags] if tags else [])).order_by(table.pk)
    if from_record:
        # Only that status's rows and those the record lacks: 175 rows of 10,000 for crit.
        joined = Host.__table__.outerjoin(HostStatusSeen.__table__, seen.host_id == table.id)
        listed = listed.add_columns(seen.status).select_from(joined)
        listed = listed.where(or_(seen.status == from_record, seen.status.is_(None)))
    hosts = db.session.execute(listed).all()
    if tags:
        hosts = [h for h in hosts if all((h.tags or {}).get(k) == v for k, v in tags.items())]
    # Hosts Prometheus scrapes that the inventory lacks have no tags: in the list only without a tag filter.
    discovering = [] if tags else discovery_queries()
    pushing = db.select(table.id, table.last_seen_at).where(table.pushes)
    if from_record:
        recorded = {h.id: h.status for h in hosts if h.status is not None}
        found = discovered_from(*prom.query_many(discovering)) if discovering else []
        if found:
            chosen = db.select(seen.host_id, seen.status).where(seen.host_id.in_([h.id for h in found]))
            recorded |= dict(db.session.execute(chosen).all())
        hosts = [*hosts, *(h for h in found if recorded.get(h.id, from_record) == from_record)]
        fresh = [h.id for h in hosts if h.id not in recorded]
        results = prom.query_many(state_queries(fresh)) if fresh else []
        pushing = pushing.where(table.id.in_(fresh))
    else:
        recorded = {}
        queries = state_queries([h.id for h in hosts], whole_fleet=True, summary=False)
        results = prom.query_many(queries + discovering)
        hosts = [*hosts, *(discovered_from(*results[len(queries) :]) if discovering else [])]
        fresh, results = [h.id for h in hosts], results[: len(queries)]
    last_pushes = dict(db.session.execute(pushing).all()) if fresh else {}
    state = judge(prom, fresh, results, frozenset(last_pushes), look_back) if fresh else {}
    muted = maintenance(fresh)
    judged = []
    for h in hosts:  # 10,000 at times: status_of only where it changes something
        host_id = h.id
        if host_id in recorded:
            judged.append((h, recorded[host_id], None))
        elif host_id in last_pushes or host_id in muted:
            pushes = host_id in last_pushes
            judged.append((h, *status_of(host_id, pushes, last_pushes.get(host_id), state, muted)))
        else:
            judged.append((h, state[host_id]["status"], state[host_id]["status_reasons"]))
    return judged


def fleet_statuses() -> dict[str, tuple[str, list[str]]]:
    """Every host's status and reasons now, as the host list shows them (for the status watcher)."""
    judged = judged_fleet(current_app.extensions["prometheus"])
    return {h.id: (status, reasons) for h, status, reasons in judged}


def timestamp(value: datetime) -> float:
    """Unix time of a DB datetime (SQLite hands back naive ones; they are UTC)."""
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()


def _level(reasons: list[str]) -> str:
    return "crit" if any(r.startswith("crit") for r in reasons) else "warn" if reasons else "ok"


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)
