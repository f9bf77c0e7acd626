"""Integrated Gradients (Sundararajan et al. 2017): the path integral of the input gradient from a baseline.

Also home of the two batching helpers the gradient methods share: a bound target scored on stacked copies of
the batch (`replicate`), and the split of those copies into runs that fit `batch_size` (`copy_runs`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from segxai.errors import SegxaiError
from segxai.methods.base import Context, Explainer, target_footprint
from segxai.methods.gradient import GradientStats, input_gradient
from segxai.model import SegOutput
from segxai.progress import progress_bar
from segxai.targets import Target, evaluate

RULES = ("gausslegendre", "riemann_trapezoid", "riemann_left", "riemann_right", "riemann_middle")


class Replicated(Target):
    """A bound target scored on `copies` copies of its batch stacked along the batch axis.

    Noise samples and integration steps are run as one stacked batch; a target bound on the unperturbed batch
    (per-item masks included) scores each copy as it would score the original batch.
    """

    def __init__(self, target: Target, copies: int) -> None:
        self.target = target
        self.copies = int(copies)
        self.differentiable = target.differentiable

    def __call__(self, output: SegOutput) -> torch.Tensor:
        batch = output.logits.shape[0] // self.copies
        parts = output.logits.split(batch)
        return torch.cat([evaluate(self.target, SegOutput(p, output.activation, output.threshold)) for p in parts])

    def describe(self) -> dict[str, Any]:
        return self.target.describe()


def replicate(target: Target, copies: int) -> Target:
    """`target` for a stack of `copies` batches (itself when there is one copy)."""
    return target if copies == 1 else Replicated(target, copies)


def copy_runs(total: int, batch: int, batch_size: int) -> list[range]:
    """Split `total` copies of a `batch`-item batch into consecutive runs of at most `batch_size` items
    (at least one copy per run)."""
    per_run = max(1, batch_size // batch)
    return [range(start, min(start + per_run, total)) for start in range(0, total, per_run)]


def integration_rule(method: str, n_steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Points `alpha` in [0, 1] and weights (float64) approximating `integral_0^1 f(alpha) d alpha`.

    Names and points follow Captum. The weights always sum to 1, so a linear model's IG is exact; Captum's
    `riemann_trapezoid` instead weights its `linspace(0, 1, n)` points by `1/n` (halved at the ends), which sums
    to `(n - 1)/n`: its maps are ours times `(n - 1)/n`.

    Args:
        method: one of `RULES`.
        n_steps: the number of points (at least 2 for "riemann_trapezoid").

    Returns:
        The points and their weights, both `(n_steps,)`.
    """
    if method not in RULES:
        raise SegxaiError(f"method must be one of {', '.join(RULES)}, not {method!r}")
    smallest = 2 if method == "riemann_trapezoid" else 1
    if isinstance(n_steps, bool) or not isinstance(n_steps, (int, np.integer)) or n_steps < smallest:
        raise SegxaiError(f"n_steps must be an int >= {smallest} for {method}, not {n_steps!r}")
    n = int(n_steps)
    if method == "gausslegendre":
        nodes, weights = np.polynomial.legendre.leggauss(n)
        return 0.5 * (nodes + 1.0), 0.5 * weights
    if method == "riemann_trapezoid":
        weights = np.full(n, 1.0 / (n - 1))
        weights[[0, -1]] /= 2
        return np.linspace(0.0, 1.0, n), weights
    offset = {"riemann_left": 0.0, "riemann_middle": 0.5, "riemann_right": 1.0}[method]
    return (np.arange(n) + offset) / n, np.full(n, 1.0 / n)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def as_baseline(baselines: float | torch.Tensor | np.ndarray, x: torch.Tensor) -> torch.Tensor:
    """The baseline as a tensor shaped like `x`.

    Args:
        baselines: a number (fills every voxel) or an array broadcasting to `x` (`(C, *spatial)`, `(B, C, *spatial)`).
        x: the `(B, C, *spatial)` batch.

    Returns:
        A finite tensor of `x`'s shape, dtype and device.
    """
    if is_number(baselines):
        return torch.full_like(x, float(baselines))
    if isinstance(baselines, (torch.Tensor, np.ndarray)):
        tensor = torch.as_tensor(baselines).detach().to(device=x.device, dtype=x.dtype)
        try:
            expanded = tensor.expand_as(x)
        except RuntimeError:
            shapes = f"{tuple(tensor.shape)} do not broadcast to the inputs {tuple(x.shape)}"
            raise SegxaiError(f"baselines of shape {shapes}") from None
        if not torch.isfinite(expanded).all():
            raise SegxaiError("baselines contain NaN or infinite values")
        return expanded.contiguous()
    raise SegxaiError(f"baselines must be a number or a tensor, not {type(baselines).__name__}")


