"""Seed 000's alerts API (``/api/alerts…``): its AlertRule and AlertEvent over the §8.5 rules and events.

An AlertRule ``{metric: "gpu_utilization", condition: "gt", threshold: 85,
duration: 300, nodeFilter: "gpu-.*"}`` is stored as the §8.5 rule
``gpu.utilization > 85`` for ``5m`` with scope ``{"hosts": "gpu-.*"}`` (the
regex checked as RE2 and quoted into the PromQL, never pasted), through the
same functions as /api/v1/alerts/rules: it is live once the answer comes, and
listed there too. Same auth, roles and error shape as /api/v1.
"""

from __future__ import annotations

import marshmallow as ma
from flask import jsonify
from flask.views import MethodView

from gateway.alert_rules import create_rule, delete_rule, get_rule, update_rule
from gateway.db import AlertEvent, AlertRuleRow, db
from gateway.errors import Blueprint
from gateway.schemas import ChangeSchema, utc_text
from rules_compiler.alerts import Condition, parse_duration, parse_expression, parse_scope
from rules_compiler.catalog import CATALOG

blp = Blueprint("compat-alerts", __name__, url_prefix="/api/alerts", description="Seed 000's API: alert rules, history")

LIST = {"type": "array", "items": {"type": "object"}}  # the answers' shape, for the OpenAPI document
CONDITIONS = {"gt": ">", "lt": "<", "eq": "=="}
# Seed 000 names metrics with underscores (gpu_utilization); the catalog, with dots.
METRICS = {name.replace(".", "_"): name for name in CATALOG}


def _metric(value: str) -> None:
    if value not in METRICS and value not in CATALOG:
        raise ma.ValidationError(f"unknown metric {value!r}; valid: {', '.join(sorted(METRICS))}")


class SeedRuleSchema(ma.Schema):
    name = ma.fields.String(required=True, validate=ma.validate.Length(min=1, max=200))
    metric = ma.fields.String(
        required=True,
        validate=_metric,
        metadata={
            "enum": sorted((set(METRICS) | set(CATALOG)) - {"cpu.core", "cpu_core"}),
            "example": "gpu_utilization",
        },
    )
    condition = ma.fields.String(required=True, validate=ma.validate.OneOf(list(CONDITIONS)))
    threshold = ma.fields.Float(required=True, allow_nan=False)
    duration = ma.fields.Integer(load_default=0, validate=ma.validate.Range(min=0, max=7 * 86400))  # seconds
    nodeFilter = ma.fields.String(
        allow_none=True, validate=ma.validate.Length(max=500), metadata={"description": "RE2 regex of node ids"}
    )
    enabled = ma.fields.Boolean(load_default=True)


class SeedRuleUpdateSchema(SeedRuleSchema):
    """Any subset of the fields (loaded with ``partial=True``)."""


class AlertHistoryArgs(ma.Schema):
    ruleId = ma.fields.String()
    nodeId = ma.fields.String()
    limit = ma.fields.Integer(load_default=100, validate=ma.validate.Range(min=1, max=1000))


def as_rule_fields(seed: dict, tags: dict | None = None) -> dict:
    """A seed 000 AlertRule as the §8.5 rule's fields; ``tags``: the scope's tags it keeps (seed 000 has none)."""
    scope = {"tags": tags or {}, **({"hosts": seed["nodeFilter"]} if seed.get("nodeFilter") else {})}
    fields = {
        "name": seed["name"],
        "duration": f"{seed['duration']}s" if seed["duration"] else "static",
        "scope": scope,
        "enabled": seed["enabled"],
    }
    if seed["metric"] is not None and seed["condition"] is not None and seed["threshold"] is not None:
        metric = METRICS.get(seed["metric"], seed["metric"])
        threshold = float(seed["threshold"])
        text = f"{int(threshold)}" if threshold.is_integer() else repr(threshold)
        fields["expression"] = f"{metric} {CONDITIONS[seed['condition']]} {text}"
    return fields


def as_seed(row: AlertRuleRow) -> dict:
    """A §8.5 rule as seed 000's AlertRule; a rule it cannot say (AND/OR, >=, tags) has null metric/condition."""
    terms = [t for conj in parse_expression(row.expression).any_of for t in conj]
    ops = {v: k for k, v in CONDITIONS.items()}
    simple = len(terms) == 1 and isinstance(terms[0], Condition) and terms[0].op in ops
    hosts = [t.value for t in parse_scope(row.scope) if t.op == "=~"]
    return {
        "id": row.id,
        "name": row.name,
        "metric": terms[0].metric.replace(".", "_") if simple else None,
        "condition": ops[terms[0].op] if simple else None,
        "threshold": terms[0].threshold if simple else None,
        "duration": parse_duration(row.duration),
        "nodeFilter": hosts[0] if hosts else None,
        "enabled": row.enabled,
        "createdAt": utc_text(row.created_at),
        "expression": row.expression,  # the rule as /api/v1 shows it
    }


@blp.route("")
class SeedRules(MethodView):
    @blp.doc(
        responses={
            "200": {"description": "the rules, seed 000's shape", "content": {"application/json": {"schema": LIST}}}
        }
    )
    def get(self):
        """Every alert rule, as seed 000's AlertRule."""
        rows = db.session.execute(db.select(AlertRuleRow).order_by(AlertRuleRow.pk)).scalars()
        return jsonify([as_seed(r) for r in rows])

    @blp.doc(
        responses={
            "201": {
                "description": "the rule, seed 000's shape",
                "content": {"application/json": {"schema": {"type": "object"}}},
            }
        }
    )
    @blp.arguments(SeedRuleSchema)
    def post(self, body):
        """Create a rule (admin); answers once Prometheus evaluates it."""
        return as_seed(create_rule(as_rule_fields(body))), 201


@blp.route("/history")
class SeedHistory(MethodView):
    @blp.arguments(AlertHistoryArgs, location="query")
    @blp.doc(
        responses={
            "200": {"description": "alert events, newest first", "content": {"application/json": {"schema": LIST}}}
        }
    )
    def get(self, args):
        """Alert firings, newest first, as seed 000's AlertEvent."""
        query = db.select(AlertEvent).order_by(AlertEvent.started_at.desc(), AlertEvent.pk.desc())
        if "ruleId" in args:
            query = query.filter_by(rule_id=args["ruleId"])
        if "nodeId" in args:
            query = query.filter_by(host_id=args["nodeId"])
        events = db.session.execute(query.limit(args["limit"])).scalars()
        return jsonify(
            [
                {
                    "id": e.pk,
                    "ruleId": e.rule_id,
                    "nodeId": e.host_id,
                    "value": e.value,
                    "firedAt": utc_text(e.started_at),
                    "resolvedAt": utc_text(e.ended_at) if e.ended_at else None,
                }
                for e in events
            ]
        )


@blp.route("/<rule_id>")
class SeedRuleById(MethodView):
    @blp.arguments(SeedRuleUpdateSchema(partial=True))
    def put(self, body, rule_id):
        """Change a rule (admin; any of its fields); answers once Prometheus runs the new version."""
        row = get_rule(rule_id)
        merged = {**as_seed(row), **body}
        fields = as_rule_fields(merged, row.scope.get("tags", {}))
        # A rule seed 000 cannot say (AND/OR, >=) keeps its expression unless all three are given anew.
        return as_seed(update_rule(rule_id, fields))

    @blp.response(200, ChangeSchema)
    def delete(self, rule_id):
        """Delete a rule (admin); its open events end."""
        delete_rule(rule_id)
        return {"id": rule_id, "status": "deleted"}
