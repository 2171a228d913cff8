"""Alert rules (§8.5): CRUD of rules compiled into Prometheus and Alertmanager.

A rule write answers only once the rule is live in Prometheus: the handler
holds the deploy lock, changes the rows, compiles every rule, and installs
them through ``rules_compiler.deploy``; the DB commits only if that worked.
"""

from __future__ import annotations

import secrets

import marshmallow as ma
from flask import current_app, g
from flask.views import MethodView

from gateway.alert_channels import (
    channel_warnings,
    default_channels,
    delivery,
    normalise_channels,
    notification_templates,
)
from gateway.alert_events import open_events, resolve
from gateway.auth import audit
from gateway.channel_policy import mask_channel
from gateway.db import AlertEvent, AlertRuleRow, Setting, add_with_id, db, utcnow
from gateway.errors import Blueprint, NotFound
from gateway.metrics import METRIC_NAME
from gateway.schemas import ChangeSchema, Page, PageArgs, Pattern, UtcDateTime, page
from rules_compiler.alertmanager import render_alertmanager_config
from rules_compiler.alerts import (
    GROUPINGS,
    SEVERITIES,
    STARTER_RULES,
    STARTER_RULES_DISABLED,
    RuleInvalid,
    format_duration,
    parse_duration,
    parse_expression,
    parse_scope,
    render_alert_rules,
    scope_as_json,
    to_rule,
)

blp = Blueprint("alert-rules", __name__, url_prefix="/api/v1/alerts", description="Alert rules")

# The settings row that says §9's starter rules were installed once: rules an admin deleted stay deleted.
STARTER_RULES_SETTING = "starter-rules"


