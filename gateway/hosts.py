"""Hosts (§8.2): inventory with tags in the DB, status and metrics from Prometheus.

A page of the host list costs four PromQL queries for the whole fleet (now,
sustained over 1 min, last seen, sick GPUs), never one per host.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime

import marshmallow as ma
from flask import current_app
from flask.views import MethodView
from sqlalchemy import func

from gateway.alert_silences import maintenance
from gateway.auth import audit
from gateway.db import Host, add_with_id, db
from gateway.discovery import DiscoveredHost, discovered_hosts, heartbeat
from gateway.errors import ApiError, Blueprint, Conflict, NotFound
from gateway.gpu_health import problems_query, reasons_by_host
from gateway.inventory import targets_changed
from gateway.promql import selector
from gateway.schemas import ChangeSchema, Page, PageArgs, Pattern, UtcDateTime, fast_json, utc_text
from gateway.series import RANGES, RESOLUTIONS, fetch_series
from rules_compiler.recording import HELD_FOR, HOST_SUMMARY, JUDGED

blp = Blueprint("hosts", __name__, url_prefix="/api/v1/hosts", description="Hosts, their tags and status")

WARN_PCT, CRIT_PCT = 70.0, 90.0
HEARTBEAT_LOST_S = 120
DETAIL_METRICS = ("cpu.utilization", "mem.used_pct", "gpu.utilization", "disk.used_pct", "net.tx_mbps", "net.rx_mbps")
RESERVED_TAGS = {"host_id", "hostname", "instance", "job"}
HOST_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,62})(?:\.[A-Za-z0-9-]{1,63})*$")
PUSH = "push"  # the API's ``exporter`` of a pushing host, as it was before Host.pushes existed


def shown_exporter(host) -> str | None:
    """``exporter`` as the API shows it: the scrape address, or "push"."""
    return PUSH if host.pushes else host.exporter


def _tag_key(key: str) -> None:
    # Names starting with __ are Prometheus's own (__name__, __meta_*): never a host's tag.
    if not re.fullmatch(r"[a-zA-Z_][a-zA-Z0-9_]{0,62}", key) or key in RESERVED_TAGS or key.startswith("__"):
        raise ma.ValidationError(
            f"tag name {key!r} must be a Prometheus label name (letters, digits, _), not start with __, "
            f"and not be one of {', '.join(sorted(RESERVED_TAGS))}"
        )


class IPText(ma.fields.IP):
    """An IPv4/IPv6 address, validated, kept as its text (it is stored as JSON)."""

    def __init__(self, **kwargs):
        # apispec would say format "ip", which JSON Schema does not know: say which two it means.
        super().__init__(
            metadata={"openapi": {"type": "string", "anyOf": [{"format": "ipv4"}, {"format": "ipv6"}]}}, **kwargs
        )

    def _deserialize(self, value, attr, data, **kwargs):
        return str(super()._deserialize(value, attr, data, **kwargs))

    def _serialize(self, value, attr, obj, **kwargs):
        return value


# _tag_key's rule as the document shows it (JSON Schema's dialect).
TAG_NAME = r"^(?!__)(?!(?:" + "|".join(sorted(RESERVED_TAGS)) + r")$)[a-zA-Z_][a-zA-Z0-9_]{0,62}$"


class Tags(ma.fields.Dict):
    def __init__(self, **kwargs):
        super().__init__(
            keys=ma.fields.String(validate=_tag_key),
            values=ma.fields.String(validate=ma.validate.Length(max=200)),
            validate=ma.validate.Length(max=32),
            **kwargs,
        )
        self.metadata = {
            **self.metadata,
            "openapi": {
                "type": "object",
                "maxProperties": 32,
                "patternProperties": {TAG_NAME: {"type": "string", "maxLength": 200}},
                "additionalProperties": False,
                "example": {"role": "web", "zone": "us-west"},
                **{k: v for k, v in self.metadata.items() if k == "description"},
            },
        }


HOST_PORT = r"^[A-Za-z0-9.\-\[\]:]+:\d{1,5}$"


class ExporterField(ma.fields.String):
    """A HOST:PORT to scrape, or "push" (its agent pushes); out, what ``shown_exporter`` says."""

    def _deserialize(self, value, attr, data, **kwargs):
        text = super()._deserialize(value, attr, data, **kwargs)
        if text != PUSH and not re.fullmatch(HOST_PORT, text):
            raise ma.ValidationError('expected HOST:PORT, or "push"')
        return text

    def _serialize(self, value, attr, obj, **kwargs):
        return shown_exporter(obj)


class HostSchema(ma.Schema):
    id = ma.fields.String(validate=Pattern(HOST_ID))
    hostname = ma.fields.String(required=True, validate=Pattern(HOSTNAME, error="not a valid hostname"))
    ips = ma.fields.List(IPText(), load_default=list, validate=ma.validate.Length(max=64))
    tags = Tags(load_default=dict)
    has_gpu = ma.fields.Boolean(load_default=False)
    agent_version = ma.fields.String(allow_none=True, validate=ma.validate.Length(max=64))
    exporter = ExporterField(
        allow_none=True,
        metadata={
            "pattern": rf"^(?:{PUSH}|{HOST_PORT[1:-1]})$",
            "description": 'where Prometheus scrapes its exporter; default <first ip or hostname>:9101; "push" for '
            "a host whose agent pushes its points (setting an address makes it a scraped host)",
        },
    )
    last_seen_at = UtcDateTime(dump_only=True, allow_none=True)
    source = ma.fields.String(
        dump_only=True,
        metadata={"description": "api, push (its agent's first push), import (CSV), local (this machine), discovered"},
    )
    status = ma.fields.String(dump_only=True)
    status_reasons = ma.fields.List(ma.fields.String(), dump_only=True)
    metrics_summary = ma.fields.Dict(dump_only=True)


class HostPatchSchema(HostSchema):
    class Meta:
        exclude = ("id",)

    hostname = ma.fields.String(validate=Pattern(HOSTNAME, error="not a valid hostname"))
    ips = ma.fields.List(IPText(), validate=ma.validate.Length(max=64))
    tags = Tags()
    has_gpu = ma.fields.Boolean()


# key:value pairs, commas between; the keys are tag names. Spaces, not \s: Python's and JSON Schema's differ.
TAG_FILTER = r"^ *(?:[A-Za-z_][A-Za-z0-9_]*:[^,]*)?(?: *, *(?:[A-Za-z_][A-Za-z0-9_]*:[^,]*)?)* *$"


class HostListArgs(PageArgs):
    tags = ma.fields.String(
        validate=Pattern(TAG_FILTER, error="expected key:value pairs separated by commas, e.g. role:web,zone:us-west"),
        metadata={"description": "role:web,zone:us-west (all must match)"},
    )
    status = ma.fields.String(validate=ma.validate.OneOf(["ok", "warn", "crit", "maintenance"]))


class HostListSchema(Page):
    hosts = ma.fields.List(ma.fields.Nested(HostSchema))


class HostDetailSchema(ma.Schema):
    host = ma.fields.Nested(HostSchema)
    metrics = ma.fields.Dict(
        keys=ma.fields.String(), metadata={"description": "each detail metric's points over the range"}
    )
    range = ma.fields.String()
    resolution = ma.fields.String(allow_none=True)
    tier = ma.fields.String(allow_none=True)


class DetailArgs(ma.Schema):
    range = ma.fields.String(load_default="1h", validate=ma.validate.OneOf(list(RANGES)))
    resolution = ma.fields.String(validate=ma.validate.OneOf(RESOLUTIONS))


def parse_tag_filter(text: str) -> dict[str, str]:
    wanted = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition(":")
        if not sep or not key:
            raise ApiError(f"tag filter {part!r} is not key:value", {"tags": text})
        wanted[key] = value
    return wanted


def fleet_state(
    prom, host_ids: list[str], whole_fleet: bool = False, pushed: frozenset[str] = frozenset()
) -> dict[str, dict]:
    """Summary, status and last-seen time of every host in ``host_ids``.

    The summary and the values held over the last minute are recorded by
    Prometheus at every evaluation (rules_compiler/recording.py), so a page of
    hosts is two plain selectors and the heartbeat, asked concurrently. A
    successful scrape of a host's exporter (``up == 1``) is its heartbeat; the
    15-minute look back for the last good one is asked only for hosts down now.
    """
    if not host_ids:
        return {}

    # Only the hosts asked about: a page of 50 costs Prometheus a tenth of the fleet
    # (for the whole fleet a matcher of every id would only add work).
    def sel(name: str, **matchers: str) -> str:
        return selector(name, matchers, regex=None if whole_fleet else {"host_id": host_ids})

    beat, beat_matchers = heartbeat()
    now_result, held_result, seen_result, gpu_result = prom.query_many(
        [
            sel("fleet:host_summary"),
            # Only the hosts held above the crit line: usually none, instead of every host's minimum.
            f"{sel('fleet:host_summary_held')} > {CRIT_PCT:g}",
            f"max by (host_id) (timestamp({sel(beat, **beat_matchers)} == 1))",
            problems_query(sel),  # only sick or degraded GPUs: usually none
        ]
    )
    gpu_reasons = reasons_by_host(gpu_result)

    def by_host(result) -> dict[tuple[str, str], float]:
        return {(s["metric"].get("host_id", ""), s["metric"]["summary"]): float(s["value"][1]) for s in result}

    now_values, held_values = by_host(now_result), by_host(held_result)
    seen = {s["metric"].get("host_id", ""): float(s["value"][1]) for s in seen_result}
    # A pushing host has no `up`: its agent's last push judges it (_push_status), so
    # looking back 15 min for its scrapes would cost a query whose answer is thrown away.
    down = [h for h in host_ids if h not in seen and h not in pushed]
    if down:
        up = selector(beat, beat_matchers, regex={"host_id": down})
        back = f"max by (host_id) (max_over_time(timestamp({up} == 1)[15m:15s]))"
        seen = {**seen, **{s["metric"]["host_id"]: float(s["value"][1]) for s in prom.query(back)}}
    now = time.time()
    state = {}
    for host_id in host_ids:
        summary = {field: _round(now_values.get((host_id, field))) for field in HOST_SUMMARY}
        reasons = []
        for field in JUDGED:
            if (host_id, field) in held_values:
                reasons.append(f"crit: {field} above {CRIT_PCT:g} for {HELD_FOR}")
            elif summary[field] is not None and summary[field] >= WARN_PCT:
                reasons.append(f"warn: {field} at {summary[field]:g}")
        reasons += gpu_reasons.get(host_id, [])
        last_seen = seen.get(host_id)
        if last_seen is None or now - last_seen > HEARTBEAT_LOST_S:
            reasons.append("crit: no heartbeat for 2m" if last_seen else "crit: never seen")
        status = "crit" if any(r.startswith("crit") for r in reasons) else "warn" if reasons else "ok"
        state[host_id] = {
            "metrics_summary": summary,
            "status": status,
            "status_reasons": reasons,
            "last_seen": last_seen,
        }
    return state


def _timestamp(value: datetime) -> float:
    # SQLite hands back naive datetimes; they are UTC.
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


HOST_FIELDS = ("id", "hostname", "ips", "tags", "has_gpu", "agent_version", "source", "exporter", "last_seen_at")


def _with_state(host, state: dict, maintenance: dict[str, str]) -> dict:
    """A host (an ORM object or a row of HOST_FIELDS) and its state, ready for JSON."""
    s = state.get(host.id, {})
    seen = [t for t in (s.get("last_seen"), host.last_seen_at and _timestamp(host.last_seen_at)) if t]
    status, reasons = s.get("status", "crit"), s.get("status_reasons", [])
    if host.pushes:
        status, reasons = _push_status(reasons, host.last_seen_at)
    if host.id in maintenance:  # a maintenance window is open on it: its alerts are muted
        status, reasons = "maintenance", [f"maintenance: {maintenance[host.id]}", *reasons]
    return {
        **{f: getattr(host, f) for f in HOST_FIELDS[:-1]},
        "exporter": shown_exporter(host),
        "status": status,
        "status_reasons": reasons,
        "metrics_summary": s.get("metrics_summary", {}),
        "last_seen_at": utc_text(max(seen)) if seen else None,
    }


def _push_status(reasons: list[str], last_seen_at: datetime | None) -> tuple[str, list[str]]:
    """A pushing host has no scrape to judge its heartbeat by: its agent's last push or beat is."""
    reasons = [r for r in reasons if "heartbeat" not in r and "never seen" not in r]
    if last_seen_at is None:
        reasons.append("crit: agent never seen")
    elif time.time() - _timestamp(last_seen_at) > HEARTBEAT_LOST_S:
        reasons.append("crit: agent silent for 2m")
    status = "crit" if any(r.startswith("crit") for r in reasons) else "warn" if reasons else "ok"
    return status, reasons


