"""Hosts (§8.2): inventory with tags in the DB, status and metrics from Prometheus.

A page of the host list costs one round of concurrent PromQL queries for the
whole page (gateway/host_status.py) and the discovered hosts, never one per host.
"""

from __future__ import annotations

import re

import marshmallow as ma
from flask import current_app
from flask.views import MethodView
from sqlalchemy import func

from gateway.alert_silences import maintenance
from gateway.auth import audit
from gateway.db import Host, add_with_id, db
from gateway.discovery import DiscoveredHost, discovered_from, discovered_hosts, discovery_queries
from gateway.errors import ApiError, Blueprint, Conflict, NotFound
from gateway.host_status import SILENT, fleet_state, judge, judged_fleet, state_queries, status_of, timestamp
from gateway.inventory import targets_changed
from gateway.schemas import ChangeSchema, Page, PageArgs, Pattern, UtcDateTime, fast_json, utc_text
from gateway.series import RANGES, RESOLUTIONS, fetch_series
from gateway.status_watch import record_is_recent, recorded_reasons

blp = Blueprint("hosts", __name__, url_prefix="/api/v1/hosts", description="Hosts, their tags and status")

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


HOST_FIELDS = ("id", "hostname", "ips", "tags", "has_gpu", "agent_version", "source", "exporter", "last_seen_at")


def _with_state(host, state: dict, muted: dict[str, str]) -> dict:
    """A host (an ORM object or a row of HOST_FIELDS) and its state, ready for JSON."""
    s = state.get(host.id, {})
    seen = [t for t in (s.get("last_seen"), host.last_seen_at and timestamp(host.last_seen_at)) if t]
    status, reasons = status_of(host.id, host.pushes, host.last_seen_at, state, muted)
    return {
        **{f: getattr(host, f) for f in HOST_FIELDS[:-1]},
        "exporter": shown_exporter(host),
        "status": status,
        "status_reasons": reasons,
        "metrics_summary": s.get("metrics_summary", {}),
        "last_seen_at": utc_text(max(seen)) if seen else None,
    }


def _page(prom, listed, offset: int, limit: int) -> tuple[list, int, dict]:
    """A page of the whole list (the inventory, then the hosts Prometheus scrapes that it lacks), its total, state.

    The page's state and the discovered hosts are asked in one round of queries;
    only a page that reaches past the inventory asks again, for the discovered hosts on it.
    """
    # Only the page leaves the DB: decoding every host's JSON columns for a page
    # of 50 took a quarter of the gateway's time under load.
    inventory = db.session.execute(db.select(func.count()).select_from(Host)).scalar_one()
    hosts = db.session.execute(listed.limit(limit).offset(offset)).all()
    ids = [h.id for h in hosts]
    queries = state_queries(ids) if ids else []
    results = prom.query_many(queries + discovery_queries())
    discovered = discovered_from(*results[len(queries) :])
    pushed = frozenset(h.id for h in hosts if h.pushes)
    state = judge(prom, ids, results[: len(queries)], pushed) if ids else {}
    start = max(0, offset - inventory)
    extra = discovered[start : start + limit - len(hosts)]
    state |= fleet_state(prom, [h.id for h in extra])
    return [*hosts, *extra], inventory + len(discovered), state


