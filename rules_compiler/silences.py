"""Silences and maintenance windows ⇒ the time windows and Alertmanager matchers they stand for. Pure.

A silence is a scope (hosts, tags as in a rule's scope, rule ids; empty means
every alert of ours) and either one window (start, end) or a weekly recurring
one (weekdays, a local time, a duration, a time zone). The gateway stores it
and makes Alertmanager silences of its windows with the matchers built here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from rules_compiler.alerts import RuleInvalid, ScopeTerm, format_duration, parse_duration, parse_scope
from rules_compiler.promql import re2_any

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_CLOCK = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")


@dataclass(frozen=True)
class Recurring:
    """Every ``weekdays`` (0 = Monday) at ``at`` local time in ``timezone``, for ``duration_s``."""

    weekdays: tuple[int, ...]
    at: time
    duration_s: int
    timezone: str

    def as_json(self) -> dict:
        return {
            "weekdays": [WEEKDAYS[d] for d in self.weekdays],
            "time": self.at.strftime("%H:%M"),
            "duration": format_duration(self.duration_s),
            "timezone": self.timezone,
        }


@dataclass(frozen=True)
class SilenceScope:
    """Which alerts: on these hosts (None: any), with these tags, of these rules (empty: any)."""

    hosts: tuple[str, ...] | None = None
    tags: tuple[ScopeTerm, ...] = ()
    rule_ids: tuple[str, ...] = ()

    @property
    def names_hosts(self) -> bool:
        """It covers hosts (by id or tag, or all of them) rather than only some rules: a maintenance window."""
        return not self.rule_ids

    def as_json(self) -> dict:
        out: dict = {}
        if self.hosts is not None:
            out["hosts"] = list(self.hosts)
        if self.tags:
            out["tags"] = {t.tag: t.value if t.op == "=" else f"!={t.value}" for t in self.tags}
        if self.rule_ids:
            out["rule_ids"] = list(self.rule_ids)
        return out


def parse_silence_scope(scope) -> SilenceScope:
    """``{"hosts": [...], "tags": {...}, "rule_ids": [...]}``, any of them; ``{}`` is every alert.

    Raises:
        RuleInvalid: an unknown key, or tags as a rule's scope would refuse them.
    """
    if scope in (None, "all"):
        scope = {}
    if not isinstance(scope, dict) or not set(scope) <= {"hosts", "tags", "rule_ids"}:
        raise RuleInvalid("scope", 'scope is {"hosts": [ids], "tags": {"rack": "r7"}, "rule_ids": [ids]}, any of them')
    for key in ("hosts", "rule_ids"):
        values = scope.get(key, [])
        if not isinstance(values, list) or not all(isinstance(v, str) and 0 < len(v) <= 253 for v in values):
            raise RuleInvalid("scope", f"scope.{key} must be a list of ids", key=key)
    hosts = scope.get("hosts")
    return SilenceScope(
        hosts=tuple(dict.fromkeys(hosts)) if hosts is not None else None,
        tags=parse_scope({"tags": scope["tags"]}) if scope.get("tags") else (),
        rule_ids=tuple(dict.fromkeys(scope.get("rule_ids", []))),
    )


def parse_recurring(body) -> Recurring:
    """``{"weekdays": ["mon"], "time": "02:00", "duration": "1h", "timezone": "Europe/Paris"}``.

    Raises:
        RuleInvalid: an unknown weekday or time zone, a time not HH:MM, a duration not in (0, 7d].
    """
    if not isinstance(body, dict):
        raise RuleInvalid("recurring", 'recurring is {"weekdays": ["mon"], "time": "02:00", "duration": "1h"}')
    days = body.get("weekdays")
    if not isinstance(days, list) or not days or not all(d in WEEKDAYS for d in days):
        raise RuleInvalid("recurring", f"recurring.weekdays must list some of {', '.join(WEEKDAYS)}")
    clock = _CLOCK.match(str(body.get("time", "")))
    if not clock:
        raise RuleInvalid("recurring", "recurring.time must be HH:MM (24 h, local to the time zone)")
    duration_s = parse_duration(body.get("duration", ""), field_name="recurring", allow_static=False)
    if duration_s <= 0:
        raise RuleInvalid("recurring", "recurring.duration must be more than 0")
    name = str(body.get("timezone", "UTC"))
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise RuleInvalid("recurring", f"unknown time zone {name!r} (an IANA name, e.g. Europe/Paris)") from None
    weekdays = tuple(sorted({WEEKDAYS.index(d) for d in days}))
    return Recurring(weekdays, time(int(clock.group(1)), int(clock.group(2))), duration_s, name)


def check_window(starts_at: datetime | None, ends_at: datetime | None, recurring: Recurring | None) -> None:
    """One window or a recurring one, never both; a window ends after it starts.

    Raises:
        RuleInvalid: naming ``ends_at`` or ``recurring``.
    """
    if recurring is not None:
        if starts_at is not None or ends_at is not None:
            raise RuleInvalid("recurring", "give either starts_at/ends_at or recurring, not both")
        return
    if ends_at is None:
        raise RuleInvalid("ends_at", "a silence needs ends_at (and starts_at, default now) or recurring")
    if starts_at is not None and ends_at <= starts_at:
        raise RuleInvalid("ends_at", "ends_at must be after starts_at", starts_at=str(starts_at), ends_at=str(ends_at))


def occurrences(recurring: Recurring, since: datetime, until: datetime) -> list[tuple[datetime, datetime]]:
    """The windows of ``recurring`` (UTC) that are open at some time in [since, until)."""
    zone = ZoneInfo(recurring.timezone)
    length = timedelta(seconds=recurring.duration_s)
    # A window that opened up to its length before `since` may still be open.
    day: date = (since - length).astimezone(zone).date() - timedelta(days=1)
    last: date = until.astimezone(zone).date()
    out = []
    while day <= last:
        if day.weekday() in recurring.weekdays:
            # Local wall time: 02:00 stays 02:00 across a DST change (a time in the gap moves on by zoneinfo's rule).
            start = datetime.combine(day, recurring.at, tzinfo=zone).astimezone(UTC)
            end = start + length
            if end > since and start < until:
                out.append((start, end))
        day += timedelta(days=1)
    return out


def windows(
    starts_at: datetime | None, ends_at: datetime | None, recurring: Recurring | None, since: datetime, until: datetime
) -> list[tuple[datetime, datetime]]:
    """The silence's windows open at some time in [since, until), oldest first."""
    if recurring is not None:
        return occurrences(recurring, since, until)
    start = starts_at or since
    return [(start, ends_at)] if ends_at is not None and ends_at > since and start < until else []


