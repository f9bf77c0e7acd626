"""SmoothGrad (Smilkov et al. 2017) and its NoiseTunnel variants over any gradient method."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from segxai.errors import SegxaiError
from segxai.methods.base import Context, Explainer, target_footprint
from segxai.methods.cam import GradCAM, GradCAMpp
from segxai.methods.gradient import GradientStats, Saliency
from segxai.methods.integrated import IntegratedGradients, copy_runs, replicate
from segxai.progress import progress_bar
from segxai.targets import Target, evaluate


@dataclass(frozen=True)
class SmoothGradStats(GradientStats):
    """Per-item figures of SmoothGrad: the clean `score` and the noise standard deviation of each channel."""

    noise_sigma: tuple[float, ...]


def noise_sigma(x: torch.Tensor, noise: float, relative: bool = True, reference_channel: int | None = None) -> torch.Tensor:
    """Noise standard deviation per (batch item, channel), shaped `(B, C, 1, ..., 1)` to broadcast against `x`.

    With `relative=True`, `noise` is a fraction of each channel's intensity range (max - min of that channel in
    that item), so modalities with different scales get comparable noise; `reference_channel=k` instead uses
    channel k's range for every channel (the instance-saliency code uses the FLAIR range for both channels).
    With `relative=False`, `noise` is the standard deviation itself, in input units.

    Args:
        x: the `(B, C, *spatial)` batch.
        noise: a fraction of the range (`relative`) or a standard deviation, >= 0.
        relative: read `noise` as a fraction of the intensity range.
        reference_channel: the channel whose range sets every channel's noise; None for each its own.

    Returns:
        The standard deviations, `(B, C, 1, ..., 1)`.
    """
    noise = float(noise)
    if not noise >= 0.0:
        raise SegxaiError(f"noise must be a non-negative number, not {noise!r}")
    if x.dim() < 3:
        raise SegxaiError(f"inputs must be (B, C, *spatial), got shape {tuple(x.shape)}")
    shape = (x.shape[0], x.shape[1]) + (1,) * (x.dim() - 2)
    if not relative:
        return torch.full(shape, noise, dtype=x.dtype, device=x.device)
    flat = x.detach().flatten(2)
    spread = flat.amax(dim=2) - flat.amin(dim=2)
    if reference_channel is not None:
        if not 0 <= int(reference_channel) < x.shape[1]:
            raise SegxaiError(f"reference_channel {reference_channel} is not one of the {x.shape[1]} input channels")
        spread = spread[:, int(reference_channel) : int(reference_channel) + 1].expand(-1, x.shape[1])
    return (noise * spread).reshape(shape).to(x.dtype)


VARIANTS = ("smoothgrad", "smoothgrad_sq", "vargrad")


def gradient_bases() -> dict[str, type[Explainer]]:
    """The methods SmoothGrad can wrap, by name: each explains a stacked batch with one bound target."""
    return {
        "saliency": Saliency,
        "integrated_gradients": IntegratedGradients,
        "gradcam": GradCAM,
        "gradcampp": GradCAMpp,
    }


class SmoothGrad(Explainer):
    """Average a gradient method's map over `n_samples` noisy copies of the input (Smilkov et al. 2017).

    `variant` is Captum's NoiseTunnel type: "smoothgrad" (mean), "smoothgrad_sq" (mean of squares) or "vargrad"
    (population variance). Noise is Gaussian with the per-channel standard deviation of `noise_sigma` (a
    fraction of each channel's range by default; the instance-saliency paper uses 0.05 of the FLAIR range,
    `reference_channel=0`, with 50 samples), drawn from the explanation's seed one sample at a time, so the map
    does not depend on `batch_size`. The target is bound once on the clean input, and samples run stacked in
    batches. `base` is a method name (built on `model`) or an explainer of one of those methods, whose model
    (the same network) is then used. With zero noise the map is the base method's own.
    """

    name = "smoothgrad"
    summary = "SmoothGrad / NoiseTunnel (Smilkov et al. 2017): a gradient method averaged over noisy copies"

    def __init__(
        self,
        model,
        base: str | Explainer = "saliency",
        n_samples: int = 50,
        noise: float = 0.1,
        relative: bool = True,
        reference_channel: int | None = None,
        variant: str = "smoothgrad",
    ) -> None:
        """
        Args:
            model: a `SegModel` or a network.
            base: the wrapped gradient method, by name or as an explainer of the same network.
            n_samples: noisy copies.
            noise: noise level, a fraction of the channel range (`relative`) or a standard deviation.
            relative: read `noise` as a fraction of each channel's (or `reference_channel`'s) range.
            reference_channel: the channel whose range sets every channel's noise; None for each its own.
            variant: "smoothgrad", "smoothgrad_sq" or "vargrad".
        """
        super().__init__(model)
        self.base = self._resolve_base(base)
        self.model = self.base.model
        if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
            raise SegxaiError(f"n_samples must be a positive int, not {n_samples!r}")
        if variant not in VARIANTS:
            raise SegxaiError(f"variant must be one of {', '.join(VARIANTS)}, not {variant!r}")
        noise_sigma(torch.zeros(1, 1, 1), noise)  # reject negative or non-numeric noise now
        self.n_samples = n_samples
        self.noise = float(noise)
        self.relative = bool(relative)
        self.reference_channel = reference_channel
        self.variant = variant

    def _resolve_base(self, base: str | Explainer) -> Explainer:
        bases = gradient_bases()
        if isinstance(base, str):
            if base not in bases:
                raise SegxaiError(f"unknown base method {base!r} for SmoothGrad; choose one of {', '.join(bases)}")
            return bases[base](self.model)
        if not isinstance(base, tuple(bases.values())):
            raise SegxaiError(f"SmoothGrad wraps a gradient method ({', '.join(bases)}), not {type(base).__name__}")
        if base.model.net is not self.model.net:
            raise SegxaiError("the base explainer explains a different network than the model given to SmoothGrad")
        return base

    def params(self) -> dict[str, Any]:
        return {
            "base": self.base.name,
            "base_params": self.base.params(),
            "n_samples": self.n_samples,
            "noise": self.noise,
            "relative": self.relative,
            "reference_channel": self.reference_channel,
            "variant": self.variant,
        }

    def _attribute(self, x: torch.Tensor, target: Target, roi: torch.Tensor | None, context: Context):
        sigma = noise_sigma(x, self.noise, self.relative, self.reference_channel)
        with torch.no_grad():
            output = self.model(x)
            bound = target.bind(output)
            scores = evaluate(bound, output).tolist()
        for item, (score, channels) in enumerate(zip(scores, sigma.flatten(1).tolist())):
            context.record(item, SmoothGradStats(score=score, noise_sigma=tuple(channels)))
        mean = spread = None
        count = 0
        runs = copy_runs(self.n_samples, x.shape[0], context.batch_size)
        for run in progress_bar(runs, enabled=context.progress, total=len(runs), desc=self.name):
            noise = torch.stack([torch.randn(x.shape, generator=context.generator) for _ in run]).to(x.device)
            noisy = (x + noise * sigma).flatten(0, 1)
            maps, _ = self.base._attribute(noisy, replicate(bound, len(run)), None, context.scratch())
            for sample in maps.view(len(run), x.shape[0], *maps.shape[1:]):
                sample = sample.pow(2) if self.variant == "smoothgrad_sq" else sample
                count += 1
                mean, spread = welford(mean, spread, sample, count)
        attribution = spread / count if self.variant == "vargrad" else mean
        if roi is not None:
            attribution = attribution * roi.to(attribution.device)
        return attribution, target_footprint(bound, x)


def welford(mean: torch.Tensor | None, spread: torch.Tensor | None, sample: torch.Tensor, count: int):
    """One step of Welford's running mean and sum of squared deviations: stable, and exact for equal samples
    (so zero noise returns the base map bit for bit)."""
    if mean is None:
        return sample.clone(), torch.zeros_like(sample)
    delta = sample - mean
    mean = mean + delta / count
    return mean, spread + delta * (sample - mean)
