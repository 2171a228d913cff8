"""Schema pieces every resource shares: limit/offset pagination (REQ-API-006), UTC times, a write's answer."""

from __future__ import annotations

import functools
import time
from datetime import UTC, datetime

import marshmallow as ma
import orjson
from sqlalchemy import func, select


class Pattern(ma.validate.Regexp):
    """The whole value must match; apispec shows the regex as the OpenAPI ``pattern``.

    Regexp's ``match`` lets "name\\n" through a ``…$`` pattern (Python's $ matches before a final
    newline, JSON Schema's does not): what the document refuses, the API must refuse too.
    """

    def __call__(self, value):
        if not isinstance(value, str) or self.regex.fullmatch(value) is None:
            raise ma.ValidationError(self._format_error(value))
        return value


MAX_OFFSET = 10**9  # far past any list here, far below SQLite's 2**63 (past it: OverflowError, a 500)


def accepts(*mimetypes: str):
    """Mark a view method that takes a body other than JSON (e.g. text/csv); every other write takes JSON."""

    def mark(fn):
        fn.body_types = mimetypes
        return fn

    return mark


class PageArgs(ma.Schema):
    limit = ma.fields.Integer(load_default=50, validate=ma.validate.Range(min=1, max=1000))
    offset = ma.fields.Integer(load_default=0, validate=ma.validate.Range(min=0, max=MAX_OFFSET))


class Page(ma.Schema):
    total = ma.fields.Integer()
    limit = ma.fields.Integer()
    offset = ma.fields.Integer()


class ChangeSchema(ma.Schema):
    """The answer to a write: which item, and what became of it ("created", "deleted", …)."""

    id = ma.fields.String()
    status = ma.fields.String()


def page(query, args: dict, session) -> tuple[list, dict]:
    """Run ``query`` (a select) for one page; return the rows and the total/limit/offset fields."""
    total = session.execute(select(func.count()).select_from(query.subquery())).scalar_one()
    rows = session.execute(query.limit(args["limit"]).offset(args["offset"])).scalars().all()
    return rows, {"total": total, "limit": args["limit"], "offset": args["offset"]}


@functools.lru_cache(maxsize=256)
def _day_text(day: int) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(day * 86400))


@functools.lru_cache(maxsize=65536)
def unix_text(ts: int) -> str:
    # Series answers format thousands of points, mostly the same ones as the previous answer's
    # (a window sliding by one step): memoised, and without gmtime+strftime per point.
    day, second = divmod(ts, 86400)
    hour, rest = divmod(second, 3600)
    return f"{_day_text(day)}T{hour:02d}:{rest // 60:02d}:{rest % 60:02d}Z"


class UtcDateTime(ma.fields.DateTime):
    """RFC 3339 in UTC with a Z, as every time in the API (SQLite hands back naive UTC datetimes)."""

    def _serialize(self, value, attr, obj, **kwargs):
        return None if value is None else utc_text(value)


def utc_text(value: datetime | float) -> str:
    """A datetime (naive ones are UTC) or a Unix time as RFC 3339 UTC, e.g. 2025-11-13T08:50:00Z."""
    if not isinstance(value, datetime):
        return unix_text(int(value))
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def fast_json(payload: dict, status: int = 200):
    """A JSON response built without a schema pass.

    For the few answers of thousands of points or hundreds of hosts, where
    marshmallow's dump costs more than everything else together; their schema
    still documents them in the OpenAPI spec, and tests check their shape.
    """
    from flask import current_app

    return current_app.response_class(orjson.dumps(payload), status, mimetype="application/json")
