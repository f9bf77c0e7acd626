"""KernelSHAP (Lundberg & Lee 2017) on LIME's superpixels: LIME with the Shapley kernel's sampler and weights."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from segxai.methods.perturb.lime import LIME
from segxai.methods.perturb.surrogate import WeightedLinear


@dataclass(frozen=True)
class ShapleySampler:
    """Coalitions z drawn with probability proportional to the Shapley kernel pi(z) = (M-1) / (C(M,|z|) |z|
    (M-|z|)): a size s with probability proportional to C(M,s) pi = (M-1) / (s (M-s)), then s features uniformly
    (Covert & Lee 2021). Sample 0 keeps every feature and sample 1 none (pi is infinite there)."""

    def __call__(self, n_samples: int, n_features: int, generator: torch.Generator) -> torch.Tensor:
        sizes = torch.arange(1, n_features)
        drawn = torch.zeros(n_samples, dtype=torch.long)
        drawn[0] = n_features
        if n_features > 1 and n_samples > 2:
            mass = (n_features - 1) / (sizes * (n_features - sizes)).double()
            drawn[2:] = sizes[torch.multinomial(mass, n_samples - 2, True, generator=generator)]
        return torch.rand((n_samples, n_features), generator=generator).argsort(1) < drawn[:, None]


@dataclass(frozen=True)
class ShapleyKernel:
    """The fit weights pi(z) / P(z) of `ShapleySampler`'s coalitions: equal, since P is proportional to pi. The
    all-on and all-off coalitions weigh `anchor` times more, pinning the fit to both (efficiency)."""

    anchor: float = 1e6

    def __call__(self, z: np.ndarray) -> np.ndarray:
        size = z.sum(axis=1)
        return np.where((size == 0) | (size == z.shape[1]), self.anchor, 1.0)


class KernelSHAP(LIME):
    """The superpixels' Shapley values for the target (a superpixel is absent when filled), estimated from
    `n_samples` coalitions by an unpenalised linear fit; they add up to the clean score minus the all-filled one.

    Args: as for `LIME` (`model`, `n_samples`, `superpixels`, `n_segments`, `min_overlap` and the perturbation
    settings); the sampler, kernel and surrogate are KernelSHAP's own.
    """

    name = "kernel_shap"
    summary = "KernelSHAP (Lundberg & Lee 2017): Shapley values of superpixels from a Shapley-kernel linear fit"

    def __init__(self, model, n_samples: int = 1000, superpixels: str = "slic", n_segments: int = 50,
                 min_overlap: float = 0.1, **options) -> None:
        super().__init__(model, n_samples, superpixels, n_segments, min_overlap=min_overlap,
                         sampler=ShapleySampler(), kernel=ShapleyKernel(), surrogate=WeightedLinear(alpha=0.0),
                         **options)
