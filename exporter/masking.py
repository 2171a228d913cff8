"""Process-name masking (REQ-BE-PRIV-002): command names and users that match a policy leave the host as MASKED.

One matcher for every place a process's name or user is shown: the
exporter's top-N families (its own ``--mask-process``/``--mask-user``), the
agent (those flags plus the gateway's policy, from each heartbeat's answer),
and the gateway (at ingest, and on reading top-N and exports, for series
stored before a policy existed). Patterns are Python regular expressions
matched against the whole name (``re.fullmatch``): ``secret-.*``, ``alice|bob``.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable

MASKED = "masked"
MAX_PATTERNS, MAX_PATTERN_CHARS = 100, 200


@functools.lru_cache(maxsize=64)
def _compiled(patterns: tuple[str, ...]) -> re.Pattern | None:
    return re.compile("|".join(f"(?:{p})" for p in patterns)) if patterns else None


def check_patterns(patterns: Iterable[str]) -> list[str]:
    """The patterns as given, if each compiles.

    Raises:
        ValueError: naming the first pattern that does not, or too many or too long ones.
    """
    patterns = list(patterns)
    if len(patterns) > MAX_PATTERNS:
        raise ValueError(f"at most {MAX_PATTERNS} patterns")
    for p in patterns:
        if not isinstance(p, str) or not p or len(p) > MAX_PATTERN_CHARS:
            raise ValueError(f"{str(p)[:40]!r}: a pattern is 1 to {MAX_PATTERN_CHARS} characters")
        try:
            re.compile(p)
        except re.error as exc:
            raise ValueError(f"{p!r} is not a regular expression: {exc}") from None
    return patterns


class ProcessMasking:
    """Which process names and users are masked; changed at run time (the agent's heartbeat) as a whole."""

    def __init__(self, names: Iterable[str] = (), users: Iterable[str] = ()):
        self.own = (tuple(check_patterns(names)), tuple(check_patterns(users)))
        self._rules = (_compiled(self.own[0]), _compiled(self.own[1]))

    def set_pushed(self, names: Iterable[str] = (), users: Iterable[str] = ()) -> None:
        """The gateway's policy, beside this host's own: a name either masks stays masked."""
        names, users = (*self.own[0], *check_patterns(names)), (*self.own[1], *check_patterns(users))
        self._rules = (_compiled(tuple(names)), _compiled(tuple(users)))  # one assignment: readers see old or new

    def name(self, value: str) -> str:
        rule = self._rules[0]
        return MASKED if rule is not None and rule.fullmatch(value) else value

    def user(self, value: str) -> str:
        rule = self._rules[1]
        return MASKED if rule is not None and rule.fullmatch(value) else value

    def labels(self, labels: dict[str, str]) -> dict[str, str]:
        """``labels`` with its ``name`` and ``user`` masked where the policy says."""
        out = dict(labels)
        if "name" in out:
            out["name"] = self.name(out["name"])
        if "user" in out:
            out["user"] = self.user(out["user"])
        return out

    def __bool__(self) -> bool:
        return self._rules != (None, None)
