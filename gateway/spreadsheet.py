"""Text that spreadsheets open: a cell that starts like a formula is written as text (CSV injection)."""

from __future__ import annotations

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def as_text(value: str) -> str:
    """``value`` as a spreadsheet shows it, never runs it: a process may name itself "=cmd|…"."""
    return "'" + value if value.startswith(FORMULA_STARTS) else value
