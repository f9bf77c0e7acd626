"""The one-verb contract every method shares: `explain(inputs, target, roi=None, seed=..., batch_size=..., progress=...)`.

`Explainer.explain` validates inputs, target and ROI, seeds a private generator, measures cost, and wraps the
result in an `Explanation`; a method only implements `_attribute` on a validated `(B, C, *spatial)` batch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from segxai.errors import SegxaiError
from segxai.explanation import Explanation
from segxai.model import SegModel, SegOutput
from segxai.roi import as_roi
from segxai.targets import Target, as_target

DEFAULT_MEMORY_BUDGET = 2 * 1024**3
# Activations of a small U-Net take tens of times the input's size; used only to size batches.
ACTIVATION_FACTOR = 64


@dataclass
class Context:
    """What `explain` hands a method besides the inputs: a seeded generator, batching and progress."""

    generator: torch.Generator
    batch_size: int
    progress: bool


class Explainer:
    """Base class for explanation methods. Subclasses set `name` and implement `_attribute`."""

    name = "explainer"

    def __init__(self, model: SegModel | nn.Module) -> None:
        self.model = as_segmodel(model)
        self.run_stats: dict[str, Any] = {}

    def params(self) -> dict[str, Any]:
        """The method's settings, recorded in `Explanation.stats`."""
        return {}

    def explain(
        self,
        inputs: torch.Tensor | np.ndarray,
        target: Target | Callable[[SegOutput], torch.Tensor],
        roi: torch.Tensor | np.ndarray | None = None,
        *,
        seed: int | None = None,
        batch_size: int | str = "auto",
        progress: bool = True,
    ) -> Explanation:
        """Explain `target` on `inputs` (`(C, *spatial)` or `(B, C, *spatial)`), optionally only inside `roi`.

        Every random draw comes from `seed` (None means 0), so the same call gives the same map.
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
        self.run_stats = {}
        with self.model.measure() as cost:
            attribution, footprint = self._attribute(x, target, roi_mask, context)
        stats = {
            "method": self.name,
            "params": self.params(),
            "seed": seed,
            "target": target.describe(),
            **cost.as_stats(),
            "batch_size": context.batch_size,
            "device": str(self.model.device),
            "roi_voxels": None if roi_mask is None else int(roi_mask.sum()),
            **self.run_stats,
        }
        attribution = attribution.detach().float().cpu()
        inputs_cpu = x.detach().cpu()
        if not batched:
            attribution, inputs_cpu = attribution[0], inputs_cpu[0]
            footprint = None if footprint is None else footprint[0]
        return Explanation(attribution, stats, inputs_cpu, roi_mask, footprint, batched)

    def _attribute(
        self, x: torch.Tensor, target: Target, roi: torch.Tensor | None, context: Context
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Return the `(B, C, *spatial)` attribution and the target's footprint `(B, *spatial)` if it has one;
        method-specific figures for the stats go in `self.run_stats`."""
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
    or 2 GiB on the CPU), assuming activations take `ACTIVATION_FACTOR` times the input's size."""
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
