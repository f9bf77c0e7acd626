"""Confidence intervals over cases: the seeded percentile bootstrap of a mean, and a table of them per method.

A dataset's figure (a deletion AUC, a block-curve area, a Dice) is a mean over cases; its interval says how much
that mean would move with other cases of the same kind. Cases are the unit resampled (rows of one case, e.g.
several targets or ROIs, are averaged first), and the draws come from a `torch.Generator` seeded by `seed`, so the
same call gives the same interval.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from numbers import Real
from typing import Any

import torch

from segxai.errors import SegxaiError


@dataclass(frozen=True)
class Interval:
    """The mean of `n` values and its `level` bootstrap interval [`low`, `high`]."""

    mean: float
    low: float
    high: float
    n: int
    level: float


def bootstrap_interval(values: Sequence[float], *, level: float = 0.95, resamples: int = 2000,
                       seed: int = 0) -> Interval:
    """The percentile bootstrap interval of the mean of `values`.

    Args:
        values: one finite value per case.
        level: the coverage, in (0, 1).
        resamples: bootstrap resamples.
        seed: seeds the resampling.
    Returns:
        The interval (a single value gives low = high = the value).
    """
    if not 0 < level < 1:
        raise SegxaiError(f"level must lie in (0, 1), not {level!r}")
    if isinstance(resamples, bool) or not isinstance(resamples, int) or resamples < 1:
        raise SegxaiError(f"resamples must be a positive int, not {resamples!r}")
    data = torch.tensor([float(v) for v in values], dtype=torch.float64)
    if data.numel() == 0:
        raise SegxaiError("no values to bootstrap")
    if not bool(torch.isfinite(data).all()):
        raise SegxaiError("bootstrap values must be finite; drop the missing ones first")
    generator = torch.Generator().manual_seed(int(seed))
    draws = torch.randint(data.numel(), (resamples, data.numel()), generator=generator)
    means = data[draws].mean(1)
    tail = (1 - level) / 2
    low, high = torch.quantile(means, torch.tensor([tail, 1 - tail], dtype=torch.float64)).tolist()
    return Interval(float(data.mean()), low, high, int(data.numel()), level)


def interval_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], *, by: Sequence[str] = ("method",),
                   unit: str = "case", level: float = 0.95, resamples: int = 2000, seed: int = 0) -> list[dict[str, Any]]:
    """For every group of `by` and every column, the mean over `unit`s and its bootstrap interval.

    Args:
        rows: table rows with the `by` keys, a `unit` key and numeric `columns` (missing or NaN values skipped).
        columns: the figures to summarise.
        by: the grouping keys.
        unit: what is resampled; rows of one unit are averaged first.
        level, resamples, seed: as for `bootstrap_interval`.
    Returns:
        One row per group and column: the keys, `metric`, `cases` (units), `mean`, `low`, `high`.
    """
    groups: dict[tuple, dict[Any, list[Mapping[str, Any]]]] = {}
    for row in rows:
        missing = [key for key in (*by, unit) if key not in row]
        if missing:
            raise SegxaiError(f"row {dict(row)!r} lacks {', '.join(missing)}")
        groups.setdefault(tuple(row[k] for k in by), {}).setdefault(row[unit], []).append(row)
    table = []
    for key, units in groups.items():
        for column in columns:
            per_unit = [_mean([r.get(column) for r in members]) for members in units.values()]
            per_unit = [v for v in per_unit if v is not None]
            if not per_unit:
                continue
            found = bootstrap_interval(per_unit, level=level, resamples=resamples, seed=seed)
            table.append({**dict(zip(by, key)), "metric": column, "cases": found.n, "mean": found.mean,
                          "low": found.low, "high": found.high})
    return table


def _mean(values: Sequence[Any]) -> float | None:
    """The mean of the finite numbers (bools as 0/1), None when there are none."""
    numbers = [float(v) for v in values if isinstance(v, Real) and math.isfinite(float(v))]
    return sum(numbers) / len(numbers) if numbers else None
