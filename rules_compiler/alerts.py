"""Alert rules of the spec (§5.4, §9) ⇒ Prometheus alerting rules: parsing, validation and rendering.

Pure: text and objects in, YAML text out. The gateway validates what a user
sends with the ``parse_*`` functions here, so a rule that passes them always
compiles; ``rules_compiler.deploy`` installs the output.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import yaml

from rules_compiler.catalog import CATALOG, UnknownMetric, resolve
from rules_compiler.promql import check_re2, is_label_name, quote, seconds

SEVERITIES = ("info", "warning", "critical")
GROUPINGS = ("host", "rule")  # one notification per host and rule, or one per rule listing its hosts
OPERATORS = (">=", "<=", "==", "!=", ">", "<")
GROUP = "fleet-alerts"
# Where in the layer's interval Prometheus starts the alert group (rules_compiler/group_phase.py): after
# the layer's group, whose evaluation at 10,000 hosts takes 4-5 s of 15 and sets off the raw tier's garbage
# collection, so the rules meet neither. Prometheus starts a group at a phase hashed from its file's path
# and name, so the name (GROUP or GROUP-N) sets it; left to chance the starter rules ran inside the layer
# on 3 installs in 10, at twice their median and up to 1.4-1.7 s (docs/benchmarks.md, runs J6 and K1).
# Late in the interval, not half-way: where the machine is short of CPU the layer's round runs longer
# (7-12 s of 15 at 10,000 hosts on one half as fast, runs L3 / L4), and the group, started 7.5-8.2 s in,
# ran inside it and beside the summary that follows it (up to 2.2-2.8 s). The rules take 0.2-0.7 s there,
# so starting by 90 % they end before the next round.
LAG = (0.75, 0.9)
_NAMES = re.compile(rf"^{re.escape(GROUP)}(-[0-9]+)?$")
# The labels that name an alert's subject beyond the host: they must survive every
# aggregation, and a critical alert inhibits a warning one only on the same subject.
SUBJECT_LABELS = tuple(sorted({label for m in CATALOG.values() for label in m.labels}))

_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_CONDITION = re.compile(rf"^([a-z][a-z0-9_]*(?:\.[a-z0-9_]+)+)\s*(>=|<=|==|!=|>|<)\s*({_NUMBER})$")
_HEARTBEAT = re.compile(r"^no\s+heartbeat\s+for\s+(\S+)$", re.IGNORECASE)
_OR = re.compile(r"\s+or\s+", re.IGNORECASE)
_AND = re.compile(r"\s+and\s+", re.IGNORECASE)
_CHANNEL = re.compile(r"^(email|webhook|slack):(.+)$", re.DOTALL)
_EMAIL = re.compile(r"^[^@\s,<>\"{}]+@[^@\s,<>\"{}]+\.[^@\s,<>\"{}]+$")  # no {}: `to:` is a Go template
_URL = re.compile(r"^https?://[^\s\"]+$")


class RuleInvalid(ValueError):
    """A rule field that cannot compile; ``field`` names it for the API's error details."""

    def __init__(self, field_name: str, message: str, **details):
        super().__init__(message)
        self.field = field_name
        self.details = {"field": field_name, **details}


@dataclass(frozen=True)
class Condition:
    """``cpu.utilization > 90``: one catalog metric against a number."""

    metric: str
    op: str
    threshold: float

    def promql(self, hosts: str = "") -> str:
        entry, matchers = resolve(self.metric)
        inner = ",".join([f"{k}={quote(v)}" for k, v in matchers.items()] + ([hosts] if hosts else []))
        series = f"{entry.record}{{{inner}}}" if inner else entry.record
        return f"{series} {self.op} {_number(self.threshold)}"

    def __str__(self) -> str:
        return f"{self.metric} {self.op} {_number(self.threshold)}"


def _number(x: float) -> str:
    """The shortest text that reads back as ``x``: ``90``, ``0.5``, ``1e-06``."""
    return str(int(x)) if x.is_integer() and abs(x) < 1e15 else repr(x)