def _by_status(prom, args: dict, tags: dict[str, str]) -> dict:
    """A page of the hosts whose status is ``args["status"]``: the fleet's statuses first, then the page shown.

    The statuses are the status watcher's last round (gateway/status_watch.py:
    at most a few seconds old), which the page's rows show too, so a host is
    not listed under a status its row contradicts; without a recent round the
    fleet is judged here, skipping the look back for the words of "no heartbeat"
    reasons, and the page once more in full. Either way the page's summaries and
    last-seen times are read in one more round of queries.
    """
    recorded = record_is_recent()
    judged = judged_fleet(prom, tags, look_back=False, from_record=args["status"] if recorded else None)
    matching = [j for j in judged if j[1] == args["status"]]
    shown = matching[args["offset"] : args["offset"] + args["limit"]]
    if recorded:
        # One read of status and reasons together: a round may have been recorded since the filter's read.
        pairs = recorded_reasons([h.id for h, _, reasons in shown if reasons is None])
        shown = [(h, *pairs.get(h.id, (status, []))) if reasons is None else (h, status, reasons)
                 for h, status, reasons in shown]  # fmt: skip
    # Hosts without a heartbeat now: their last one (in 15 min) is looked for in the page's round.
    down = [h.id for h, _, reasons in shown if not h.pushes and any(r in SILENT for r in reasons)]
    wanted = [h.id for h, _, _ in shown if not isinstance(h, DiscoveredHost)]
    listed = db.select(*(getattr(Host, f) for f in HOST_FIELDS), Host.pushes).where(Host.id.in_(wanted))
    full = {h.id: h for h in db.session.execute(listed).all()} if wanted else {}
    hosts = [full.get(h.id, h) for h, _, _ in shown]
    ids = [h.id for h in hosts]
    pushed = frozenset(h.id for h in hosts if h.pushes)
    state = judge(prom, ids, prom.query_many(state_queries(ids, down=down)), pushed, look_back=False) if ids else {}
    muted = maintenance(ids)
    rows = [_with_state(h, state, muted) for h in hosts]
    if recorded:
        for row, (_, status, reasons) in zip(rows, shown, strict=True):
            row["status"], row["status_reasons"] = status, reasons
    return {"hosts": rows, "total": len(matching), "limit": args["limit"], "offset": args["offset"]}


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
        wanted = parse_tag_filter(args.get("tags", ""))
        prom = current_app.extensions["prometheus"]
        if "status" in args:
            return fast_json(_by_status(prom, args, wanted))
        # Plain rows of the listed columns: loading 500 ORM objects cost more than the rest of the page.
        listed = db.select(*(getattr(Host, f) for f in HOST_FIELDS), Host.pushes).order_by(Host.pk)
        if wanted:
            # Discovered hosts have no tags: never in a tag filter's answer.
            fleet = db.session.execute(listed).all()
            hosts = [h for h in fleet if all((h.tags or {}).get(k) == v for k, v in wanted.items())]
            total = len(hosts)
            hosts = hosts[args["offset"] : args["offset"] + args["limit"]]
            pushed = frozenset(h.id for h in hosts if h.pushes)
            # The whole fleet unnamed only where the page holds all of it: a tag every host has, paged by 50,
            # read all 10,000 hosts' series for each page.
            state = fleet_state(prom, [h.id for h in hosts], whole_fleet=len(hosts) == len(fleet), pushed=pushed)
        else:
            hosts, total, state = _page(prom, listed, args["offset"], args["limit"])
        in_maintenance = maintenance([h.id for h in hosts])
        rows = [_with_state(h, state, in_maintenance) for h in hosts]
        return fast_json({"hosts": rows, "total": total, "limit": args["limit"], "offset": args["offset"]})

    @blp.arguments(HostSchema)
    @blp.response(201, ChangeSchema)
    def post(self, body):
        """Add a host (admin); its exporter becomes a scrape target."""
        if body.get("id") and db.session.execute(db.select(Host.pk).filter_by(id=body["id"])).first():
            raise Conflict(f"host {body['id']} exists", {"id": body["id"]})
        host = add_with_id(Host(**{k: v for k, v in body.items() if k not in ("id", "exporter")}), body.get("id"))
        set_exporter(host, body)
        audit("host_create", host.id, hostname=host.hostname, tags=host.tags)
        db.session.commit()
        targets_changed()
        return {"id": host.id, "status": "created"}


def set_exporter(host: Host, body: dict) -> None:
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
        set_exporter(host, body)
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
