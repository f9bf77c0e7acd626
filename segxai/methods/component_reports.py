"""What component effects return: one effect per component, a report per image, and several reports (batch
items or models) as one table."""
from __future__ import annotations

from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from segxai.errors import SegxaiError
from segxai.io.table import format_table, write_csv
from segxai.measure import Cost


@dataclass
class ComponentEffect:
    """The effect of intervening on one component: a whole `layer` (`channel` None) or one channel of it.

    `effect` is the mean score change over `draws` draws and `se` its standard error (0 for one draw);
    `screened_out` marks components the screen set to 0; `rank` is 1 for the largest |effect| of its kind.
    """

    layer: str
    channel: int | None
    effect: float
    se: float
    draws: int
    screened_out: bool = False
    rank: int = 0

    def row(self) -> dict[str, Any]:
        unit = "layer" if self.channel is None else "channel"
        return {"unit": unit, "layer": self.layer, "channel": self.channel, "rank": self.rank,
                "effect": self.effect, "se": self.se, "draws": self.draws, "screened_out": self.screened_out}


@dataclass
class ComponentReport:
    """The component effects on one image: ranked layer effects (every channel of a layer treated together)
    and, for `unit="channel"`, ranked channel effects; `base` is the clean score and `cost` what it took."""

    base: float
    layers: list[ComponentEffect]
    channels: list[ComponentEffect]
    intervention: str
    seed: int
    target: dict[str, Any]
    cost: Cost

    def rows(self) -> list[dict[str, Any]]:
        """One row per component (layers first, each list in rank order), for tables and CSV."""
        extra = {"intervention": self.intervention, "base": self.base}
        return [{**effect.row(), **extra} for effect in [*self.layers, *self.channels]]

    def write_csv(self, path: str | Path) -> Path:
        return write_csv(self.rows(), path)


class ComponentReports(Sequence):
    """Several component reports as one table, each under a key in the `column` column: the items of a batch
    (`ComponentEffects.explain`), or models (`ModelComparison`); `cost` is the sum of theirs."""

    column = "item"

    def __init__(self, reports: Sequence[ComponentReport | ComponentReports],
                 keys: Sequence[Hashable] | None = None) -> None:
        """
        Args:
            reports: the reports, in order.
            keys: one distinct key per report (default 0, 1, ...).
        """
        self.reports = tuple(reports)
        self.keys = tuple(range(len(self.reports))) if keys is None else tuple(keys)
        if len(self.keys) != len(self.reports) or len(set(self.keys)) != len(self.keys):
            raise SegxaiError(f"need one distinct key per report, got {len(self.keys)} for {len(self.reports)}")
        self.cost = sum((report.cost for report in self.reports), Cost())

    def __getitem__(self, index):
        return self.reports[index]

    def __len__(self) -> int:
        return len(self.reports)

    def __iter__(self) -> Iterator[ComponentReport | ComponentReports]:
        return iter(self.reports)

    @property
    def by_key(self) -> dict[Hashable, ComponentReport | ComponentReports]:
        return dict(zip(self.keys, self.reports))

    def rows(self) -> list[dict[str, Any]]:
        return [{self.column: key, **row} for key, report in zip(self.keys, self.reports) for row in report.rows()]

    def table(self) -> str:
        return format_table(self.rows())

    def write_csv(self, path: str | Path) -> Path:
        return write_csv(self.rows(), path)


class ModelComparison(ComponentReports):
    """Component reports of several models on the same inputs and target, keyed by model name."""

    column = "model"