@dataclass(frozen=True)
class Heartbeat:
    """``no heartbeat for 2m``: the host's exporter is not scraped, or its agent stopped pushing."""

    silent_s: int

    def promql(self, hosts: str = "") -> str:
        # Pulled hosts: no successful scrape in the whole window (value 0). Pushed
        # hosts: the gateway exports when each agent was last heard from (value: the
        # seconds of silence). The window is in the expression, so the rule's `for`
        # counts only what the duration adds beyond it.
        also, only = (f",{hosts}", f"{{{hosts}}}") if hosts else ("", "")
        return (
            f'max by (host_id) (max_over_time(up{{job="fleetwatch"{also}}}[{self.silent_s}s])) == 0 '
            f"or max by (host_id) (time() - fleet_host_last_seen_timestamp_seconds{only}) > {self.silent_s}"
        )

    def __str__(self) -> str:
        return f"no heartbeat for {format_duration(self.silent_s)}"


Term = Condition | Heartbeat


@dataclass(frozen=True)
class Expression:
    """An OR of ANDs of terms; AND binds tighter, as in PromQL and SQL."""

    any_of: tuple[tuple[Term, ...], ...]

    def metrics(self) -> list[str]:
        return sorted({t.metric for conj in self.any_of for t in conj if isinstance(t, Condition)})

    def promql(self, hosts: str = "") -> str:
        """The PromQL; ``hosts``, a matcher such as ``host_id=~"gpu-.*"``, narrows every selector."""

        # `and on(host_id)`: two metrics of one host meet even when one has more labels
        # (gpu_index, mountpoint); the left side's labels name the alert. `or` keeps the
        # first branch's series where both match, so one alert per subject, not two.
        # PromQL binds comparisons, then `and`, then `or`: only a heartbeat term (itself
        # an `or`) needs parentheses.
        def term(t: Term, alone: bool) -> str:
            return t.promql(hosts) if alone or isinstance(t, Condition) else f"({t.promql(hosts)})"

        alone = len(self.any_of) == 1 and len(self.any_of[0]) == 1
        return " or ".join(" and on(host_id) ".join(term(t, alone) for t in conj) for conj in self.any_of)

    def __str__(self) -> str:
        return " OR ".join(" AND ".join(str(t) for t in conj) for conj in self.any_of)


@dataclass(frozen=True)
class ScopeTerm:
    tag: str  # a host tag, or HOST_ID for the "hosts" regex
    op: str  # "=" or "!=" on a tag; "=~" on HOST_ID
    value: str


HOST_ID = "host_id"  # never a tag name (the gateway refuses it): a scope term on it is the "hosts" regex


@dataclass(frozen=True)
class Channel:
    kind: str  # "email" | "webhook" | "slack"
    target: str  # address or URL
    slack_channel: str | None = None

    def __str__(self) -> str:
        return f"{self.kind}:{self.target}" + (f"#{self.slack_channel}" if self.slack_channel else "")


@dataclass(frozen=True)
class AlertRule:
    """A rule as the compiler sees it: already parsed, so compiling it cannot fail."""

    id: str
    name: str
    expression: Expression
    duration_s: int
    scope: tuple[ScopeTerm, ...] = ()
    channels: tuple[Channel, ...] = ()
    severity: str = "warning"
    enabled: bool = True
    group_by: str = "host"


def parse_expression(text: str) -> Expression:
    """``cpu.utilization > 90 OR mem.used_pct > 90``, ``no heartbeat for 2m``.

    Raises:
        RuleInvalid: not of the grammar, or a metric not in the catalog.
    """
    text = " ".join(str(text).split())
    if not text:
        raise RuleInvalid("expression", "the expression is empty; write e.g. 'cpu.utilization > 90'")
    any_of = []
    for disjunct in _OR.split(text):
        terms = []
        for term in _AND.split(disjunct):
            terms.append(_parse_term(term.strip()))
        any_of.append(tuple(terms))
    return Expression(tuple(any_of))


