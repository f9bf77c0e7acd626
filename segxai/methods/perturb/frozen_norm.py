"""Frozen normalisation: instance, group and layer norm with the statistics of the unperturbed input.

An instance-norm layer divides every voxel by statistics of the whole feature map, so a perturbation anywhere
changes every output voxel a little: the receptive field is global and no crop is exact. With `norm="frozen"`
one clean pass records each such layer's per-sample mean and variance (forward hooks); perturbed passes then
normalise with those numbers. The layer becomes a per-channel affine map, the network becomes local, and the
receptive-field probe, the crop plan and incremental inference apply. It is an approximation, so every run
measures its own error on a few seeded perturbations computed both ways (`deviation`).
"""
from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from types import MethodType
from typing import Literal

import torch
from torch import nn

from segxai.errors import SegxaiError
from segxai.model import SegModel

Norm = Literal["exact", "frozen"]
NORMS = ("exact", "frozen")
# Perturbations scored both ways to measure the approximation, and the deviations (relative to the clean score,
# and to the largest exact effect) above which the explanation carries a warning.
CHECKS = 4
WARN_ABOVE = 0.01
WARN_ABOVE_EFFECT = 0.1
STATISTIC_LAYERS = (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d, nn.GroupNorm, nn.LayerNorm)


def check_norm(norm: str) -> Norm:
    """`norm` if it is a known mode, else a clear error."""
    if norm not in NORMS:
        raise SegxaiError(f"norm must be 'exact' or 'frozen', not {norm!r}")
    return norm  # type: ignore[return-value]


def statistic_layers(model: SegModel) -> dict[str, nn.Module]:
    """The layers that normalise with statistics of their own input (instance norm without running
    statistics, group norm, layer norm), by dotted name."""
    if not isinstance(model.net, nn.Module):
        return {}
    return {name: module for name, module in model.net.named_modules()
            if isinstance(module, STATISTIC_LAYERS) and not getattr(module, "track_running_stats", False)}


def _reduced_dims(module: nn.Module, x: torch.Tensor) -> tuple[int, ...]:
    """The axes a layer averages over: spatial for instance norm, the trailing `normalized_shape` for layer norm
    (group norm is reshaped to `(n, groups, -1)` first and reduces its last axis)."""
    if isinstance(module, nn.LayerNorm):
        return tuple(range(x.ndim - len(module.normalized_shape), x.ndim))
    return tuple(range(2, x.ndim))


def _grouped(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], module.num_groups, -1) if isinstance(module, nn.GroupNorm) else x


@dataclass
class Statistics:
    """Per layer, the mean and (biased) variance of every call in the clean pass, in call order."""

    moments: dict[str, list[tuple[torch.Tensor, torch.Tensor]]]

    @property
    def layers(self) -> int:
        return len(self.moments)


@contextmanager
def recording(model: SegModel) -> Iterator[Statistics]:
    """Record the statistics of every statistic layer during the passes run inside (one clean, batch-1 pass)."""
    stats = Statistics({})
    handles = []
    for name, module in statistic_layers(model).items():
        def hook(module, inputs, _output, name=name):
            x = _grouped(module, inputs[0].detach())
            dims = (-1,) if isinstance(module, nn.GroupNorm) else _reduced_dims(module, inputs[0])
            stats.moments.setdefault(name, []).append(
                (x.mean(dims, keepdim=True), x.var(dims, unbiased=False, keepdim=True)))
        handles.append(module.register_forward_hook(hook))
    try:
        yield stats
    finally:
        for handle in handles:
            handle.remove()


def recorder(model: SegModel, norm: str) -> AbstractContextManager[Statistics | None]:
    """`recording(model)` for norm="frozen", a context yielding None for "exact" (checked)."""
    return recording(model) if check_norm(norm) == "frozen" else nullcontext(None)


