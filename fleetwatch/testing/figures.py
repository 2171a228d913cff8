"""What benches print: percentiles of latencies, and each goal's PASS or FAIL beside the figures."""

from __future__ import annotations

import json
import statistics
from pathlib import Path


def pct(values: list[float], q: float) -> float:
    """The ``q``-th percentile (1–99) of ``values``, inclusive of both ends."""
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] if len(values) > 1 else values[0]


def print_checks(checks: dict[str, bool], figures: dict, json_path: Path | None) -> None:
    """PASS or FAIL per goal; with ``json_path``, the figures and the checks written there."""
    for name, ok in checks.items():
        print(f"{'PASS' if ok else 'FAIL'}  {name}")
    if json_path:
        json_path.write_text(json.dumps({**figures, "checks": checks}, indent=2))
