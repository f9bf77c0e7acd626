"""Faithfulness by intervention: deletion and insertion curves on a segmentation target.

Voxels are ranked by the channel-summed attribution; the curve scores the target (bound to the clean output)
after the top-ranked fraction of voxels is replaced by a fill (deletion) or is all that is kept of the input
(insertion). A faithful map makes the deletion curve fall fast (low AUC) and the insertion curve rise fast
(high AUC). Each step is one forward pass, batched.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from segxai.errors import SegxaiError
from segxai.methods.base import as_segmodel, resolve_batch_size
from segxai.metrics.localization import MapLike, spatial_map
from segxai.model import ArrayLike, SegModel, SegOutput
from segxai.progress import progress_bar
from segxai.targets import Target, as_target, evaluate

Kind = Literal["deletion", "insertion"]
TargetLike = Target | Callable[[SegOutput], torch.Tensor]


@dataclass
class Curve:
    """Target scores against the fraction of voxels replaced (deletion) or inserted (insertion).

    `fractions` are the exact shares of voxels changed (`k * N // steps` of N voxels, k = 0..steps); `auc` is the
    trapezoid area over them, so it is in the target's units; `forward_passes` counts the
    batch items run, the clean reference included, and `seconds` the wall time.
    """

    kind: Kind
    fractions: np.ndarray
    scores: np.ndarray
    auc: float
    forward_passes: int
    seconds: float


def deletion_curve(
    model: SegModel | nn.Module,
    inputs: ArrayLike,
    target: TargetLike,
    attribution: MapLike,
    *,
    steps: int = 20,
    fill: float | ArrayLike = 0.0,
    batch_size: int | str = "auto",
    progress: bool = False,
) -> Curve:
    """Score `target` as the most important voxels of `inputs` (`(C, *spatial)`) are replaced by `fill`
    (a value or an array broadcastable to the input), `steps` equal fractions at a time; lower AUC is better."""
    return _curve("deletion", model, inputs, target, attribution, steps, fill, batch_size, progress)


def insertion_curve(
    model: SegModel | nn.Module,
    inputs: ArrayLike,
    target: TargetLike,
    attribution: MapLike,
    *,
    steps: int = 20,
    fill: float | ArrayLike = 0.0,
    batch_size: int | str = "auto",
    progress: bool = False,
) -> Curve:
    """Score `target` as the most important voxels of `inputs` are put back into an input made of `fill`,
    `steps` equal fractions at a time; higher AUC is better."""
    return _curve("insertion", model, inputs, target, attribution, steps, fill, batch_size, progress)


def _curve(
    kind: Kind,
    model: SegModel | nn.Module,
    inputs: ArrayLike,
    target: TargetLike,
    attribution: MapLike,
    steps: int,
    fill: float | ArrayLike,
    batch_size: int | str,
    progress: bool,
) -> Curve:
    """The shared body of both curves: rank, fill, score the clean reference and every step, integrate."""
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise SegxaiError(f"steps must be a positive int, not {steps!r}")
    model = as_segmodel(model)
    x = _single_image(model, inputs)
    ranks = _ranks(attribution, tuple(x.shape[2:])).to(x.device)
    baseline = _baseline(fill, x)
    total = ranks.numel()
    counts = [k * total // steps for k in range(steps + 1)]
    size = resolve_batch_size(batch_size, x, model.device)
    replaced, kept = (baseline, x) if kind == "deletion" else (x, baseline)
    with model.measure() as cost, torch.no_grad():
        bound = as_target(target).bind(model(x))
        values = _scores(model, bound, replaced, kept, ranks, counts, size, progress, kind)
    fractions = torch.tensor(counts, dtype=torch.float64) / total
    auc = float(torch.trapezoid(values, fractions))
    return Curve(kind, fractions.numpy(), values.numpy(), auc, cost.forward_passes, cost.seconds)


def _scores(
    model: SegModel,
    target: Target,
    replaced: torch.Tensor,
    kept: torch.Tensor,
    ranks: torch.Tensor,
    counts: list[int],
    batch_size: int,
    progress: bool,
    kind: Kind,
) -> torch.Tensor:
    """Score one input per count, in batches: voxels ranked below the count take `replaced`, the rest `kept`."""
    scores = []
    starts = range(0, len(counts), batch_size)
    for start in progress_bar(starts, enabled=progress, total=len(starts), desc=f"{kind} curve"):
        limits = torch.tensor(counts[start:start + batch_size], device=ranks.device).view(-1, *(1,) * ranks.ndim)
        chosen = (ranks < limits)[:, None]
        scores.append(evaluate(target, model(torch.where(chosen, replaced, kept))).double().cpu())
    return torch.cat(scores)


def _single_image(model: SegModel, inputs: ArrayLike) -> torch.Tensor:
    x, batched = model.prepare(inputs)
    if batched and x.shape[0] != 1:
        raise SegxaiError(f"curves are computed for one image (C, *spatial), not a batch of {x.shape[0]}")
    return x


def _ranks(attribution: MapLike, spatial: tuple[int, ...]) -> torch.Tensor:
    """Each voxel's rank by channel-summed attribution (0 = most important; ties keep scan order)."""
    values = spatial_map(attribution, "sum")
    if values.ndim == len(spatial) + 1:  # a (C, *spatial) attribution
        values = values.sum(0)
    if tuple(values.shape) != spatial:
        raise SegxaiError(
            f"the attribution has shape {tuple(values.shape)}; expected (C, *spatial) or {spatial} for the input grid"
        )
    order = torch.argsort(values.flatten(), descending=True, stable=True)
    ranks = torch.empty_like(order)
    ranks[order] = torch.arange(order.numel())
    return ranks.view(spatial)


def _baseline(fill: float | ArrayLike, x: torch.Tensor) -> torch.Tensor:
    """The fill as a tensor of the input's shape."""
    value = torch.as_tensor(fill, dtype=x.dtype).to(x.device)
    if not bool(torch.isfinite(value).all()):
        raise SegxaiError("fill contains NaN or infinite values")
    try:
        return torch.broadcast_to(value, x.shape)
    except RuntimeError:
        raise SegxaiError(f"fill of shape {tuple(value.shape)} does not broadcast to the input {tuple(x.shape[1:])}") from None