def covers(starts_at, ends_at, recurring, at: datetime) -> bool:
    """Whether a window of the silence is open at ``at``."""
    return any(s <= at < e for s, e in windows(starts_at, ends_at, recurring, at, at + timedelta(microseconds=1)))


def hosts_in_scope(scope: SilenceScope, inventory: dict[str, dict]) -> set[str] | None:
    """The host ids the scope covers, from ``inventory`` (id → tags); None: not narrowed by host."""
    if scope.hosts is None and not scope.tags:
        return None
    chosen = set(scope.hosts) if scope.hosts is not None else set(inventory)
    for term in scope.tags:
        # As a rule's scope: "=" needs the tag; "!=" only excludes hosts that have that value.
        def keeps(tags: dict, term=term) -> bool:
            has = tags.get(term.tag) == term.value
            return has if term.op == "=" else not has

        chosen = {h for h in chosen if keeps(inventory.get(h, {}), term)}
    return chosen


def matchers(scope: SilenceScope, inventory: dict[str, dict]) -> list[dict] | None:
    """Alertmanager v2 matchers for the scope; None when it covers no host (nothing to silence).

    Alerts carry ``host_id`` and ``rule_id`` but not the hosts' tags (those join in
    PromQL), so a tag scope becomes the ids of the hosts that have those tags now.
    """
    out = []
    if scope.rule_ids:
        out.append(_matcher("rule_id", sorted(scope.rule_ids)))
    hosts = hosts_in_scope(scope, inventory)
    if hosts is not None:
        if not hosts:
            return None
        out.append(_matcher("host_id", sorted(hosts)))
    if not any(m["name"] == "rule_id" for m in out):
        out.append({"name": "rule_id", "value": ".+", "isRegex": True, "isEqual": True})  # only our rules' alerts
    return out


def _matcher(name: str, values: list[str]) -> dict:
    if len(values) == 1:
        return {"name": name, "value": values[0], "isRegex": False, "isEqual": True}
    return {"name": name, "value": re2_any(values), "isRegex": True, "isEqual": True}