def _parse_term(text: str) -> Term:
    beat = _HEARTBEAT.match(text)
    if beat:
        return Heartbeat(parse_duration(beat.group(1), field_name="expression", allow_static=False))
    m = _CONDITION.match(text)
    if not m:
        raise RuleInvalid(
            "expression",
            f"{text!r} is not '<metric> <op> <number>' (op one of {' '.join(OPERATORS)}) "
            "or 'no heartbeat for <duration>'; join conditions with OR / AND",
            term=text,
        )
    try:
        resolve(m.group(1))
    except UnknownMetric as exc:
        raise RuleInvalid("expression", str(exc), metric=m.group(1), valid=exc.valid) from None
    return Condition(m.group(1), m.group(2), float(m.group(3)))


def parse_duration(text: str, field_name: str = "duration", allow_static: bool = True) -> int:
    """``static`` (fire at once) → 0; ``30s``, ``10m``, ``1h``, ``1d`` → seconds.

    Raises:
        RuleInvalid: anything else.
    """
    text = str(text).strip()
    if allow_static and text == "static":
        return 0
    try:
        value = seconds(text)
    except ValueError:
        value = -1
    if value != int(value) or not 0 <= value <= 7 * 86400:
        raise RuleInvalid(
            field_name,
            f"{text!r} is not a duration: write 'static' or a number and s, m, h or d (e.g. 30s, 10m, 1h), at most 7d",
        )
    return int(value)


def format_duration(seconds: int) -> str:
    """The shortest of ``1d``/``2h``/``10m``/``30s`` that says ``seconds`` exactly."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def parse_scope(scope) -> tuple[ScopeTerm, ...]:
    """``{"tags": {"role": "web", "zone": "!=us-east"}}`` or ``"role=web,zone!=us-east"``; empty means all hosts.

    Raises:
        RuleInvalid: a tag name that is not a label name, or a term without ``=``.
    """
    if scope in (None, "", "all", {}):
        return ()
    if isinstance(scope, str):
        pairs = []
        for part in scope.split(","):
            m = re.match(r"^\s*([^=!\s]+)\s*(!=|=)(.*)$", part)
            if not m:
                raise RuleInvalid("scope", f"scope term {part!r} is not tag=value or tag!=value")
            pairs.append((m.group(1), m.group(2), m.group(3).strip()))
    elif isinstance(scope, dict) and set(scope) <= {"tags", "hosts"} and isinstance(scope.get("tags", {}), dict):
        pairs = []
        if scope.get("hosts"):
            hosts = scope["hosts"]
            try:
                pairs.append((HOST_ID, "=~", check_re2(hosts if isinstance(hosts, str) else "")))
            except ValueError as exc:
                raise RuleInvalid("scope", f"hosts: {exc}", hosts=hosts) from None
        for tag, value in scope.get("tags", {}).items():
            if not isinstance(value, str):
                raise RuleInvalid("scope", f"the value of tag {tag!r} must be a string", tag=tag)
            negated = value.startswith("!=")
            pairs.append((tag, "!=" if negated else "=", value[2:] if negated else value))
    else:
        raise RuleInvalid(
            "scope",
            'scope is {"tags": {"role": "web", "zone": "!=us-east"}, "hosts": "<regex of host ids>"}'
            ' or "role=web,zone!=us-east"',
        )
    for tag, _, _ in pairs:
        if not is_label_name(tag):
            raise RuleInvalid("scope", f"tag name {tag!r} must be letters, digits and _ (a Prometheus label name)")
    return tuple(ScopeTerm(tag, op, value) for tag, op, value in pairs)


def scope_as_json(scope: tuple[ScopeTerm, ...]) -> dict:
    out = {"tags": {t.tag: t.value if t.op == "=" else f"!={t.value}" for t in scope if t.op != "=~"}}
    hosts = [t.value for t in scope if t.op == "=~"]
    return {**out, "hosts": hosts[0]} if hosts else out


def parse_channel(text: str) -> Channel:
    """``email:ops@example.com``, ``webhook:https://…``, ``slack:https://hooks.slack.com/…#ops``.

    Raises:
        RuleInvalid: an unknown kind, a malformed address or URL.
    """
    m = _CHANNEL.match(str(text).strip())
    if not m:
        raise RuleInvalid("channels", f"channel {text!r} is not email:ADDRESS, webhook:URL or slack:URL[#channel]")
    kind, target = m.groups()
    slack_channel = None
    if kind == "slack" and "#" in target:
        target, slack_channel = target.rsplit("#", 1)
        slack_channel = "#" + slack_channel
    if kind == "email" and not _EMAIL.match(target):
        raise RuleInvalid("channels", f"{target!r} is not an email address", channel=text)
    if slack_channel is not None and not re.fullmatch(r"#[A-Za-z0-9_.-]{1,80}", slack_channel):
        raise RuleInvalid("channels", f"{slack_channel!r} is not a Slack channel name", channel=text)
    if kind in ("webhook", "slack") and not _URL.match(target):
        raise RuleInvalid("channels", f"{target!r} is not an http(s) URL", channel=text)
    return Channel(kind, target, slack_channel.removeprefix("#") if slack_channel else None)


def alert_expr(rule: AlertRule) -> str:
    """The rule's PromQL: the expression, narrowed to the hosts its scope names."""
    hosts = [t for t in rule.scope if t.op == "=~"]
    expr = rule.expression.promql(",".join(f"{t.tag}=~{quote(t.value)}" for t in hosts))
    if len(hosts) == len(rule.scope):
        return expr
    # Hosts join on fleet_host_info (exported by the gateway from its inventory).
    # "=" needs a host with that tag; "!=" only excludes hosts that have it, so a
    # host the gateway does not know yet is still watched.
    wanted = [t for t in rule.scope if t.op == "="]
    excluded = [t for t in rule.scope if t.op == "!="]
    out = f"({expr})"
    if wanted:
        inner = ",".join(f"{t.tag}={quote(t.value)}" for t in wanted)
        out += f" and on(host_id) fleet_host_info{{{inner}}}"
    for t in excluded:
        out += f" unless on(host_id) fleet_host_info{{{t.tag}={quote(t.value)}}}"
    return out