# What the rules compiler parses, as patterns the OpenAPI document can show (JSON Schema's regex
# dialect: no inline flags, and \s is not Python's). A little stricter than the parser in places
# (single spaces, durations within their 7-day bound); never looser.
_WORD = lambda word: "".join(f"[{c.upper()}{c}]" for c in word)  # noqa: E731 - [Oo][Rr] for "or"
DURATION = r"(?:[0-9]{1,4}[sm]|[0-9]{1,2}h|[0-7]d)"  # at most 7d, as parse_duration wants
_NUMBER = r"[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]{1,2})?"
_TERM = (
    rf"(?:{METRIC_NAME[1:-1]} *(?:>=|<=|==|!=|>|<) *{_NUMBER}"
    rf"|{_WORD('no')} +{_WORD('heartbeat')} +{_WORD('for')} +(?:[1-9][0-9]{{0,3}}[sm]|[1-9][0-9]?h|[1-7]d))"
)
EXPRESSION = rf"^ *{_TERM}(?: +(?:{_WORD('or')}|{_WORD('and')}) +{_TERM})* *$"
# Channels: what amtool (Go's url.Parse and mail.ParseAddress) takes, in ASCII. Found by fuzzing:
# control characters, a bad host or a stray % passed the compiler's looser checks and amtool refused
# the whole file. No { or } in addresses: Go templates would read them.
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOST = rf"(?:{_LABEL}(?:\.{_LABEL})*|\[[0-9A-Fa-f:.]+\])(?::[0-9]{{1,5}})?"
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`|~-]+"
_EMAIL = rf"{_ATOM}(?:\.{_ATOM})*@{_LABEL}(?:\.{_LABEL})+"
_URL_TAIL = r"(?:[/?](?:[!#$&-~]|%[0-9A-Fa-f]{2})*)?"  # printable ASCII but space, " and a bare %
_SLACK_TAIL = r"(?:[/?](?:[!$&-~]|%[0-9A-Fa-f]{2})*)?"  # and no #: it starts the channel
CHANNEL = (
    rf"^(?:email:{_EMAIL}|webhook:https?://{_HOST}{_URL_TAIL}"
    rf"|slack:https?://{_HOST}{_SLACK_TAIL}(?:#[A-Za-z0-9_.-]{{1,80}})?)$"
)
SCOPE_DOC = {
    "anyOf": [
        {
            "type": "object",
            "properties": {
                "tags": {
                    "type": "object",
                    "patternProperties": {"^[a-zA-Z_][a-zA-Z0-9_]*$": {"type": "string"}},
                    "additionalProperties": False,
                }
            },
            "additionalProperties": False,
        },
        {
            "type": "string",
            "pattern": r"^(?:|all|[a-zA-Z_][a-zA-Z0-9_]* *!?=[^,\n]*(?:,[a-zA-Z_][a-zA-Z0-9_]* *!?=[^,\n]*)*)$",
        },
    ],
    "description": 'all hosts if empty; {"tags": {"role": "web", "zone": "!=us-east"}} or "role=web,zone!=us-east"',
}


class RuleSchema(ma.Schema):
    id = ma.fields.String(dump_only=True)
    name = ma.fields.String(required=True, validate=ma.validate.Length(min=1, max=200))
    expression = ma.fields.String(
        required=True,
        validate=ma.validate.Length(min=1, max=2000),
        # Checked by the compiler, whose 400 names the unknown metric and the valid ones; the pattern says the same.
        metadata={"pattern": EXPRESSION, "example": "cpu.utilization > 90 OR mem.used_pct > 90"},
    )
    duration = ma.fields.String(
        load_default="5m",
        validate=Pattern(rf"^ *(?:static|{DURATION}) *$", error="static, or a number and s, m, h or d, at most 7d"),
        metadata={"description": "static, or 30s / 10m / 1h / 1d, at most 7d"},
    )
    scope = ma.fields.Raw(
        load_default=dict,
        allow_none=True,
        metadata={**SCOPE_DOC, "example": {"tags": {"role": "web", "zone": "!=us-east"}}},
    )
    channels = ma.fields.List(
        ma.fields.String(
            validate=[
                ma.validate.Length(max=2000),
                Pattern(CHANNEL, error="not email:ADDRESS, webhook:URL or slack:URL[#channel]"),
            ]
        ),
        load_default=list,
        validate=ma.validate.Length(max=20),
        metadata={"example": ["email:ops@example.com", "slack:https://hooks.slack.com/services/T/B/X#ops"]},
    )
    severity = ma.fields.String(load_default="warning", validate=ma.validate.OneOf(SEVERITIES))
    enabled = ma.fields.Boolean(load_default=True)
    group_by = ma.fields.String(
        load_default="host",
        validate=ma.validate.OneOf(GROUPINGS),
        metadata={"description": "host: a notification per host; rule: one listing every host (alert storms)"},
    )
    created_at = UtcDateTime(dump_only=True)
    updated_at = UtcDateTime(dump_only=True)
    warnings = ma.fields.Function(
        lambda row: channel_warnings(row.channels),
        dump_only=True,
        metadata={"description": "channels this configuration cannot deliver to (e.g. email without SMTP)"},
    )

    @ma.post_dump
    def _mask_for_viewers(self, data: dict, **_) -> dict:
        # A Slack URL is its own credential: only admins, who may change it, see it whole.
        principal = g.get("principal")
        if "channels" in data and (principal is None or principal.role != "admin"):
            data["channels"] = [mask_channel(c) for c in data["channels"]]
        return data


class RuleChangeSchema(ChangeSchema):
    warnings = ma.fields.List(ma.fields.String(), metadata={"description": "as in the rule: undeliverable channels"})


class RuleUpdateSchema(RuleSchema):
    """Any subset of a rule's fields (loaded with ``partial=True``: nothing is required or defaulted)."""


class RuleListSchema(Page):
    rules = ma.fields.List(ma.fields.Nested(RuleSchema))


class RuleBatchSchema(ma.Schema):
    rules = ma.fields.List(ma.fields.Nested(RuleSchema), required=True, validate=ma.validate.Length(min=1, max=5000))


class BatchStatusSchema(ma.Schema):
    ids = ma.fields.List(ma.fields.String())
    status = ma.fields.String()


def get_rule(rule_id: str) -> AlertRuleRow:
    row = db.session.execute(db.select(AlertRuleRow).filter_by(id=rule_id)).scalar_one_or_none()
    if row is None:
        raise NotFound(f"no alert rule {rule_id}", {"id": rule_id})
    return row


def _normalise(body: dict) -> dict:
    """The fields as they will be stored, after parsing each the way the compiler will.

    Raises:
        RuleInvalid: a field that would not compile (the API answers 400 naming it).
    """
    out = dict(body)
    if "expression" in body:
        out["expression"] = str(parse_expression(body["expression"]))
    if "duration" in body:
        seconds = parse_duration(body["duration"])
        out["duration"] = "static" if seconds == 0 else format_duration(seconds)
    if "scope" in body:
        out["scope"] = scope_as_json(parse_scope(body["scope"]))
    if "channels" in body:
        out["channels"] = normalise_channels(body["channels"])
    return out


def publish() -> None:
    """Compile every rule in the session (committed or not) and install it; call under the deploy lock.

    Raises:
        DeployFailed: nothing changed in Prometheus or Alertmanager.
    """
    rows = db.session.execute(db.select(AlertRuleRow)).scalars().all()
    rules = [to_rule(r) for r in rows if r.enabled]
    revision = secrets.token_hex(6)
    interval = int(current_app.config["ALERT_EVALUATION_INTERVAL_S"])
    deployer = current_app.extensions["alert_deployer"]
    templates = notification_templates()
    deployer.deploy(
        render_alert_rules(
            rules, interval, revision, current_app.config["RULES_DIALECT"], deployer.group_name(interval)
        ),
        render_alertmanager_config(rules, delivery(str(deployer.templates_path(templates)))),
        revision,
        len(rules),
        templates,
    )


def install_rules_on_start() -> None:
    """On a gateway's start: §9's starter set the first time, then install what the DB holds."""
    deployer = current_app.extensions["alert_deployer"]
    with deployer.locked():
        if db.session.get(Setting, STARTER_RULES_SETTING) is None:
            channels = default_channels()
            starters = [(rule, True) for rule in STARTER_RULES] + [(rule, False) for rule in STARTER_RULES_DISABLED]
            for (rule_id, name, expression, duration, scope, severity), enabled in starters:
                if db.session.execute(db.select(AlertRuleRow.pk).filter_by(id=rule_id)).first() is None:
                    body = _normalise(
                        {"expression": expression, "duration": duration, "scope": scope, "channels": channels}
                    )
                    add_with_id(AlertRuleRow(name=name, severity=severity, enabled=enabled, **body), rule_id)
            db.session.add(Setting(name=STARTER_RULES_SETTING, value={"installed": True}))
        publish()
        db.session.commit()


def create_rule(body: dict) -> AlertRuleRow:
    """Add a rule (the API's fields) and put it in force; answers once Prometheus evaluates it."""
    fields = _normalise(body)
    with current_app.extensions["alert_deployer"].locked():
        row = add_with_id(AlertRuleRow(**fields))
        publish()
        audit("alert_rule_create", row.id, name=row.name, expression=row.expression)
        db.session.commit()
    return row


def update_rule(rule_id: str, body: dict) -> AlertRuleRow:
    """Change any subset of a rule's fields; answers once Prometheus runs the new version."""
    fields = _normalise(body)
    with current_app.extensions["alert_deployer"].locked():
        row = get_rule(rule_id)
        for key, value in fields.items():
            setattr(row, key, value)
        row.updated_at = utcnow()
        publish()
        # A Slack URL is its own credential: the audit log keeps channels masked.
        masked = (
            {**fields, "channels": [mask_channel(c) for c in fields["channels"]]} if "channels" in fields else fields
        )
        audit("alert_rule_update", row.id, **masked)
        db.session.commit()
    return row


def delete_rule(rule_id: str) -> None:
    """Delete a rule; its open events end."""
    with current_app.extensions["alert_deployer"].locked():
        row = get_rule(rule_id)
        db.session.delete(row)
        db.session.flush()
        publish()
        for event in open_events(db.select(AlertEvent).filter_by(rule_id=rule_id)):
            resolve(event, utcnow())
        audit("alert_rule_delete", rule_id, name=row.name)
        db.session.commit()


@blp.route("/rules")
class Rules(MethodView):
    @blp.arguments(PageArgs, location="query")
    @blp.response(200, RuleListSchema)
    def get(self, args):
        """List alert rules."""
        rows, meta = page(db.select(AlertRuleRow).order_by(AlertRuleRow.pk), args, db.session)
        return {"rules": rows, **meta}

    @blp.arguments(RuleSchema)
    @blp.response(201, RuleChangeSchema)
    def post(self, body):
        """Create a rule (admin); answers once Prometheus evaluates it."""
        row = create_rule(body)
        return {"id": row.id, "status": "created", "warnings": channel_warnings(row.channels)}


@blp.route("/rules/batch")
class RuleBatch(MethodView):
    @blp.arguments(RuleBatchSchema)
    @blp.response(201, BatchStatusSchema)
    def post(self, body):
        """Create many rules at once (admin): all or none, with one reload (rules as code, imports)."""
        normalised = []
        for index, rule in enumerate(body["rules"]):
            try:
                normalised.append(_normalise(rule))
            except RuleInvalid as exc:
                exc.details["index"] = index  # which of the batch, so the caller can fix it
                raise
        with current_app.extensions["alert_deployer"].locked():
            rows = [add_with_id(AlertRuleRow(**fields)) for fields in normalised]
            publish()
            audit("alert_rule_create", None, ids=[r.id for r in rows], count=len(rows))
            db.session.commit()
        return {"ids": [r.id for r in rows], "status": "created"}


@blp.route("/rules/<rule_id>")
class RuleById(MethodView):
    @blp.response(200, RuleSchema)
    def get(self, rule_id):
        """One alert rule."""
        return get_rule(rule_id)

    @blp.arguments(RuleUpdateSchema(partial=True))
    @blp.response(200, RuleChangeSchema)
    def put(self, body, rule_id):
        """Change a rule (admin; any subset of its fields); answers once Prometheus runs the new version."""
        row = update_rule(rule_id, body)
        return {"id": rule_id, "status": "updated", "warnings": channel_warnings(row.channels)}

    @blp.response(200, ChangeSchema)
    def delete(self, rule_id):
        """Delete a rule (admin); its open events end."""
        delete_rule(rule_id)
        return {"id": rule_id, "status": "deleted"}
