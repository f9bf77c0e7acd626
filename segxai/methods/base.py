"""The one-verb contract every method shares: `explain(inputs, target, roi=None, *, seed=0, batch_size=..., progress=...)`.

`Explainer.explain` validates inputs, target and ROI, seeds a private generator, measures cost, and wraps the
result in an `Explanation`; a method only implements `_attribute` on a validated `(B, C, *spatial)` batch and
records each item's typed figures in the `Context` it is handed.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from segxai.errors import SegxaiError
from segxai.explanation import Explanation, ItemStats, stats_view
from segxai.model import SegModel, SegOutput
from segxai.roi import as_roi
from segxai.targets import Target, as_target

DEFAULT_MEMORY_BUDGET = 2 * 1024**3
# Activations of a small U-Net take tens of times the input's size; used only to size batches.
ACTIVATION_FACTOR = 64


@dataclass
class Context:
    """What `explain` hands a method besides the inputs: a seeded generator, batching and progress, and where
    the method records its figures (so a method keeps no per-call state on itself).

    `record(item, stats)` stores the typed figures of one batch item; `note(**figures)` stores call-level ones.
    """

    generator: torch.Generator
    batch_size: int
    progress: bool
    records: dict[int, ItemStats] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)

    def record(self, item: int, stats: ItemStats) -> None:
        """Keep `stats` as the figures of batch item `item` (replacing an earlier record of it).

        Args:
            item: the index of the item in the `(B, C, *spatial)` batch `_attribute` received.
            stats: a frozen `ItemStats` dataclass of the method's family.
        """
        if not isinstance(stats, ItemStats):
            raise TypeError(f"per-item stats must be an ItemStats dataclass, not {type(stats).__name__}")
        self.records[int(item)] = stats

    def note(self, **figures: Any) -> None:
        """Keep call-level, JSON-able figures that belong to no single item."""
        self.notes.update(figures)

    def scratch(self) -> "Context":
        """A context sharing the generator, batch size and progress, whose records are its own: for running
        another method's `_attribute` on a stacked batch without its records landing on this call's items."""
        return Context(self.generator, self.batch_size, self.progress)

    def items(self, count: int) -> tuple[ItemStats | None, ...]:
        """The recorded figures of items 0..count-1 (None where nothing was recorded)."""
        return tuple(self.records.get(index) for index in range(count))


class Explainer:
    """Base class for explanation methods. Subclasses set `name` and `summary` (a one-line description for the
    registry) and implement `_attribute`; they keep no per-call state (figures go to the `Context`)."""

    name = "explainer"
    summary = ""

    def __init__(self, model: SegModel | nn.Module) -> None:
        """
        Args:
            model: a `SegModel`, or a bare network (wrapped with the default softmax activation).
        """
        self.model = as_segmodel(model)

    def params(self) -> dict[str, Any]:
        """The method's settings, recorded in `Explanation.stats`."""
        return {}

    def explain(
        self,
        inputs: torch.Tensor | np.ndarray,
        target: Target | Callable[[SegOutput], torch.Tensor],
        roi: torch.Tensor | np.ndarray | None = None,
        *,
        seed: int | None = 0,
        batch_size: int | str = "auto",
        progress: bool = True,
    ) -> Explanation:
        """Explain `target` on `inputs`, optionally only inside `roi`.

        Every random draw comes from `seed`, so the same call gives the same map.

        Args:
            inputs: `(C, *spatial)` or `(B, C, *spatial)` tensor or array, 2D or 3D.
            target: a `segxai.targets` target, or a callable from the model's output to one score per item.
            roi: a boolean spatial mask (or anything `segxai.roi.as_roi` accepts); None explains everywhere.
            seed: seed of every random draw (None means 0).
            batch_size: inputs per forward pass, or "auto" to fit a memory budget.
            progress: show a progress bar for long runs.

        Returns:
            An `Explanation` with the map, its typed `cost`, one `items` entry per batch item and the `stats` view.
        """
        seed = 0 if seed is None else int(seed)
        x, batched = self.model.prepare(inputs)
        target = as_target(target)
        roi_mask = as_roi(roi, x.shape[2:])
        context = Context(
            generator=torch.Generator().manual_seed(seed),
            batch_size=resolve_batch_size(batch_size, x, self.model.device),
            progress=progress,
        )
        with self.model.measure() as measure:
            attribution, footprint = self._attribute(x, target, roi_mask, context)
        cost, items = measure.cost, context.items(x.shape[0])
        header = {
            "method": self.name,
            "params": self.params(),
            "seed": seed,
            "target": target.describe(),
            "batch_size": context.batch_size,
            "device": str(self.model.device),
            "roi_voxels": None if roi_mask is None else int(roi_mask.sum()),
            **context.notes,
        }
        attribution = attribution.detach().float().cpu()
        inputs_cpu = x.detach().cpu()
        if not batched:
            attribution, inputs_cpu = attribution[0], inputs_cpu[0]
            footprint = None if footprint is None else footprint[0]
        return Explanation(attribution, stats_view(header, cost, items, batched), inputs_cpu, roi_mask, footprint,
                           batched, cost, items)

    def _attribute(
        self, x: torch.Tensor, target: Target, roi: torch.Tensor | None, context: Context
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Return the `(B, C, *spatial)` attribution and the target's footprint `(B, *spatial)` if it has one;
        record each item's figures with `context.record(item, stats)`."""
        raise NotImplementedError


def as_segmodel(model: SegModel | nn.Module) -> SegModel:
    """Accept a SegModel, or wrap a bare network with the default softmax activation."""
    if isinstance(model, SegModel):
        return model
    if isinstance(model, nn.Module) or callable(model):
        return SegModel(model)
    raise SegxaiError(f"model must be a segxai.SegModel or a torch.nn.Module, not {type(model).__name__}")


def resolve_batch_size(batch_size: int | str, x: torch.Tensor, device: torch.device, budget: int | None = None) -> int:
    """An explicit positive int, or "auto": as many inputs as fit a memory budget (half the free GPU memory,
    or 2 GiB on the CPU), assuming activations take `ACTIVATION_FACTOR` times the input's size.

    Args:
        batch_size: a positive int or "auto".
        x: a `(B, C, *spatial)` batch of the size of one input.
        device: where the model runs.
        budget: memory budget in bytes for "auto" (None: the default above).

    Returns:
        The number of inputs per forward pass (1..256 for "auto").
    """
    if batch_size == "auto":
        if budget is None:
            budget = DEFAULT_MEMORY_BUDGET
            if device.type == "cuda":
                budget = torch.cuda.mem_get_info(device)[0] // 2
        per_item = x[0].numel() * 4 * ACTIVATION_FACTOR
        return int(max(1, min(256, budget // per_item)))
    if isinstance(batch_size, (int, np.integer)) and not isinstance(batch_size, bool) and batch_size > 0:
        return int(batch_size)
    raise SegxaiError(f"batch_size must be a positive int or 'auto', not {batch_size!r}")


def target_footprint(target: Target, x: torch.Tensor) -> torch.Tensor | None:
    """The voxels a bound target scores, `(B, *spatial)` for the batch `x` (for overlays), when it has a mask."""
    mask = getattr(target, "mask", None)
    if isinstance(mask, torch.Tensor):
        spatial = tuple(x.shape[2:])
        return mask.reshape(-1, *spatial).expand(x.shape[0], *spatial).cpu()
    return None
