"""When a report schedule falls due: occurrences of "every day/week/month at HH:MM" in an IANA time zone.

Times are computed on the local wall clock of the schedule's zone and turned
into Unix seconds, so "Monday 08:00 Europe/Berlin" stays 08:00 across daylight
saving changes. A wall time that does not exist on a spring-forward day is
taken as zoneinfo takes it (fold 0: the offset before the change, one hour on).
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
EVERY = ("day", "week", "month")


def _at(schedule: dict, day: date) -> int:
    hour, minute = (int(part) for part in schedule["time"].split(":"))
    local = datetime.combine(day, time(hour, minute), tzinfo=ZoneInfo(schedule["timezone"]))
    return int(local.timestamp())


def _month_day(year: int, month: int, day: int) -> date:
    return date(year + (month - 1) // 12, (month - 1) % 12 + 1, day)


def _candidates(schedule: dict, around: date):
    """Occurrence dates near ``around`` (one period either side), earliest first."""
    every = schedule["every"]
    if every == "day":
        return [around + timedelta(days=k) for k in (-1, 0, 1)]
    if every == "week":
        monday_based = WEEKDAYS.index(schedule["weekday"])
        this = around + timedelta(days=monday_based - around.weekday())
        return [this + timedelta(days=7 * k) for k in (-1, 0, 1)]
    day = int(schedule.get("day") or 1)
    return [_month_day(around.year, around.month + k, day) for k in (-1, 0, 1)]


def next_after(schedule: dict, after: int) -> int:
    """The first occurrence strictly after Unix time ``after``."""
    local_day = datetime.fromtimestamp(after, ZoneInfo(schedule["timezone"])).date()
    for day in _candidates(schedule, local_day):
        at = _at(schedule, day)
        if at > after:
            return at
    raise AssertionError("an occurrence lies within one period of any time")  # pragma: no cover


def previous(schedule: dict, occurrence: int) -> int:
    """The occurrence one period before ``occurrence``: where the period it closes began."""
    local_day = datetime.fromtimestamp(occurrence, ZoneInfo(schedule["timezone"])).date()
    return max(at for at in (_at(schedule, d) for d in _candidates(schedule, local_day)) if at < occurrence)


def latest_due(schedule: dict, since: int, now: int) -> int:
    """The last occurrence in [since, now]: after downtime, only the newest missed period is reported."""
    due = since
    while (following := next_after(schedule, due)) <= now:
        due = following
    return due
