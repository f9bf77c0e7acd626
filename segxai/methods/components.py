"""PdCR-style component ATE (library extension, METHODS.md 4.7): average treatment effects of network components.

A forward hook replaces the output of a layer, or of single channels of it, by an intervention value:
`resample` takes the activation the component produces on another input (a donor image drawn per draw, which
keeps the activation on the data distribution), `mean` the donors' mean activation (or, without donors, each
channel's spatial mean on the input itself), `zero` zeros. The outcome is any segxai target bound to the clean
output, and the effect of a component is `ATE = mean_t [T(x | do(h := h_t)) - T(x)]` with its standard error
over the draws. Negative effects mean the component's own activation supports the score. PdCR's optional
screen (S draws, skip components with every |delta| < tau, then N fresh draws) is available. The published
PdCR code has no component interventions; this is an extension using the same estimator on hidden units.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from segxai.errors import SegxaiError
from segxai.methods.base import as_segmodel, resolve_batch_size
from segxai.methods.cam import find_layer, record_outputs
from segxai.io.table import format_table, write_csv
from segxai.model import ArrayLike, SegModel, SegOutput
from segxai.progress import progress_bar
from segxai.targets import Target, as_target, evaluate

Unit = Literal["layer", "channel"]
Intervention = Literal["resample", "mean", "zero"]
TargetLike = Target | Callable[[SegOutput], torch.Tensor]
UNITS = ("layer", "channel")
INTERVENTIONS = ("resample", "mean", "zero")


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
    """Ranked layer effects (every channel of a layer treated together) and, for `unit="channel"`, ranked
    channel effects; `base` is the clean score, and the cost is in forward passes (batch items) and seconds."""

    base: float
    layers: list[ComponentEffect]
    channels: list[ComponentEffect]
    intervention: str
    seed: int
    target: dict[str, Any]
    forward_passes: int
    seconds: float

    def rows(self) -> list[dict[str, Any]]:
        """One row per component (layers first, each list in rank order), for tables and CSV."""
        extra = {"intervention": self.intervention, "base": self.base}
        return [{**effect.row(), **extra} for effect in [*self.layers, *self.channels]]

    def write_csv(self, path: str | Path) -> Path:
        return write_csv(self.rows(), path)


@dataclass
class ModelComparison:
    """Component reports of several models on the same inputs and target, as one table (`model` column)."""

    reports: dict[str, ComponentReport] = field(default_factory=dict)

    def rows(self) -> list[dict[str, Any]]:
        return [{"model": name, **row} for name, report in self.reports.items() for row in report.rows()]

    def table(self) -> str:
        return format_table(self.rows())

    def write_csv(self, path: str | Path) -> Path:
        return write_csv(self.rows(), path)


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
    their comparison less noisy. Items (component, draw) are batched, `batch_size` at a time.
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
        batch_size: int | str = "auto",
        progress: bool = True,
    ) -> None:
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
        self.batch_size = batch_size
        self.progress = bool(progress)

    def estimate(
        self, inputs: ArrayLike, target: TargetLike, donors: ArrayLike | None = None, seed: int = 0
    ) -> ComponentReport:
        """Effects on `target` for the one image `inputs` (`(C, *spatial)`); `donors` `(D, C, *spatial)` are the
        other images for resample (required) and mean ablation (optional). Same seed, same report."""
        x = _single_image(self.model, inputs)
        target = as_target(target)
        pool = self._donors(donors, x)
        generator = torch.Generator().manual_seed(int(seed))
        choices = len(pool) if self.intervention == "resample" else 1
        donor_rows = torch.randint(choices, (self.screen_draws + self.draws,), generator=generator)
        size = resolve_batch_size(self.batch_size, x, self.model.device)
        with self.model.measure() as cost, torch.no_grad():
            clean, activations = self._recorded(x)
            bound = target.bind(clean)
            base = float(evaluate(bound, clean)[0])
            bank = self._bank(activations, pool, size)
            components = self._components(activations)
            run = _Runner(self.model, self.layers, x, bound, base, bank, donor_rows, size, self.progress)
            effects = self._effects(run, components)
        layers = _ranked([e for e in effects if e.channel is None])
        channels = _ranked([e for e in effects if e.channel is not None])
        return ComponentReport(base, layers, channels, self.intervention, int(seed), target.describe(),
                               cost.forward_passes, cost.seconds)

    # ------------------------------------------------------------------------------------------- internals
    def _donors(self, donors: ArrayLike | None, x: torch.Tensor) -> torch.Tensor | None:
        """The donor batch on the input's grid, required for resample ablation."""
        if donors is None:
            if self.intervention == "resample":
                raise SegxaiError("resample ablation needs donors: other images (D, C, *spatial) on the input grid")
            return None
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

    def _effects(self, run: "_Runner", components: list[_Component]) -> list[ComponentEffect]:
        """Screen (when asked), then estimate with fresh draws; effects below `tau` in magnitude become 0."""
        passing = components
        if self.screen_draws:
            screen = run.deltas([(c, t) for c in components for t in range(self.screen_draws)])
            passing = [c for c in components if max(abs(d) for d in screen[c]) >= self.tau]
        offset = self.screen_draws
        deltas = run.deltas([(c, offset + t) for c in passing for t in range(self.draws)])
        effects = []
        for component in components:
            values = np.asarray(deltas.get(component, [0.0]), dtype=np.float64)
            mean = float(values.mean()) if component in deltas else 0.0
            se = float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else 0.0
            if abs(mean) < self.tau:
                mean = 0.0
            effects.append(ComponentEffect(component.layer, component.channel, mean, se,
                                           len(values) if component in deltas else 0, component not in deltas))
        return effects


