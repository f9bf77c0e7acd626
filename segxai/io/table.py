"""Plain tables: aligned text for the terminal and CSV files written atomically (columns in first-seen order)."""
from __future__ import annotations

import csv
import math
import os
from collections.abc import Mapping, Sequence
from numbers import Real
from pathlib import Path
from typing import Any

from segxai.atomic import atomic_write
from segxai.errors import SegxaiError


def format_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """A plain aligned text table for the terminal: numbers right-aligned, None as a blank cell."""
    columns = _columns(rows)
    cells = [[_cell(row.get(column)) for column in columns] for row in rows]
    widths = [max(len(column), *(len(line[i]) for line in cells)) for i, column in enumerate(columns)]
    numeric = [all(is_number(row.get(column)) or row.get(column) is None for row in rows) for column in columns]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if n else v.ljust(w) for v, w, n in zip(values, widths, numeric)).rstrip()

    return "\n".join([line(columns), line(["-" * w for w in widths]), *(line(values) for values in cells)])


def write_csv(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike[str]) -> Path:
    """Write `rows` as CSV (columns in first-seen order, None as an empty cell) atomically; returns the path."""
    columns = _columns(rows)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as temp, open(temp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in rows)
    return path


def _columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    if not rows:
        raise SegxaiError("no rows to write")
    return list(dict.fromkeys(key for row in rows for key in row))


def is_number(value: Any) -> bool:
    """A real number that is not a bool (what a table right-aligns)."""
    return isinstance(value, Real) and not isinstance(value, bool)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if not is_number(value):
        return str(value)
    value = float(value)
    if math.isfinite(value) and value.is_integer():
        return str(int(value))
    return f"{value:.4g}" if abs(value) < 1e4 or not math.isfinite(value) else f"{value:.0f}"
