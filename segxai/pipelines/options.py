"""The options every file pipeline and dataset run shares, as one value handed down from the CLI or a run config."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RunOptions:
    """How to run: the seed of every random draw, the device the model is loaded on (None: cpu), whether to show
    progress bars, and the command line a report names as its origin (None: not shown)."""

    seed: int = 0
    device: str | None = None
    progress: bool = True
    command: str | None = None