DIALECTS = ("prometheus", "vmalert")


def is_alert_group(name: str) -> bool:
    """Whether a rule group of that name is ours: GROUP, or GROUP-N named for its phase."""
    return _NAMES.match(name) is not None


def render_alert_rules(
    rules: list[AlertRule], evaluation_interval_s: int, revision: str, dialect: str = "prometheus", group: str = GROUP
) -> str:
    """The rule file of every enabled rule, one group evaluated every ``evaluation_interval_s``.

    ``revision`` is written into each rule's annotations so the deployer can tell,
    through Prometheus's API, that this exact file is the one in force. ``dialect``
    "vmalert" is the same file for vmalert 1.79, which refuses ``keep_firing_for``
    (docs/backends.md says what differs). ``group``: the group's name, GROUP or one
    is_alert_group accepts (the deployer's group_name, for its phase).
    """
    if not is_alert_group(group):
        raise ValueError(f"{group!r} is not an alert group's name")
    if dialect not in DIALECTS:
        raise ValueError(f"unknown rules dialect {dialect!r}; one of {DIALECTS}")
    compiled = [_alerting_rule(r, evaluation_interval_s, revision) for r in sorted(rules, key=lambda r: r.id)]
    if dialect == "vmalert":
        compiled = [_held_down(rule, evaluation_interval_s) for rule in compiled]
    groups = [{"name": group, "interval": f"{evaluation_interval_s}s", "rules": compiled}] if compiled else []
    header = "# Generated by the fleetwatch gateway from its alert rules: edit them through the API.\n"
    return header + yaml.safe_dump({"groups": groups}, sort_keys=False, allow_unicode=True, width=1 << 16)


def _alerting_rule(rule: AlertRule, evaluation_interval_s: int, revision: str) -> dict:
    # The rule id, not its free-text name, is the alertname: it is safe in every
    # label and routing matcher; the name travels in labels and annotations.
    value = '{{ $value | printf "%.4g" }}'
    return {
        "alert": rule.id,
        "expr": alert_expr(rule),
        "for": f"{_pending_s(rule)}s",
        # REQ-ALERTRULE-004: resolve only after two evaluations without the condition.
        "keep_firing_for": f"{2 * evaluation_interval_s}s",
        "labels": {
            "rule_id": rule.id,
            "rule_name": _template_literal(rule.name),
            "severity": rule.severity,
            "fleet_metrics": ",".join(rule.expression.metrics()) or "heartbeat",
        },
        "annotations": {
            "summary": f"{_template_literal(rule.name)} on {{{{ $labels.host_id }}}}",
            "description": f"{_template_literal(str(rule.expression))} (value {value})",
            "expression": _template_literal(str(rule.expression)),
            "value": "{{ $value }}",
            "fleet_revision": revision,
        },
    }