def get_host(host_id: str, discovered: bool = False) -> Host | DiscoveredHost:
    """The inventory's host; with ``discovered``, else one Prometheus scrapes.

    Raises:
        NotFound: neither.
    """
    host = db.session.execute(db.select(Host).filter_by(id=host_id)).scalar_one_or_none()
    if host is None and discovered:
        host = next(iter(discovered_hosts(current_app.extensions["prometheus"], host_id)), None)
    if host is None:
        raise NotFound(f"no host {host_id}", {"host_id": host_id})
    return host


@blp.route("")
class Hosts(MethodView):
    @blp.arguments(HostListArgs, location="query")
    @blp.response(200, HostListSchema)
    def get(self, args):
        """List hosts with status and a summary of their main metrics; filter by tags (AND) and status."""
        # Plain rows of the listed columns: loading 500 ORM objects cost more than the rest of the page.
        listed = db.select(*(getattr(Host, f) for f in HOST_FIELDS), Host.pushes).order_by(Host.pk)
        wanted = parse_tag_filter(args.get("tags", ""))
        prom = current_app.extensions["prometheus"]
        # Hosts Prometheus scrapes that the inventory lacks follow the inventory's (they have no tags).
        discovered = [] if wanted else discovered_hosts(prom)
        if not wanted and "status" not in args:
            # Only the page leaves the DB: decoding every host's JSON columns for a page
            # of 50 took a quarter of the gateway's time under load.
            inventory = db.session.execute(db.select(func.count()).select_from(Host)).scalar_one()
            hosts = db.session.execute(listed.limit(args["limit"]).offset(args["offset"])).all()
            start = max(0, args["offset"] - inventory)
            hosts = [*hosts, *discovered[start : start + args["limit"] - len(hosts)]]
            fleet_size = total = inventory + len(discovered)
        else:
            fleet = [*db.session.execute(listed).all(), *discovered]
            fleet_size = len(fleet)
            hosts = [h for h in fleet if all((h.tags or {}).get(k) == v for k, v in wanted.items())]
            if "status" not in args:
                total = len(hosts)
                hosts = hosts[args["offset"] : args["offset"] + args["limit"]]
        pushed = frozenset(h.id for h in hosts if h.pushes)
        state = fleet_state(prom, [h.id for h in hosts], whole_fleet=len(hosts) == fleet_size, pushed=pushed)
        in_maintenance = maintenance([h.id for h in hosts])
        rows = [_with_state(h, state, in_maintenance) for h in hosts]
        if "status" in args:
            rows = [r for r in rows if r["status"] == args["status"]]
            total = len(rows)
            rows = rows[args["offset"] : args["offset"] + args["limit"]]
        return fast_json({"hosts": rows, "total": total, "limit": args["limit"], "offset": args["offset"]})

    @blp.arguments(HostSchema)
    @blp.response(201, ChangeSchema)
    def post(self, body):
        """Add a host (admin); its exporter becomes a scrape target."""
        if body.get("id") and db.session.execute(db.select(Host.pk).filter_by(id=body["id"])).first():
            raise Conflict(f"host {body['id']} exists", {"id": body["id"]})
        host = add_with_id(Host(**{k: v for k, v in body.items() if k not in ("id", "exporter")}), body.get("id"))
        _set_exporter(host, body)
        audit("host_create", host.id, hostname=host.hostname, tags=host.tags)
        db.session.commit()
        targets_changed()
        return {"id": host.id, "status": "created"}


