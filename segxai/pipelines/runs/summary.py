"""Summary tables of a run: metric rows averaged per method, and per method and target.

Numbers are averaged over the rows of a group; booleans (pointing game hits, sanity passes) become rates in
[0, 1]. Tables are written as CSV, and as Parquet too when pandas and pyarrow are importable.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from numbers import Real
from pathlib import Path
from typing import Any

from segxai.metrics import write_csv

GROUPINGS = {"by_method": ("method",), "by_target": ("target",), "by_method_target": ("method", "target")}


def summarise(rows: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> list[dict[str, Any]]:
    """One row per distinct value of `keys`: the number of rows and the mean of every numeric column."""
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in keys), []).append(row)
    columns = list(dict.fromkeys(c for row in rows for c, v in row.items() if _numeric(v) and c not in keys))
    table = []
    for group, members in groups.items():
        summary: dict[str, Any] = {**dict(zip(keys, group)), "rows": len(members)}
        for column in columns:
            values = [float(r[column]) for r in members if _numeric(r.get(column)) and not math.isnan(float(r[column]))]
            summary[column] = sum(values) / len(values) if values else None
        table.append(summary)
    return table


def summaries(rows: Sequence[Mapping[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The summary tables of `GROUPINGS`, by name."""
    return {name: summarise(rows, keys) for name, keys in GROUPINGS.items()}


def write_summaries(rows: Sequence[Mapping[str, Any]], tables: Mapping[str, list[dict[str, Any]]],
                    out: Path) -> dict[str, Path]:
    """The per-explanation rows and the summary tables as CSV (and Parquet when available) in `out`."""
    written = {"rows": write_csv(rows, out / "rows.csv")} if rows else {}
    for name, table in tables.items():
        if table:
            written[name] = write_csv(table, out / f"summary_{name}.csv")
            parquet = write_parquet(table, out / f"summary_{name}.parquet")
            if parquet is not None:
                written[f"{name}_parquet"] = parquet
    return written


def write_parquet(table: list[dict[str, Any]], path: Path) -> Path | None:
    """The table as Parquet when pyarrow is installed (`segxai[parquet]`); None otherwise."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        return None
    from segxai.atomic import atomic_write

    with atomic_write(path) as temp:
        pq.write_table(pa.Table.from_pylist(table), temp)
    return path


def _numeric(value: Any) -> bool:
    return isinstance(value, Real)  # bools included: their mean is a rate
