"""Deletion and insertion curves on a segmentation target, and what the block curves share with them (the
single-image check, voxel ranks, the attribution on the input grid)."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from segxai.errors import SegxaiError
from segxai.measure import Cost
from segxai.methods.base import as_segmodel
from segxai.methods.perturb import engine
from segxai.methods.perturb.frozen_norm import Norm, frozen, recorder
from segxai.metrics.localization import MapLike, spatial_map
from segxai.model import ArrayLike, SegModel, SegOutput
from segxai.targets import Target, as_target

Kind = Literal["deletion", "insertion"]
TargetLike = Target | Callable[[SegOutput], torch.Tensor]


@dataclass
class Curve:
    """Target scores against the fraction of voxels replaced (deletion) or inserted (insertion).

    `fractions` are the exact shares of voxels changed (`k * N // steps` of N voxels, k = 0..steps); `auc` is the
    trapezoid area over them, so it is in the target's units; `cost` counts the batch items run (the clean
    reference included) and the wall time.
    """

    kind: Kind
    fractions: np.ndarray
    scores: np.ndarray
    auc: float
    cost: Cost


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
    norm: Norm = "exact",
) -> Curve:
    """Score `target` as the most important voxels of `inputs` are replaced by `fill`; lower AUC is better.

    Args:
        model: a `SegModel` or a network.
        inputs: one image `(C, *spatial)`.
        target: scored on each step's output, bound to the clean output.
        attribution: the map ranking the voxels (an `Explanation`, `(C, *spatial)` or `(*spatial)`).
        steps: the curve has `steps + 1` points, `k / steps` of the voxels changed at point k.
        fill: a value or an array broadcastable to the input.
        batch_size: inputs per forward pass, a positive int or "auto" (a memory budget).
        progress: show a progress bar.
        norm: "exact", or "frozen" to normalise every step with the clean input's instance/group/layer-norm
            statistics (as the explanation was computed, see `segxai.methods.perturb.frozen_norm`).
    Returns:
        The curve.
    """
    return _curve("deletion", model, inputs, target, attribution, steps, fill, batch_size, progress, norm)


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
    norm: Norm = "exact",
) -> Curve:
    """Score `target` as the most important voxels of `inputs` are put back into an input made of `fill`;
    higher AUC is better. The arguments are those of `deletion_curve`."""
    return _curve("insertion", model, inputs, target, attribution, steps, fill, batch_size, progress, norm)


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
    norm: Norm,
) -> Curve:
    """The shared body of both curves: rank, fill, score every step through the engine, integrate."""
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise SegxaiError(f"steps must be a positive int, not {steps!r}")
    model = as_segmodel(model)
    x = single_image(model, inputs, "curves are computed")
    ranks = voxel_ranks(attribution, tuple(x.shape[2:])).to(x.device)
    baseline = _baseline(fill, x)
    total = ranks.numel()
    counts = [k * total // steps for k in range(steps + 1)]
    replaced, kept = (baseline[0], x[0]) if kind == "deletion" else (x[0], baseline[0])
    step_inputs = engine.Inputs(len(counts), lambda i: torch.where(ranks < counts[i], replaced, kept))
    context = engine.context(model, x, batch_size=batch_size, progress=progress)
    with model.measure() as measure, torch.no_grad():
        with recorder(model, norm) as statistics:
            bound = as_target(target).bind(model(x))
        with frozen(model, statistics):
            values = engine.score_all(model, step_inputs, engine.target_scorer(model, bound), context,
                                      desc=f"{kind} curve")
    fractions = torch.tensor(counts, dtype=torch.float64) / total
    auc = float(torch.trapezoid(values, fractions))
    return Curve(kind, fractions.numpy(), values.numpy(), auc, measure.cost)


def single_image(model: SegModel, inputs: ArrayLike, what: str) -> torch.Tensor:
    """`inputs` as a `(1, C, *spatial)` batch, refusing a batch of several images."""
    x, batched = model.prepare(inputs)
    if batched and x.shape[0] != 1:
        raise SegxaiError(f"{what} for one image (C, *spatial), not a batch of {x.shape[0]}")
    return x


def voxel_ranks(attribution: MapLike, spatial: tuple[int, ...]) -> torch.Tensor:
    """Each voxel's rank by channel-summed attribution (0 = most important; ties keep scan order)."""
    values = voxel_map(attribution, spatial)
    order = torch.argsort(values.flatten(), descending=True, stable=True)
    ranks = torch.empty_like(order)
    ranks[order] = torch.arange(order.numel())
    return ranks.view(spatial)


def voxel_map(attribution: MapLike, spatial: tuple[int, ...]) -> torch.Tensor:
    """The channel-summed attribution on the input grid, checked to have its shape."""
    values = spatial_map(attribution, "sum")
    if values.ndim == len(spatial) + 1:  # a (C, *spatial) attribution
        values = values.sum(0)
    if tuple(values.shape) != spatial:
        raise SegxaiError(
            f"the attribution has shape {tuple(values.shape)}; expected (C, *spatial) or {spatial} for the input grid"
        )
    return values


def _baseline(fill: float | ArrayLike, x: torch.Tensor) -> torch.Tensor:
    """The fill as a tensor of the input's shape."""
    value = torch.as_tensor(fill, dtype=x.dtype).to(x.device)
    if not bool(torch.isfinite(value).all()):
        raise SegxaiError("fill contains NaN or infinite values")
    try:
        return torch.broadcast_to(value, x.shape)
    except RuntimeError:
        raise SegxaiError(f"fill of shape {tuple(value.shape)} does not broadcast to the input {tuple(x.shape[1:])}") from None
