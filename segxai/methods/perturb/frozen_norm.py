"""Frozen normalisation: instance, group and layer norm with the statistics of the unperturbed input.

An instance-norm layer divides every voxel by statistics of the whole feature map, so a perturbation anywhere
changes every output voxel a little: the receptive field is global and no crop is exact. With `norm="frozen"`
one clean pass records each such layer's per-sample mean and variance (forward hooks); perturbed passes then
normalise with those numbers. The layer becomes a per-channel affine map, the network becomes local, and the
receptive-field probe, the crop plan and incremental inference apply.

Freezing alone misses the part of an effect that travels through the statistics: a window changes each
layer's mean and variance a little, and that shifts every voxel of the target. `Correction` adds it back to
first order: one backward pass of the exact network gives the score's gradient with respect to every layer's
(mean, variance), and each perturbed pass measures how much it moved them (the sums of the frozen layers'
inputs, which stay local). It is still an approximation, so every run measures its own error on a few seeded
perturbations computed both ways (`deviation`).
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from types import MethodType
from typing import Any, Literal

import torch
from torch import nn

from segxai.errors import SegxaiError
from segxai.model import SegModel, SegOutput
from segxai.roi import crop_plan
from segxai.targets import Target, evaluate

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


Sums = tuple[torch.Tensor, torch.Tensor]


@dataclass
class Statistics:
    """Per layer, the mean and (biased) variance of every call in the clean pass, in call order, and how many
    values each statistic averages (`counts`). While `sink` is a dict, frozen layers put the float64 sums of
    their input and of its square, per item, there (`input_sums`), for `Correction`."""

    moments: dict[str, list[tuple[torch.Tensor, torch.Tensor]]]
    counts: dict[str, int] = field(default_factory=dict)
    sink: dict[str, Sums] | None = None

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
            mean = x.mean(dims, keepdim=True)
            stats.moments.setdefault(name, []).append((mean, x.var(dims, unbiased=False, keepdim=True)))
            stats.counts[name] = x.numel() // mean.numel()
        handles.append(module.register_forward_hook(hook))
    try:
        yield stats
    finally:
        for handle in handles:
            handle.remove()


def recorder(model: SegModel, norm: str) -> AbstractContextManager[Statistics | None]:
    """`recording(model)` for norm="frozen", a context yielding None for "exact" (checked)."""
    return recording(model) if check_norm(norm) == "frozen" else nullcontext(None)


def input_sums(module: nn.Module, x: torch.Tensor) -> Sums:
    """Per item, the float64 sums of `x` and of its square over the axes the layer averages (keepdim)."""
    grouped = _grouped(module, x).double()
    dims = (-1,) if isinstance(module, nn.GroupNorm) else _reduced_dims(module, x)
    return grouped.sum(dims, keepdim=True), (grouped * grouped).sum(dims, keepdim=True)


def _normalise(module: nn.Module, x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """What the layer makes of `x` with the given statistics (then its affine map, if any)."""
    y = ((_grouped(module, x) - mean.to(x)) / torch.sqrt(var.to(x) + module.eps)).reshape(x.shape)
    if isinstance(module, nn.LayerNorm):
        if module.elementwise_affine:
            y = y * module.weight + (module.bias if module.bias is not None else 0)
        return y
    if module.affine:
        shape = (1, -1) + (1,) * (x.ndim - 2)
        y = y * module.weight.view(shape) + module.bias.view(shape)
    return y


def _frozen_forward(module: nn.Module, name: str, stats: Statistics) -> Callable:
    """A forward normalising with recorded moments (the k-th call uses the k-th record, cycling)."""
    moments, calls = stats.moments[name], [0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean, var = moments[calls[0] % len(moments)]
        calls[0] += 1
        if isinstance(self, nn.LayerNorm) and mean.shape[1:-len(self.normalized_shape)] != x.shape[1:-len(
                self.normalized_shape)]:
            return type(self).forward(self, x)  # a per-position layer norm on another grid: local already
        if stats.sink is not None:
            stats.sink[name] = input_sums(self, x)
        return _normalise(self, x, mean, var)

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
        module.forward = _frozen_forward(module, name, stats)
    try:
        yield
    finally:
        for module in layers.values():
            del module.forward
        model.receptive_fields = exact_fields


# ------------------------------------------------------------------------------- first-order correction
# The largest Jacobian (values x statistics) of the logits a non-differentiable target reads that is computed.
MAX_JACOBIAN = 20_000_000
TANGENTS = 32  # statistics differentiated together in one forward-mode pass


@dataclass
class Correction:
    """The first-order change through the statistics of `k` values of one item: `jacobian[name]` is
    d value / d (mean, variance) of that layer, `(k, *statistic shape)` each, taken in the exact network (so a
    shift of one layer's statistics also moves the later layers' ones). The values are the score's (a
    differentiable target, `box` None) or the logits over `box`, the box around a non-differentiable target's
    support (`CorrectedTarget` adds them to the logits). `clean` holds the clean input's sums as the scorer
    sees them."""

    statistics: Statistics
    jacobian: dict[str, tuple[torch.Tensor, torch.Tensor]]
    box: tuple[slice, ...] | None = None
    clean: dict[str, Sums] | None = None

    def effect(self, sums: dict[str, Sums]) -> torch.Tensor:
        """The correction `(n, k)` of a batch whose frozen layers saw input `sums` (a layer not seen did not
        change)."""
        total: torch.Tensor | float = 0.0
        for name, (mean_jacobian, var_jacobian) in self.jacobian.items():
            if name not in sums or name not in self.clean:
                continue
            count = self.statistics.counts[name]
            mean = self.statistics.moments[name][0][0].double().flatten(1)
            shift = (sums[name][0] - self.clean[name][0]).flatten(1) / count
            square_shift = (sums[name][1] - self.clean[name][1]).flatten(1) / count
            var_shift = square_shift - 2 * mean.to(shift.device) * shift - shift * shift
            total = (total + shift @ mean_jacobian.flatten(1).T.to(shift)
                     + var_shift @ var_jacobian.flatten(1).T.to(shift))
        return torch.as_tensor(total)


def correction(model: SegModel, x: torch.Tensor, target: Target, stats: Statistics,
               channels: int) -> tuple[Correction | None, str]:
    """The first-order correction of `target` around the clean `x` (whose logits have `channels`), or None and why not, as "first-order"
    ("first-order (logits)" for a non-differentiable target, corrected through the logits it reads) or
    "off: <why>". Costs one forward and k backward passes of the exact network (k the score's values), or
    for the logits one forward-mode pass per `TANGENTS` statistics."""
    layers = statistic_layers(model)
    if any(isinstance(module, nn.LayerNorm) for module in layers.values()):
        return None, "off: layer norm (statistics per position)"
    if any(len(stats.moments[name]) != 1 for name in layers):
        return None, "off: a statistic layer runs more than once per pass"
    if target.differentiable:
        return Correction(stats, _score_jacobian(model, x, target, layers, stats)), "first-order"
    support = target.support(tuple(x.shape[2:]))
    box = crop_plan(support, margin=0).slices if support is not None else tuple(slice(0, n) for n in x.shape[2:])
    values = channels * math.prod(b.stop - b.start for b in box)
    size = values * sum(2 * stats.moments[name][0][0].numel() for name in layers)
    if size > MAX_JACOBIAN:
        return None, f"off: the logits' Jacobian would hold {size:,} values (limit {MAX_JACOBIAN:,})"
    return Correction(stats, _logit_jacobian(model, x, layers, stats, box), box), "first-order (logits)"


@contextmanager
def _shifted(layers: dict[str, nn.Module], shifts: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> Iterator[None]:
    """Inside, each layer normalises with its exact statistics moved by its (mean, variance) shifts."""
    for name, module in layers.items():
        module.forward = _shifted_forward(module, *shifts[name])
    try:
        yield
    finally:
        for module in layers.values():
            del module.forward


def _shifted_forward(module: nn.Module, mean_shift: torch.Tensor, var_shift: torch.Tensor) -> Callable:
    """The exact forward with its statistics moved by the given shifts (zero: differentiable probes)."""
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grouped = _grouped(self, x)
        dims = (-1,) if isinstance(self, nn.GroupNorm) else _reduced_dims(self, x)
        mean = grouped.mean(dims, keepdim=True) + mean_shift
        return _normalise(self, x, mean, grouped.var(dims, unbiased=False, keepdim=True) + var_shift)

    return MethodType(forward, module)


def _score_jacobian(model: SegModel, x: torch.Tensor, target: Target, layers: dict[str, nn.Module],
                    stats: Statistics) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """d score / d (mean, variance) per layer, by reverse mode (one backward pass per score value)."""
    shifts = {name: tuple(torch.zeros_like(m, requires_grad=True) for m in stats.moments[name][0]) for name in layers}
    leaves = [leaf for pair in shifts.values() for leaf in pair]
    with _shifted(layers, shifts), torch.enable_grad():
        score = evaluate(target, model(x)).reshape(-1)
        grads = [torch.autograd.grad(value, leaves, retain_graph=True, allow_unused=True) for value in score]
    return {name: tuple(torch.stack([torch.zeros_like(leaf) if g[2 * i + j] is None else g[2 * i + j]
                                     for g in grads]).double() for j, leaf in enumerate(pair))
            for i, (name, pair) in enumerate(shifts.items())}


def _logit_jacobian(model: SegModel, x: torch.Tensor, layers: dict[str, nn.Module], stats: Statistics,
                    box: tuple[slice, ...]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """d logits over `box` / d (mean, variance) per layer, `(K * box voxels, *statistic shape)`, by forward
    mode, `TANGENTS` statistics per vectorised pass (the clean values computed once, the tangents batched)."""
    shapes = [(name, j, stats.moments[name][0][j].shape) for name in layers for j in range(2)]
    offsets = [0]
    for _, _, shape in shapes:
        offsets.append(offsets[-1] + math.prod(shape[1:]))
    zero = torch.zeros(offsets[-1], dtype=x.dtype, device=x.device)

    def logits(flat: torch.Tensor) -> torch.Tensor:
        shifts: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
        for (name, _, shape), lo, hi in zip(shapes, offsets, offsets[1:]):
            shifts[name].append(flat[lo:hi].reshape(shape))
        with _shifted(layers, {name: tuple(pair) for name, pair in shifts.items()}):
            return model(x).logits[(..., *box)]

    def column(tangent: torch.Tensor) -> torch.Tensor:
        return torch.func.jvp(logits, (zero,), (tangent,))[1]

    identity = torch.eye(offsets[-1], dtype=x.dtype, device=x.device)
    with torch.no_grad():
        columns = [torch.func.vmap(column)(identity[first:first + TANGENTS]).flatten(1).double()
                   for first in range(0, offsets[-1], TANGENTS)]
    # Each tangent costs about one pass; the model counted one per vectorised call.
    model.forward_passes += offsets[-1] - len(columns)
    model.forward_voxels += (offsets[-1] - len(columns)) * x[0, 0].numel()
    jacobian = torch.cat(columns).T  # (values, statistics)
    return {name: tuple(jacobian[:, lo:hi].reshape(-1, *shape[1:]) for (n, _, shape), lo, hi
                        in zip(shapes, offsets, offsets[1:]) if n == name) for name in layers}


class CorrectedTarget(Target):
    """A non-differentiable target scored on logits moved by the first-order correction of the statistics'
    change that the scorer's frozen pass reported (`Statistics.sink`); outside such a pass (the exact network,
    the clean input) it is the target itself. `place` is where the correction's box lies in the logits it gets."""

    def __init__(self, inner: Target, fix: Correction, place: tuple[slice, ...] | None = None) -> None:
        self.inner, self.fix = inner, fix
        self.place = fix.box if place is None else place
        self.differentiable = False

    def bind(self, reference: SegOutput) -> Target:
        return self

    def __call__(self, output: SegOutput) -> torch.Tensor:
        sums = self.fix.statistics.sink
        if not sums or self.fix.clean is None:
            return self.inner(output)
        logits = output.logits.clone()
        window = (..., *self.place)
        logits[window] += self.fix.effect(sums).reshape(logits[window].shape).to(logits)
        return self.inner(replace(output, logits=logits))

    def support(self, spatial_shape: tuple[int, ...]) -> torch.Tensor | None:
        return self.inner.support(spatial_shape)

    def crop(self, box: tuple[slice, ...]) -> Target | None:
        inner = self.inner.crop(box)
        inside = all(b.start <= p.start and p.stop <= b.stop for b, p in zip(box, self.place))
        if inner is None or not inside:
            return None
        return CorrectedTarget(inner, self.fix, tuple(slice(p.start - b.start, p.stop - b.start)
                                                      for b, p in zip(box, self.place)))

    def describe(self) -> dict[str, Any]:
        return self.inner.describe()


def corrected(scorer: Callable[[torch.Tensor], torch.Tensor], fix: Correction,
              clean: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """`scorer` (run with frozen statistics) with the first-order correction of each item: added to its
    scores, or, for a logit correction, made by its `CorrectedTarget` from the sums each pass reports. The
    clean input's sums are taken once through the same scorer, so crops and boxes cancel out of the shifts."""
    def collect(inputs: torch.Tensor) -> tuple[torch.Tensor, dict[str, Sums]]:
        fix.statistics.sink = {}
        try:
            return scorer(inputs), fix.statistics.sink
        finally:
            fix.statistics.sink = None

    fix.clean = None
    _, fix.clean = collect(clean)

    def score(inputs: torch.Tensor) -> torch.Tensor:
        scores, sums = collect(inputs)
        if not sums or fix.box is not None:
            return scores
        return scores + fix.effect(sums).reshape(scores.shape).to(scores)

    return score


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