def compare_models(
    models: Mapping[str, SegModel | nn.Module],
    inputs: ArrayLike,
    target: TargetLike,
    layers: Sequence[str] | Mapping[str, Sequence[str]],
    *,
    donors: ArrayLike | None = None,
    seed: int = 0,
    **settings: Any,
) -> ModelComparison:
    """Component effects of several models on the same image, donors, target and seed, as one comparison
    (the paper's "perceptual strategies differ between models"). `layers` is one list for all models or a
    list per model name; `settings` go to `ComponentEffects` (unit, intervention, draws, ...)."""
    if not models:
        raise SegxaiError("compare_models needs at least one model, as {name: model}")
    per_model = layers if isinstance(layers, Mapping) else {name: layers for name in models}
    missing = [name for name in models if name not in per_model]
    if missing:
        raise SegxaiError(f"no layers given for model(s) {', '.join(missing)}")
    reports = {
        name: ComponentEffects(model, per_model[name], **settings).estimate(inputs, target, donors, seed)
        for name, model in models.items()
    }
    return ModelComparison(reports)


class _Runner:
    """Runs batches of (component, draw) items through the hooked network and returns their score changes."""

    def __init__(self, model: SegModel, layers: list[str], x: torch.Tensor, target: Target, base: float,
                 bank: dict[str, torch.Tensor], donor_rows: torch.Tensor, batch_size: int, progress: bool) -> None:
        self.model, self.layers, self.x, self.target, self.base = model, layers, x, target, base
        self.bank, self.donor_rows, self.batch_size, self.progress = bank, donor_rows, batch_size, progress

    def deltas(self, items: list[tuple[_Component, int]]) -> dict[_Component, list[float]]:
        """`T(x | do(component := draw t)) - T(x)` for every item, grouped by component in draw order."""
        out: dict[_Component, list[float]] = {}
        starts = range(0, len(items), self.batch_size)
        for start in progress_bar(starts, enabled=self.progress, total=len(starts), desc="component effects"):
            batch = items[start:start + self.batch_size]
            plan = {name: self._plan(name, batch) for name in self.layers}
            with _interventions(self.model.net, {k: v for k, v in plan.items() if v is not None}):
                output = self.model(self.x.expand(len(batch), *self.x.shape[1:]))
            scores = evaluate(self.target, output).double().cpu() - self.base
            for (component, _), score in zip(batch, scores.tolist()):
                out.setdefault(component, []).append(score)
        return out

    def _plan(self, layer: str, batch: list[tuple[_Component, int]]) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The per-item channel mask `(B, K, 1, ...)` and replacement `(B, K, ...)` at `layer`, or None."""
        bank = self.bank[layer]
        mask = torch.zeros(len(batch), bank.shape[1], dtype=torch.bool)
        for i, (component, _) in enumerate(batch):
            if component.layer == layer:
                mask[i, slice(None) if component.channel is None else component.channel] = True
        if not bool(mask.any()):
            return None
        rows = self.donor_rows[[t for _, t in batch]]
        mask = mask.view(*mask.shape, *(1,) * (bank.dim() - 2)).to(bank.device)
        return mask, bank[rows.to(bank.device)]


@contextmanager
def _interventions(net: nn.Module, plan: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> Iterator[None]:
    """Forward hooks that return the layer's output with the masked entries replaced, for this batch only."""
    modules = dict(net.named_modules())

    def hook_for(name: str):
        mask, replacement = plan[name]

        def hook(_module, _inputs, output):
            if not isinstance(output, torch.Tensor) or output.shape != replacement.shape:
                shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
                raise SegxaiError(f"layer {name!r} returned {shape} in the batch, not {tuple(replacement.shape)}")
            return torch.where(mask, replacement.to(output.dtype), output)

        return hook

    handles = [modules[name].register_forward_hook(hook_for(name)) for name in plan]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


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


def _single_image(model: SegModel, inputs: ArrayLike) -> torch.Tensor:
    x, batched = model.prepare(inputs)
    if batched and x.shape[0] != 1:
        raise SegxaiError(f"component effects are estimated for one image (C, *spatial), not a batch of {x.shape[0]}")
    return x


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise SegxaiError(f"{name} must be one of {', '.join(choices)}, not {value!r}")


def _check_count(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise SegxaiError(f"{name} must be an int >= {minimum}, not {value!r}")
