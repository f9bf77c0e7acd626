"""Average treatment effects of network components (a library extension of PdCR to layers and channels).

A forward hook replaces the output of a layer, or of single channels of it, by an intervention value:
`resample` takes the activation the component produces on another input (a donor image drawn per draw, which
keeps the activation on the data distribution), `mean` the donors' mean activation (or, without donors, each
channel's spatial mean on the input itself), `zero` zeros. The outcome is any segxai target bound to the clean
output, and the effect of a component is `ATE = mean_t [T(x | do(h := h_t)) - T(x)]` with its standard error
over the draws. Negative effects mean the component's own activation supports the score. PdCR's optional
screen (S draws, skip components with every |delta| < tau, then N fresh draws) is available. The published
PdCR code has no component interventions; this is an extension using the same estimator on hidden units.

The interventions run through the perturbation engine as forward-hook edits, each batch scoring the clean
input beside them, so a component off the target's path has an effect of exactly zero.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from segxai.errors import SegxaiError
from segxai.methods.base import Context, as_segmodel
from segxai.methods.cam import find_layer, record_outputs
from segxai.methods.component_reports import ComponentEffect, ComponentReport, ComponentReports, ModelComparison
from segxai.methods.perturb import engine
from segxai.model import ArrayLike, SegModel, SegOutput
from segxai.roi import as_roi
from segxai.targets import Target, as_target, evaluate

Unit = Literal["layer", "channel"]
Intervention = Literal["resample", "mean", "zero"]
TargetLike = Target | Callable[[SegOutput], torch.Tensor]
UNITS = ("layer", "channel")
INTERVENTIONS = ("resample", "mean", "zero")
__all__ = ["ComponentEffect", "ComponentEffects", "ComponentReport", "ComponentReports", "ModelComparison",
           "compare_models"]


@dataclass(frozen=True)
class _Component:
    layer: str
    channel: int | None


class ComponentEffects:
    """Estimate component effects of `model` at the dotted module names `layers` (see the module docstring).

    Whole layers (all channels treated together) are always estimated; `unit="channel"` adds one component per
    channel of each layer. `draws` is the number of resample draws per component (mean and zero ablation are
    deterministic and use one); `screen_draws` > 0 adds PdCR's screen with threshold `tau` (effects below `tau`
    in magnitude are also set to 0, as PdCR does). Each layer must run once per forward pass (no sliding-window
    inferer). Draws are shared across components (draw t uses the same donor for every component), which makes
    their comparison less noisy. The object holds settings only; every call's figures are in its report.
    """

    def __init__(
        self,
        model: SegModel | nn.Module,
        layers: Sequence[str],
        *,
        unit: Unit = "layer",
        intervention: Intervention = "resample",
        draws: int = 20,
        screen_draws: int = 0,
        tau: float = 0.0,
    ) -> None:
        """
        Args:
            model: a `SegModel` or a network (a `torch.nn.Module`, whose layers are hooked).
            layers: dotted module names, as in `named_modules()`.
            unit: "layer", or "channel" to add each channel of every layer.
            intervention: "resample" (donor activations), "mean" or "zero".
            draws: resample draws per component.
            screen_draws: draws of PdCR's screen (0: no screen).
            tau: the screen's threshold; smaller |effects| are set to 0.
        """
        self.model = as_segmodel(model)
        if not isinstance(self.model.net, nn.Module):
            raise SegxaiError("component effects need the network as a torch.nn.Module to hook its layers")
        if isinstance(layers, str) or not layers:
            raise SegxaiError(f"layers must be a non-empty list of dotted module names, not {layers!r}")
        self.layers = list(dict.fromkeys(layers))
        for name in self.layers:
            find_layer(self.model.net, name)
        _check_choice("unit", unit, UNITS)
        _check_choice("intervention", intervention, INTERVENTIONS)
        _check_count("draws", draws, minimum=1)
        _check_count("screen_draws", screen_draws, minimum=0)
        if not isinstance(tau, (int, float)) or isinstance(tau, bool) or not tau >= 0:
            raise SegxaiError(f"tau must be a non-negative number, not {tau!r}")
        self.unit, self.intervention = unit, intervention
        random = intervention == "resample"
        self.draws = int(draws) if random else 1
        self.screen_draws = int(screen_draws) if random else 0
        self.tau = float(tau)

    def explain(
        self,
        inputs: ArrayLike,
        target: TargetLike,
        roi: ArrayLike | None = None,
        *,
        donors: ArrayLike | None = None,
        seed: int = 0,
        batch_size: int | str = "auto",
        progress: bool = True,
    ) -> ComponentReport | ComponentReports:
        """Effects of every component on `target`, bound to each image's clean output.

        Args:
            inputs: one image `(C, *spatial)` or a batch `(B, C, *spatial)`.
            target: any segxai target (or a callable on the output).
            roi: intervene only where the layer's grid lies over this `(*spatial)` mask (a layer voxel is
                inside when any input voxel of its cell is; adaptive max pooling maps the ROI to the layer).
            donors: other images `(D, C, *spatial)` on the input grid: required for resample, optional for
                mean ablation (without them, each channel's spatial mean on the image itself).
            seed: seeds the donor draws; the same seed gives the same report.
            batch_size: interventions per forward pass, a positive int or "auto" (a memory budget).
            progress: show a progress bar.
        Returns:
            A `ComponentReport` for one image; a `ComponentReports` keyed 0..B-1 for a batch.
        """
        x, batched = self.model.prepare(inputs)
        target = as_target(target)
        region = as_roi(roi, x.shape[2:])
        pool = self._donors(donors, x)
        context = engine.context(self.model, x[:1], seed=seed, batch_size=batch_size, progress=progress)
        reports = [self._report(item, target, region, pool, context, int(seed)) for item in x.split(1)]
        return ComponentReports(reports) if batched else reports[0]

    # ------------------------------------------------------------------------------------------- internals
    def _report(self, x: torch.Tensor, target: Target, roi: torch.Tensor | None, pool: torch.Tensor | None,
                context: Context, seed: int) -> ComponentReport:
        """The report of one `(1, C, *spatial)` image."""
        choices = len(pool) if self.intervention == "resample" else 1
        donor_rows = torch.randint(choices, (self.screen_draws + self.draws,), generator=context.generator)
        with self.model.measure() as measure, torch.no_grad():
            clean, activations = self._recorded(x)
            bound = target.bind(clean)
            base = float(evaluate(bound, clean)[0])
            bank = self._bank(activations, pool, context.batch_size)
            regions = {name: _layer_region(name, value, roi) for name, value in activations.items()}
            components = self._components(activations)

            def deltas(items: list[tuple[_Component, int]]) -> dict[_Component, list[float]]:
                treated = _Interventions(x, items, bank, donor_rows, regions)
                scores = engine.score_all(self.model, treated, engine.target_scorer(self.model, bound), context,
                                          clean=x, desc="component effects")
                grouped: dict[_Component, list[float]] = {}
                for (component, _), score in zip(items, scores.tolist()):
                    grouped.setdefault(component, []).append(score)
                return grouped

            effects = self._effects(deltas, components)
        layers = _ranked([e for e in effects if e.channel is None])
        channels = _ranked([e for e in effects if e.channel is not None])
        return ComponentReport(base, layers, channels, self.intervention, seed, target.describe(), measure.cost)

    def _donors(self, donors: ArrayLike | None, x: torch.Tensor) -> torch.Tensor | None:
        """The donor batch on the input's grid, required for resample ablation."""
        if donors is None:
            if self.intervention == "resample":
                raise SegxaiError("resample ablation needs donors: other images (D, C, *spatial) on the input grid")
            return None
        if isinstance(donors, (list, tuple)):  # a list of (C, *spatial) images, as patch_pool takes
            donors = torch.stack([torch.as_tensor(np.asarray(d) if not isinstance(d, torch.Tensor) else d)
                                  for d in donors]) if donors else None
        if donors is None:
            raise SegxaiError("the donor list is empty: give other images (C, *spatial) on the input grid")
        pool, _ = self.model.prepare(donors)
        if tuple(pool.shape[1:]) != tuple(x.shape[1:]):
            raise SegxaiError(f"donors have shape {tuple(pool.shape[1:])} per image; expected {tuple(x.shape[1:])}")
        return pool

    def _recorded(self, x: torch.Tensor) -> tuple[SegOutput, dict[str, torch.Tensor]]:
        """Run `x` once and keep the output of every layer, checked to be a `(B, K, ...)` tensor run once."""
        with record_outputs(self.model.net, self.layers) as calls:
            output = self.model(x)
        activations: dict[str, torch.Tensor] = {}
        for name in self.layers:
            runs = [out for called, out, _ in calls if called == name]
            if len(runs) != 1:
                raise SegxaiError(
                    f"layer {name!r} ran {len(runs)} times in one forward pass; component effects need a layer that "
                    "runs exactly once (no sliding-window inferer, no shared module)"
                )
            if not isinstance(runs[0], torch.Tensor) or runs[0].dim() < 2 or runs[0].shape[0] != x.shape[0]:
                raise SegxaiError(f"layer {name!r} returns {type(runs[0]).__name__}, not a (B, K, ...) tensor")
            activations[name] = runs[0].detach().clone()
        return output, activations

    def _bank(self, clean: dict[str, torch.Tensor], pool: torch.Tensor | None, size: int) -> dict[str, torch.Tensor]:
        """Per layer, the replacement activations `(R, K, ...)`: a row per donor (resample) or one row."""
        if self.intervention == "zero":
            return {name: torch.zeros_like(value) for name, value in clean.items()}
        if pool is None:  # mean ablation without donors: each channel's spatial mean on the input itself
            return {name: _spatial_mean(value) for name, value in clean.items()}
        chunks = [self._recorded(pool[start:start + size])[1] for start in range(0, len(pool), size)]
        bank = {name: torch.cat([chunk[name] for chunk in chunks]) for name in self.layers}
        if self.intervention == "mean":
            return {name: value.mean(0, keepdim=True) for name, value in bank.items()}
        return bank

    def _components(self, activations: dict[str, torch.Tensor]) -> list[_Component]:
        """Every layer as a whole, then (for `unit="channel"`) each of its channels."""
        components = [_Component(name, None) for name in self.layers]
        if self.unit == "channel":
            components += [_Component(name, k) for name in self.layers for k in range(activations[name].shape[1])]
        return components

    def _effects(self, deltas: Callable[[list[tuple[_Component, int]]], dict[_Component, list[float]]],
                 components: list[_Component]) -> list[ComponentEffect]:
        """Screen (when asked), then estimate with fresh draws; effects below `tau` in magnitude become 0."""
        passing = components
        if self.screen_draws:
            screen = deltas([(c, t) for c in components for t in range(self.screen_draws)])
            passing = [c for c in components if max(abs(d) for d in screen[c]) >= self.tau]
        offset = self.screen_draws
        found = deltas([(c, offset + t) for c in passing for t in range(self.draws)])
        effects = []
        for component in components:
            values = np.asarray(found.get(component, [0.0]), dtype=np.float64)
            mean = float(values.mean()) if component in found else 0.0
            se = float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else 0.0
            if abs(mean) < self.tau:
                mean = 0.0
            effects.append(ComponentEffect(component.layer, component.channel, mean, se,
                                           len(values) if component in found else 0, component not in found))
        return effects


def compare_models(
    models: Mapping[str, SegModel | nn.Module],
    inputs: ArrayLike,
    target: TargetLike,
    layers: Sequence[str] | Mapping[str, Sequence[str]],
    *,
    donors: ArrayLike | None = None,
    roi: ArrayLike | None = None,
    seed: int = 0,
    batch_size: int | str = "auto",
    progress: bool = True,
    **settings: Any,
) -> ModelComparison:
    """Component effects of several models on the same image(s), donors, target and seed, as one comparison
    (the paper's "perceptual strategies differ between models").

    Args:
        models: the models by name.
        inputs, target, roi, donors, seed, batch_size, progress: as for `ComponentEffects.explain`.
        layers: one list for all models or a list per model name.
        **settings: `ComponentEffects` settings (unit, intervention, draws, ...).
    Returns:
        The reports keyed by model name.
    """
    if not models:
        raise SegxaiError("compare_models needs at least one model, as {name: model}")
    per_model = layers if isinstance(layers, Mapping) else {name: layers for name in models}
    missing = [name for name in models if name not in per_model]
    if missing:
        raise SegxaiError(f"no layers given for model(s) {', '.join(missing)}")
    call = {"roi": roi, "donors": donors, "seed": seed, "batch_size": batch_size, "progress": progress}
    reports = [ComponentEffects(model, per_model[name], **settings).explain(inputs, target, **call)
               for name, model in models.items()]
    return ModelComparison(reports, list(models))


class _Interventions:
    """(component, draw) items as engine perturbations: copies of the input, with an edit at every layer that
    replaces the treated entries (the component's channels, within the ROI) by the draw's replacement."""

    def __init__(self, x: torch.Tensor, items: list[tuple[_Component, int]], bank: dict[str, torch.Tensor],
                 donor_rows: torch.Tensor, regions: dict[str, torch.Tensor | None]) -> None:
        self.x, self.items, self.bank, self.donor_rows, self.regions = x, items, bank, donor_rows, regions

    def __len__(self) -> int:
        return len(self.items)

    def batch(self, start: int, stop: int) -> engine.Batch:
        items = self.items[start:stop]
        edits = {}
        for layer, bank in self.bank.items():
            mask = torch.zeros(len(items), bank.shape[1], dtype=torch.bool)
            for i, (component, _) in enumerate(items):
                if component.layer == layer:
                    mask[i, slice(None) if component.channel is None else component.channel] = True
            if bool(mask.any()):
                mask = mask.view(*mask.shape, *(1,) * (bank.dim() - 2)).to(bank.device)
                if self.regions[layer] is not None:
                    mask = mask & self.regions[layer]
                rows = self.donor_rows[[t for _, t in items]].to(bank.device)
                edits[layer] = _replacing(layer, mask, bank[rows])
        return engine.Batch(self.x.expand(len(items), *self.x.shape[1:]), edits)


def _replacing(layer: str, mask: torch.Tensor, replacement: torch.Tensor) -> engine.Edit:
    """The edit that returns a layer's output with the masked entries replaced."""

    def edit(output: Any) -> torch.Tensor:
        if not isinstance(output, torch.Tensor) or output.shape != replacement.shape:
            shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
            raise SegxaiError(f"layer {layer!r} returned {shape} in the batch, not {tuple(replacement.shape)}")
        return torch.where(mask, replacement.to(output.dtype), output)

    return edit


def _layer_region(layer: str, activation: torch.Tensor, roi: torch.Tensor | None) -> torch.Tensor | None:
    """The ROI on a layer's grid `(1, 1, *grid)`: a layer voxel is inside when any input voxel of its cell is."""
    if roi is None:
        return None
    if activation.dim() - 2 != roi.dim() or roi.dim() not in (2, 3):
        raise SegxaiError(f"layer {layer!r} has no spatial grid like the input's {tuple(roi.shape)}, so an ROI "
                          "cannot restrict its intervention")
    pool = F.adaptive_max_pool2d if roi.dim() == 2 else F.adaptive_max_pool3d
    return (pool(roi.float()[None, None], tuple(activation.shape[2:])) > 0).to(activation.device)


def _ranked(effects: list[ComponentEffect]) -> list[ComponentEffect]:
    """Sort by |effect|, largest first (ties keep component order), and number the ranks from 1."""
    ordered = sorted(effects, key=lambda e: -abs(e.effect))
    for rank, effect in enumerate(ordered, start=1):
        effect.rank = rank
    return ordered


def _spatial_mean(value: torch.Tensor) -> torch.Tensor:
    """Each channel's mean over the spatial axes, broadcast back to the activation's shape."""
    if value.dim() <= 2:
        return value.clone()
    return value.mean(dim=tuple(range(2, value.dim())), keepdim=True).expand_as(value).clone()


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise SegxaiError(f"{name} must be one of {', '.join(choices)}, not {value!r}")


def _check_count(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise SegxaiError(f"{name} must be an int >= {minimum}, not {value!r}")
