"""Markdown for reports: one way to escape a table cell, build a table and show a number."""

from __future__ import annotations

import math
import re
from typing import Any

_MD_SPECIAL = re.compile(r"([\\`*<>\[\]|])")


def md_escape(text: Any) -> str:
    """Safe inside one Markdown table cell: one line, `|` and other markup characters backslash-escaped."""
    return _MD_SPECIAL.sub(r"\\\1", " ".join(str(text).split()))


def md_table(header: list[str], rows: list[list[Any]], align: list[str] | None = None, escape: bool = True) -> list[str]:
    """A Markdown table as lines. `align`: one of "l"/"r" per column (default left). Cells are escaped
    user text unless `escape=False` (cells that already hold Markdown, e.g. images or links)."""
    cell = md_escape if escape else (lambda value: " ".join(str(value).split()))
    rule = "|" + "|".join("---:" if a == "r" else "---" for a in (align or ["l"] * len(header))) + "|"
    return ["| " + " | ".join(cell(h) for h in header) + " |", rule,
            *("| " + " | ".join(cell(c) for c in row) + " |" for row in rows)]


def fmt(value) -> str:
    """Numbers as a person reads them: 4 significant digits, thousands separators, '–' for missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e6):
            return f"{value:.3g}"
        return f"{value:,.4g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def pct(value: float | None) -> str:
    """A fraction as a percentage with one decimal, '–' for missing."""
    return "–" if value is None else f"{100 * value:.1f} %"
