"""CSV import of hosts (REQ-HOST-003): all rows or none, every bad row named, one targets write per request.

Each row is checked by the same schema as ``POST /api/v1/hosts``; the rows go
into the DB as one batch, and the file_sd targets are rewritten once for the
whole file.
"""

from __future__ import annotations

import csv
import io

import marshmallow as ma
from flask import current_app, request
from flask.views import MethodView

from gateway.auth import audit
from gateway.db import Host, db
from gateway.errors import ApiError, Blueprint, Conflict
from gateway.hosts import HostSchema, set_exporter
from gateway.inventory import targets_changed
from gateway.schemas import accepts

blp = Blueprint("host-import", __name__, url_prefix="/api/v1/hosts", description="Hosts, their tags and status")

COLUMNS = ("hostname", "ips", "tags", "exporter", "id")
MAX_ERRORS = 100  # listed in a 400; the count says how many there were
_SCHEMA = HostSchema(only=("id", "hostname", "ips", "tags", "exporter"))


class ImportArgs(ma.Schema):
    upsert = ma.fields.Boolean(
        load_default=False, metadata={"description": "update hosts whose id exists instead of answering 409"}
    )


class ImportResultSchema(ma.Schema):
    created = ma.fields.Integer()
    updated = ma.fields.Integer()
    ids = ma.fields.List(ma.fields.String(), metadata={"description": "every row's host id, in the file's order"})


def parse_rows(text: str) -> list[dict]:
    """The CSV's rows as HostSchema fields; row numbers count data rows from 1.

    Raises:
        ApiError: a bad header, or every bad row's number and field (400).
    """
    reader = csv.DictReader(io.StringIO(text), restkey="__extra__")
    header = [c.strip() for c in reader.fieldnames or []]
    unknown = [c for c in header if c not in COLUMNS]
    if "hostname" not in header or unknown or len(set(header)) != len(header):
        raise ApiError(
            f"the first line must name the columns: hostname (required), then any of {', '.join(COLUMNS[1:])}",
            {"header": header, "unknown_columns": unknown},
        )
    reader.fieldnames = header
    rows, errors, seen = [], [], {}
    for number, raw in enumerate(reader, start=1):
        fields, problems = _fields(raw)
        if not problems:
            try:
                fields = _SCHEMA.load(fields)
            except ma.ValidationError as exc:
                problems = [(field, _text(message)) for field, message in exc.messages.items()]
        if fields.get("id") in seen:
            problems.append(("id", f"{fields['id']} is also on row {seen[fields['id']]}"))
        elif fields.get("id"):
            seen[fields["id"]] = number
        errors.extend({"row": number, "field": field, "message": message} for field, message in problems)
        rows.append(fields)
    if errors:
        raise ApiError(
            f"{len({e['row'] for e in errors})} rows are invalid; nothing was imported",
            {"errors": errors[:MAX_ERRORS], "error_count": len(errors)},
        )
    if not rows:
        raise ApiError("the file has a header but no rows", {"header": header})
    return rows


def _fields(raw: dict) -> tuple[dict, list[tuple[str, str]]]:
    """One CSV row as the schema's input (empty cells left out); problems the schema cannot see."""
    if raw.get("__extra__"):
        return {}, [("row", f"{len(raw['__extra__'])} more fields than the header has columns")]
    cells = {k: (v or "").strip() for k, v in raw.items() if k in COLUMNS}
    fields = {k: v for k, v in cells.items() if v and k not in ("ips", "tags")}
    problems = []
    if cells.get("ips"):
        fields["ips"] = [ip.strip() for ip in cells["ips"].split(";") if ip.strip()]
    if cells.get("tags"):
        tags = {}
        for pair in filter(None, (p.strip() for p in cells["tags"].split(";"))):
            key, sep, value = pair.partition(":")
            if not sep:
                problems.append(("tags", f"{pair!r} is not key:value (tags are role:web;zone:us-east)"))
            tags[key.strip()] = value.strip()
        fields["tags"] = tags
    return fields, problems


def _text(message) -> str:
    """marshmallow's messages (a list, or a dict by index or key) as one line."""
    if isinstance(message, dict):
        return "; ".join(f"{k}: {_text(v)}" for k, v in message.items())
    return " ".join(str(m) for m in message) if isinstance(message, list) else str(message)


def _existing(ids: list[str]) -> dict[str, Host]:
    found = {}
    for start in range(0, len(ids), 500):  # well under every database's limit of bound parameters
        chunk = ids[start : start + 500]
        found |= {h.id: h for h in db.session.execute(db.select(Host).where(Host.id.in_(chunk))).scalars()}
    return found


@blp.route("/import")
class HostImport(MethodView):
    @accepts("text/csv")
    @blp.doc(requestBody={"required": True, "content": {"text/csv": {"schema": {"type": "string"}}}})
    @blp.arguments(ImportArgs, location="query")
    @blp.response(201, ImportResultSchema)
    def post(self, args):
        """Import hosts from CSV (admin): header hostname,ips,tags,exporter,id; ips a;b, tags role:web;zone:x."""
        if request.mimetype != "text/csv":
            raise ApiError("send the hosts as CSV (Content-Type: text/csv)", {"content_type": request.mimetype}, 415)
        request.max_content_length = current_app.config["HOSTS_IMPORT_MAX_BYTES"]
        try:
            text = request.get_data(as_text=False).decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise ApiError("the file is not UTF-8", {"byte": exc.start}) from None
        rows = parse_rows(text)
        existing = _existing([r["id"] for r in rows if "id" in r])
        if existing and not args["upsert"]:
            raise Conflict(
                f"{len(existing)} hosts exist already; send ?upsert=true to update them",
                {"existing": sorted(existing)[:MAX_ERRORS], "count": len(existing)},
            )
        created, row_hosts = [], []
        for fields in rows:
            host = existing.get(fields.get("id"))
            plain = {k: v for k, v in fields.items() if k != "exporter"}
            if host is None:
                host = Host(source="import", **{"tags": {}, **plain})
                created.append(host)
            else:
                for key, value in plain.items():  # an empty cell leaves the field as it is
                    setattr(host, key, value)
            set_exporter(host, fields)  # "push" or an address to scrape, as POST and PATCH take it
            row_hosts.append(host)
        db.session.add_all(created)
        db.session.flush()
        for host in created:
            host.id = host.id or f"{Host.prefix}-{host.pk:03d}"
        ids = [h.id for h in row_hosts]
        audit("host_import", None, created=len(created), updated=len(existing), upsert=args["upsert"])
        db.session.commit()
        targets_changed()
        return {"created": len(created), "updated": len(existing), "ids": ids}
