"""What the gateway tells agents (REQ-AGENT-003, §10.1): the collection interval, set once for the fleet.

Agents hear it in the answer to their heartbeat, so a change reaches every
agent within one heartbeat interval (30 s) without the gateway reaching out
to hosts, which may sit behind NAT or a firewall that lets them out only. A
setting an admin has not set leaves each agent its own (flag or YAML file),
and clearing it gives agents back their own.
"""

from __future__ import annotations

import marshmallow as ma
from flask import g
from flask.views import MethodView

from gateway.auth import audit
from gateway.db import Setting, db
from gateway.errors import Blueprint

blp = Blueprint("agents", __name__, url_prefix="/api/v1/agents", description="Settings pushed to agents")

NAME = "agent"


class AgentSettingsSchema(ma.Schema):
    interval_s = ma.fields.Float(
        allow_none=True,
        # At most 30 s: every 1-minute average still gets a sample, every 5-minute look-back finds one.
        validate=ma.validate.Range(min=1, max=30),
        metadata={"description": "seconds between samples (1-30); unset: each agent's own (default 5)"},
    )
    heartbeat_s = ma.fields.Float(
        allow_none=True,
        # Under 2 min with room to spare: a host turns crit after 2 min without one.
        validate=ma.validate.Range(min=5, max=60),
        metadata={"description": "seconds between heartbeats (5-60); unset: each agent's own (default 30)"},
    )


def agent_settings() -> dict:
    """The settings admins have set, for heartbeat answers: unset ones are absent, not defaults."""
    row = db.session.get(Setting, NAME)
    return dict(row.value) if row else {}


@blp.route("/config")
class AgentConfig(MethodView):
    @blp.response(200, AgentSettingsSchema)
    def get(self):
        """What agents are told with every heartbeat; absent fields leave each agent its own setting."""
        return agent_settings()

    @blp.arguments(AgentSettingsSchema)
    @blp.response(200, AgentSettingsSchema)
    def put(self, body):
        """Set what agents are told (admin); every agent applies it at its next heartbeat (≤ 30 s).

        The body replaces the settings: a field left out or null gives agents back their own.
        """
        settings = {k: v for k, v in body.items() if v is not None}
        row = db.session.get(Setting, NAME) or Setting(name=NAME)
        row.value, row.updated_by = settings, g.principal.id
        db.session.add(row)
        audit("agent_config_update", NAME, **settings)
        db.session.commit()
        return settings
