"""When within its interval Prometheus evaluates a rule group (pure).

Prometheus does not start a group when it loads it: it evaluates it at a
fixed offset within each interval, ``hash % interval`` nanoseconds past a
multiple of the interval since the epoch, the hash being that of the labels
``{file=<rule file's path>, name=<group's name>}`` (``Group.EvalTimestamp`` and
``Group.hash`` in rules/group.go, the same from 2.x to 3.x). So the phase of
one group against another is set by their names and their files' paths, and a
group's name can be chosen to give it the phase it needs.

Labels hash with XXH64 (seed 0) over ``name 0xff value 0xff`` per label,
sorted by name; written out here rather than adding a package for 40 lines.
"""

from __future__ import annotations

import struct

_P1, _P2, _P3, _P4, _P5 = (
    0x9E3779B185EBCA87,
    0xC2B2AE3D27D4EB4F,
    0x165667B19E3779F9,
    0x85EBCA77C2B2AE63,
    0x27D4EB2F165667C5,
)
_MASK = (1 << 64) - 1
_SEP = b"\xff"


def _rotl(x: int, r: int) -> int:
    return ((x << r) | (x >> (64 - r))) & _MASK


def _round(acc: int, lane: int) -> int:
    return (_rotl((acc + lane * _P2) & _MASK, 31) * _P1) & _MASK


def xxh64(data: bytes) -> int:
    """XXH64 of ``data`` with seed 0."""
    n, i = len(data), 0
    if n >= 32:
        v = [(_P1 + _P2) & _MASK, _P2, 0, (-_P1) & _MASK]
        while i + 32 <= n:
            lanes = struct.unpack_from("<4Q", data, i)
            v = [_round(acc, lane) for acc, lane in zip(v, lanes, strict=True)]
            i += 32
        h = (_rotl(v[0], 1) + _rotl(v[1], 7) + _rotl(v[2], 12) + _rotl(v[3], 18)) & _MASK
        for acc in v:
            h = ((h ^ _round(0, acc)) * _P1 + _P4) & _MASK
    else:
        h = _P5
    h = (h + n) & _MASK
    while i + 8 <= n:
        h = (_rotl(h ^ _round(0, struct.unpack_from("<Q", data, i)[0]), 27) * _P1 + _P4) & _MASK
        i += 8
    if i + 4 <= n:
        h = (_rotl(h ^ ((struct.unpack_from("<I", data, i)[0] * _P1) & _MASK), 23) * _P2 + _P3) & _MASK
        i += 4
    while i < n:
        h = (_rotl(h ^ ((data[i] * _P5) & _MASK), 11) * _P1) & _MASK
        i += 1
    h = ((h ^ (h >> 33)) * _P2) & _MASK
    h = ((h ^ (h >> 29)) * _P3) & _MASK
    return h ^ (h >> 32)


def offset_s(rule_file: str, group: str, interval_s: float) -> float:
    """Seconds past each multiple of ``interval_s`` (since the epoch) at which Prometheus evaluates the group."""
    labels = b"".join(k + _SEP + v.encode() + _SEP for k, v in ((b"file", rule_file), (b"name", group)))
    interval_ns = round(interval_s * 1e9)
    return (xxh64(labels) % interval_ns) / 1e9


def name_lagging(
    rule_file: str, base: str, interval_s: float, after: tuple[float, float], lag: tuple[float, float]
) -> str:
    """``base``, or ``base-N`` with the smallest N, so that the group of ``rule_file`` so named, evaluated
    every ``interval_s``, starts between ``lag[0]`` and ``lag[1]`` of another group's interval after it.

    ``after``: that group's (offset_s, interval_s); ``interval_s`` must be a multiple of its interval,
    else the two drift through each other's phases and no name helps: ``base`` then.
    """
    offset, every = after
    if every <= 0 or interval_s / every != round(interval_s / every):
        return base
    for n in range(10_000):
        name = f"{base}-{n}" if n else base
        if lag[0] <= (offset_s(rule_file, name, interval_s) - offset) % every / every <= lag[1]:
            return name
    raise ValueError(f"no name for a group {lag} of {every} s after {offset} s in {rule_file}")  # 3 in 10 fit