def _held_down(rule: dict, evaluation_interval_s: int) -> dict:
    """REQ-ALERTRULE-004 without ``keep_firing_for``: the condition as seen at any evaluation of the last two.

    A subquery stepped at the evaluation interval over two intervals (MetricsQL's
    windows are (t - d, t]) still holds a series when the condition held at the
    previous evaluation, so the alert resolves at the second evaluation without it.
    """
    out = {k: v for k, v in rule.items() if k != "keep_firing_for"}
    i = evaluation_interval_s
    out["expr"] = f"last_over_time(({rule['expr']})[{2 * i}s:{i}s])"
    return out


def _pending_s(rule: AlertRule) -> int:
    """How long the expression must hold before the alert fires (Prometheus's ``for``)."""
    beats = [t.silent_s for conj in rule.expression.any_of for t in conj if isinstance(t, Heartbeat)]
    if beats and len(beats) == sum(len(conj) for conj in rule.expression.any_of):
        return max(0, rule.duration_s - min(beats))  # "no heartbeat for 2m" already waited 2m
    return rule.duration_s


def _template_literal(text: str) -> str:
    """Text that Prometheus's Go templates print as-is: ``{{`` in a name must not run as a template."""
    if "{{" not in text and "}}" not in text:
        return text
    # A Go template string literal takes the same escapes as a PromQL one.
    return "{{ " + quote(text) + " }}"


def to_rule(row) -> AlertRule:
    """Parse a stored rule (anything with the API's fields) into the compiler's object."""
    return AlertRule(
        id=row.id,
        name=row.name,
        expression=parse_expression(row.expression),
        duration_s=parse_duration(row.duration),
        scope=parse_scope(row.scope),
        channels=tuple(parse_channel(c) for c in row.channels or ()),
        severity=row.severity,
        enabled=row.enabled,
        group_by=row.group_by or "host",
    )


# §9's starter set, installed on a gateway's first start (editable like any rule).
STARTER_RULES = (
    ("rule-001", "CPU Hot", "cpu.utilization > 90", "10m", "role!=gpu-only", "critical"),
    ("rule-002", "GPU Saturated", "gpu.utilization > 85 OR gpu.memory_used_pct > 90", "5m", "gpu=true", "warning"),
    ("rule-003", "Memory Pressure", "mem.used_pct > 90", "10m", "", "critical"),
    ("rule-004", "Disk Fill Warn", "disk.used_pct > 85", "static", "", "warning"),
    ("rule-005", "Disk Fill Critical", "disk.used_pct > 95", "static", "", "critical"),
    ("rule-006", "Agent Silent", "no heartbeat for 2m", "2m", "", "critical"),
    # GPU health: a host without GPUs has none of these series, so no scope is needed.
    ("rule-007", "GPU XID error", "gpu.xid_last > 0", "static", "", "warning"),
    ("rule-008", "GPU uncorrectable ECC", "gpu.ecc_uncorrectable > 0", "static", "", "critical"),
    (
        "rule-009",
        "GPU thermal throttling",
        "gpu.throttled.sw_thermal_slowdown > 0 OR gpu.throttled.hw_thermal_slowdown > 0",
        "5m",
        "",
        "warning",
    ),
)
# Starter rules installed disabled: they fit only some fleets (a Slurm cluster with GPUs); an admin enables them.
STARTER_RULES_DISABLED = (
    # job.gpu.utilization has a series only for a GPU a job holds: below 5 % for 30 min is a GPU allocated and idle.
    ("rule-010", "GPU allocated and idle", "job.gpu.utilization < 5", "30m", "", "warning"),
)
