"""The fleet's process-masking policy (REQ-BE-PRIV-002): an admin's regex lists, applied wherever names show.

Stored as one settings row; agents get it with every heartbeat's answer and
mask before sending; the gateway masks pushed points at ingest (agents from
before the policy, or that ignore it) and masks again on reading top-N and
exports, for series stored before a rule was added or scraped from an
exporter without ``--mask-process``. Each worker re-reads the row at most
every PROCESS_MASKING_CACHE_S (5 s): a change reaches every worker within it.
"""

from __future__ import annotations

import time

import marshmallow as ma
from flask import current_app, g
from flask.views import MethodView

from exporter.masking import ProcessMasking, check_patterns
from gateway.auth import ADMIN, access, audit
from gateway.db import Setting, db
from gateway.errors import Blueprint

blp = Blueprint("privacy", __name__, url_prefix="/api/v1/privacy", description="Process-name masking (PRIV-002)")

NAME = "process-masking"


class Patterns(ma.fields.List):
    def __init__(self, **kwargs):
        super().__init__(ma.fields.String(), load_default=list, **kwargs)

    def _deserialize(self, value, attr, data, **kwargs):
        patterns = super()._deserialize(value, attr, data, **kwargs)
        try:
            return check_patterns(patterns)
        except ValueError as exc:
            raise ma.ValidationError(str(exc)) from None


class PolicySchema(ma.Schema):
    names = Patterns(metadata={"description": 'regexes (whole name) of command names shown as "masked"'})
    users = Patterns(metadata={"description": 'regexes (whole name) of users shown as "masked"'})


def policy() -> dict:
    """The policy as stored: ``{"names": [...], "users": [...]}``."""
    row = db.session.get(Setting, NAME)
    value = row.value if row else {}
    return {"names": list(value.get("names", [])), "users": list(value.get("users", []))}


def masking() -> ProcessMasking:
    """This worker's matcher for the current policy, re-read from the DB every PROCESS_MASKING_CACHE_S."""
    cached = current_app.extensions.get("process_masking")
    now = time.monotonic()
    if cached is None or now >= cached[0]:
        current = policy()
        cached = (
            now + current_app.config["PROCESS_MASKING_CACHE_S"],
            ProcessMasking(current["names"], current["users"]),
        )
        current_app.extensions["process_masking"] = cached
    return cached[1]


@blp.route("/process-masking")
class ProcessMaskingPolicy(MethodView):
    @access(ADMIN)
    @blp.response(200, PolicySchema)
    def get(self):
        """The process-masking policy (admins)."""
        return policy()

    @blp.arguments(PolicySchema)
    @blp.response(200, PolicySchema)
    def put(self, body):
        """Replace the policy (admin, audited); agents apply it at their next heartbeat, the gateway within 5 s."""
        row = db.session.get(Setting, NAME) or Setting(name=NAME)
        row.value, row.updated_by = {"names": body["names"], "users": body["users"]}, g.principal.id
        db.session.add(row)
        audit("process_masking_update", NAME, **row.value)
        db.session.commit()
        current_app.extensions.pop("process_masking", None)  # this worker at once; the others within the cache
        return row.value
