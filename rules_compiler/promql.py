"""PromQL text built from escaped parts: shared by the gateway's queries and the compiled rules."""

from __future__ import annotations

import re

LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
RE2_META = re.compile(r"([.+*?()|\[\]{}^$\\])")


def quote(value: str) -> str:
    """A PromQL string literal for any text: backslash, quote and newline escaped, never pasted."""
    escaped = str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    return f'"{escaped}"'


def regex_any(values: list[str]) -> str:
    """A PromQL regex literal matching exactly one of ``values``.

    Only RE2's metacharacters are escaped (Python's re.escape also escapes "-"):
    Prometheus turns an alternation of plain literals into a set lookup, and an
    escaped non-metacharacter takes that fast path away.
    """
    return quote(re2_any(values))


def re2_any(values: list[str]) -> str:
    """An RE2 pattern (unquoted) matching exactly one of ``values``, as Alertmanager's regex matchers take it."""
    return "|".join(RE2_META.sub(r"\\\1", v) for v in values)


# What Python's re takes and RE2 (Prometheus's regex engine) does not: lookaround, backreferences, atomic groups.
_NOT_RE2 = re.compile(r"\(\?(?:=|!|<=|<!|P=|>)|\\[1-9]")


def check_re2(pattern: str) -> str:
    """``pattern`` if RE2 compiles it as Python's re does (the regex of a PromQL ``=~``, anchored at both ends).

    Raises:
        ValueError: not a regex, or a construct RE2 lacks.
    """
    if _NOT_RE2.search(pattern):
        raise ValueError(f"{pattern!r}: RE2 has no lookaround, backreferences or atomic groups")
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"{pattern!r} is not a regular expression: {exc}") from None
    return pattern


def is_label_name(name: str) -> bool:
    """A name PromQL accepts as a label, and not one of Prometheus's reserved ``__`` names."""
    return bool(LABEL_NAME.match(name)) and not name.startswith("__")


_DURATION_UNITS_S = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION = re.compile(r"^(\d{1,9})(ms|s|m|h|d|w)$")


def seconds(duration: str) -> float:
    """Seconds in a Prometheus duration of one unit: ``500ms``, ``5s``, ``1m``, ``1h``, ``7d``, ``1w``.

    The one parser of durations in configuration and the API; callers add their own bounds.

    Raises:
        ValueError: anything else.
    """
    m = _DURATION.match(duration.strip()) if isinstance(duration, str) else None
    if not m:
        raise ValueError(f"not a duration: {duration!r} (e.g. 500ms, 5s, 1m, 1h, 7d, 1w)")
    return int(m.group(1)) * _DURATION_UNITS_S[m.group(2)]