def _set_exporter(host: Host, body: dict) -> None:
    """ "push": its agent pushes, nothing to scrape; an address (or null): Prometheus scrapes it from now on."""
    if "exporter" in body:
        host.pushes = body["exporter"] == PUSH
        host.exporter = None if host.pushes else body["exporter"]


@blp.route("/<host_id>")
class HostById(MethodView):
    @blp.arguments(DetailArgs, location="query")
    # Documented, not dumped: the answer is built as it is sent.
    @blp.doc(responses={"200": {"description": "OK", "content": {"application/json": {"schema": HostDetailSchema}}}})
    def get(self, args, host_id):
        """One host with the series of its main metrics over ``range``."""
        host = get_host(host_id, discovered=True)
        pushed = frozenset([host.id] if host.pushes else [])
        state = fleet_state(current_app.extensions["prometheus"], [host.id], pushed=pushed)
        series, resolution, tier = {}, None, None
        for name in DETAIL_METRICS:
            series[name], resolution, tier = fetch_series(
                current_app.extensions["tiers"],
                name,
                host.id,
                args["range"],
                combine=True,
                resolution=args.get("resolution"),
            )
        return {
            "host": _with_state(host, state, maintenance([host.id])),
            "metrics": series,
            "range": args["range"],
            "resolution": resolution,
            "tier": tier,
        }

    @blp.arguments(HostPatchSchema)
    @blp.response(200, HostSchema)
    def patch(self, body, host_id):
        """Change a host's hostname, addresses, tags or exporter address (admin)."""
        host = get_host(host_id)
        for key, value in body.items():
            if key != "exporter":
                setattr(host, key, value)
        _set_exporter(host, body)
        audit("host_update", host.id, **body)
        db.session.commit()
        targets_changed()
        return host

    @blp.response(200, ChangeSchema)
    def delete(self, host_id):
        """Remove a host (admin); Prometheus stops scraping it."""
        host = get_host(host_id)
        db.session.delete(host)
        audit("host_delete", host_id, hostname=host.hostname)
        db.session.commit()
        targets_changed()
        return {"id": host_id, "status": "deleted"}


def fleet_statuses() -> dict[str, tuple[str, list[str]]]:
    """Every host's status and reasons now, as the host list shows them (for the status watcher)."""
    hosts = db.session.execute(db.select(*(getattr(Host, f) for f in HOST_FIELDS), Host.pushes)).all()
    pushed = frozenset(h.id for h in hosts if h.pushes)
    state = fleet_state(current_app.extensions["prometheus"], [h.id for h in hosts], whole_fleet=True, pushed=pushed)
    muted = maintenance([h.id for h in hosts])
    return {h.id: (row["status"], row["status_reasons"]) for h in hosts for row in [_with_state(h, state, muted)]}