@dataclass(frozen=True)
class IGStats(GradientStats):
    """Per-item figures of Integrated Gradients: the clean `score` and the completeness error
    `convergence_delta = sum IG - (T(x) - T(x'))` (before the ROI zeroes the map outside)."""

    convergence_delta: float


class IntegratedGradients(Explainer):
    """`IG(x) = (x - x') * integral_0^1 dT(x' + a (x - x'))/dx da`, signed, on the input grid.

    The target is bound once on the unperturbed output (an instance keeps the footprint it has on `x` along the
    whole path). Steps run in stacked batches of `batch_size` items. Completeness, `sum IG = T(x) - T(x')`, is
    checked per batch item: `convergence_delta` in the stats (computed before the ROI zeroes the map outside).
    """

    name = "integrated_gradients"
    summary = "Integrated Gradients (Sundararajan et al. 2017): path integral of the gradient from a baseline"

    def __init__(
        self, model, baselines: float | torch.Tensor | np.ndarray = 0.0, n_steps: int = 50, method: str = "gausslegendre"
    ) -> None:
        """
        Args:
            model: a `SegModel` or a network.
            baselines: the baseline x', a number or an array broadcasting to the inputs.
            n_steps: integration points.
            method: the integration rule (`RULES`, Captum's names).
        """
        super().__init__(model)
        self.alphas, self.weights = integration_rule(method, n_steps)
        if not is_number(baselines) and not isinstance(baselines, (torch.Tensor, np.ndarray)):
            raise SegxaiError(f"baselines must be a number or a tensor, not {type(baselines).__name__}")
        self.baselines = baselines
        self.n_steps = int(n_steps)
        self.method = method

    def params(self) -> dict[str, Any]:
        baselines = float(self.baselines) if is_number(self.baselines) else "tensor"
        return {"baselines": baselines, "n_steps": self.n_steps, "method": self.method}

    def _attribute(self, x: torch.Tensor, target: Target, roi: torch.Tensor | None, context: Context):
        baseline = as_baseline(self.baselines, x)
        with torch.no_grad():
            output = self.model(x)
            bound = target.bind(output)
            score = evaluate(bound, output)
            gain = score - evaluate(bound, self.model(baseline))
        path = self._path_integral(x, baseline, bound, context)
        attribution = (x - baseline) * path
        deltas = (attribution.flatten(1).sum(1) - gain).tolist()
        for item, (clean, delta) in enumerate(zip(score.tolist(), deltas)):
            context.record(item, IGStats(score=clean, convergence_delta=delta))
        if roi is not None:
            attribution = attribution * roi.to(attribution.device)
        return attribution, target_footprint(bound, x)

    def _path_integral(self, x: torch.Tensor, baseline: torch.Tensor, bound: Target, context: Context) -> torch.Tensor:
        """Weighted sum of the input gradients at the integration points, computed in stacked runs and summed in
        step order (so the map does not depend on `batch_size`)."""
        total = torch.zeros_like(x)
        difference = x - baseline
        runs = copy_runs(self.n_steps, x.shape[0], context.batch_size)
        for run in progress_bar(runs, enabled=context.progress, total=len(runs), desc=self.name):
            alphas = torch.as_tensor(self.alphas[run.start : run.stop], dtype=x.dtype, device=x.device)
            shape = (len(run),) + (1,) * x.dim()
            points = (baseline + alphas.view(shape) * difference).flatten(0, 1)
            grad = input_gradient(self.model, points, replicate(bound, len(run)), bind_to_self=False).grad
            for step, step_grad in zip(run, grad.view(len(run), *x.shape)):  # in step order, whatever the runs
                total += float(self.weights[step]) * step_grad
        return total