def _frozen_forward(module: nn.Module, moments: list[tuple[torch.Tensor, torch.Tensor]]) -> Callable:
    """A forward normalising with recorded moments (the k-th call uses the k-th record, cycling)."""
    calls = [0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean, var = moments[calls[0] % len(moments)]
        calls[0] += 1
        grouped = _grouped(self, x)
        if isinstance(self, nn.LayerNorm) and mean.shape[1:-len(self.normalized_shape)] != x.shape[1:-len(
                self.normalized_shape)]:
            return type(self).forward(self, x)  # a per-position layer norm on another grid: local already
        y = ((grouped - mean.to(x)) / torch.sqrt(var.to(x) + self.eps)).reshape(x.shape)
        if isinstance(self, nn.LayerNorm):
            if self.elementwise_affine:
                y = y * self.weight + (self.bias if self.bias is not None else 0)
            return y
        if self.affine:
            shape = (1, -1) + (1,) * (x.ndim - 2)
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y

    return MethodType(forward, module)


@contextmanager
def frozen(model: SegModel, stats: Statistics | None) -> Iterator[None]:
    """Inside, statistic layers normalise with `stats` (nothing changes for None). The model's remembered
    receptive fields are swapped for those of the frozen network, which is local where the exact one is not."""
    if stats is None:
        yield
        return
    layers = statistic_layers(model)
    missing = set(layers) - set(stats.moments)
    if missing:
        raise SegxaiError(f"no recorded statistics for {', '.join(sorted(missing))}; record a clean pass first")
    exact_fields = model.receptive_fields
    model.receptive_fields = model.__dict__.setdefault("frozen_receptive_fields", {})
    for name, module in layers.items():
        module.forward = _frozen_forward(module, stats.moments[name])
    try:
        yield
    finally:
        for module in layers.values():
            del module.forward
        model.receptive_fields = exact_fields


@dataclass(frozen=True)
class Deviation:
    """How far frozen scores are from exact ones on `checked` perturbations: relative to the clean score
    (`max`, `mean`) and relative to the largest exact effect among them (`of_effect`: what a map, made of
    effects, is off by; None when no checked perturbation had an effect)."""

    max: float
    mean: float
    checked: int
    of_effect: float | None

    @property
    def warning(self) -> str | None:
        """A sentence when the deviation exceeds `WARN_ABOVE` of the clean score or `WARN_ABOVE_EFFECT` of the
        effects, else None."""
        if self.max <= WARN_ABOVE and (self.of_effect is None or self.of_effect <= WARN_ABOVE_EFFECT):
            return None
        effect = "" if self.of_effect is None else f" ({self.of_effect:.3g} of the largest exact effect)"
        return (f"frozen normalisation deviates from the exact network by up to {self.max:.3g} of the clean "
                f"score{effect} on {self.checked} checked perturbations; use norm='exact' for exact maps")

    def figures(self) -> dict[str, float | int | str | None]:
        """The fields of an explanation's stats."""
        return {"norm_deviation_max": self.max, "norm_deviation_mean": self.mean,
                "norm_deviation_of_effect": self.of_effect, "norm_checked": self.checked,
                "norm_warning": self.warning}


def deviation(exact: torch.Tensor, approximate: torch.Tensor, clean_score: torch.Tensor) -> Deviation:
    """The deviation of `approximate` scores from `exact` ones `(n, ...)`, scaled by the clean score's
    magnitude (a zero clean score falls back to the largest exact score) and by the largest exact effect
    `|exact - clean|`; warns when it is large."""
    exact, approximate = exact.double().cpu(), approximate.double().cpu()
    clean = clean_score.double().cpu()
    scale = clean.abs().max()
    if scale == 0:
        scale = exact.abs().max().clamp_min(torch.finfo(torch.float32).tiny)
    error = (approximate - exact).abs().reshape(len(exact), -1).amax(1)
    relative = error / scale
    effect = float((exact - clean.reshape(-1)[0]).abs().max())
    of_effect = float(error.max()) / effect if effect > 0 else None
    result = Deviation(float(relative.max()), float(relative.mean()), len(relative), of_effect)
    if result.warning is not None:
        warnings.warn(result.warning, stacklevel=3)
    return result


def check_indices(count: int, generator: torch.Generator) -> list[int]:
    """`CHECKS` distinct perturbation indices out of `count`, drawn from `generator` (all for fewer)."""
    if count <= CHECKS:
        return list(range(count))
    return sorted(torch.randperm(count, generator=generator)[:CHECKS].tolist())
