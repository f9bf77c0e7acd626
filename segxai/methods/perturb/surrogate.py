"""The replaceable parts of a surrogate explanation on superpixels (LIME, KernelSHAP).

A surrogate method switches superpixels off at random, scores each sample, and fits a weighted linear model of
the scores on the samples' on/off states. Three small objects decide how: the `Sampler` (which superpixels each
sample keeps), the `Kernel` (how much each sample counts in the fit) and the `Surrogate` (the weighted linear
fit). A method built on LIME swaps a part and keeps the superpixels, the engine and the rest.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch


class Sampler(Protocol):
    """Draws the on/off states of the features (superpixels) of every sample."""

    def __call__(self, n_samples: int, n_features: int, generator: torch.Generator) -> torch.Tensor:
        """Returns `(n_samples, n_features)` bool states, True = kept; every draw comes from `generator`."""


class Kernel(Protocol):
    """Weighs each sample in the fit from its on/off states."""

    def __call__(self, z: np.ndarray) -> np.ndarray:
        """Returns one non-negative weight per row of the `(n, M)` 0/1 states `z`."""


@dataclass(frozen=True)
class LinearFit:
    """A fitted surrogate: one coefficient per feature, the intercept and the weighted R^2 of the fit."""

    coefficients: np.ndarray
    intercept: float
    r2: float


class Surrogate(Protocol):
    """Fits the linear model whose coefficients become the attribution."""

    def fit(self, z: np.ndarray, y: np.ndarray, weights: np.ndarray) -> LinearFit:
        """Fit `y ~ intercept + z @ coefficients` on `(n, M)` states, `(n,)` scores and `(n,)` weights."""


@dataclass(frozen=True)
class UniformSampler:
    """lime_image's sampler: each feature kept with probability 1/2, independently; sample 0 keeps all (the
    clean input)."""

    def __call__(self, n_samples: int, n_features: int, generator: torch.Generator) -> torch.Tensor:
        z = torch.randint(0, 2, (n_samples, n_features), generator=generator).bool()
        z[0] = True
        return z


@dataclass(frozen=True)
class CosineKernel:
    """lime_image's weights: `sqrt(exp(-d^2 / width^2))`, d the cosine distance of a sample to the all-on one."""

    width: float = 0.25

    def __call__(self, z: np.ndarray) -> np.ndarray:
        return np.sqrt(np.exp(-cosine_to_ones(z) ** 2 / self.width**2))


@dataclass(frozen=True)
class WeightedLinear:
    """Weighted least squares with an unpenalised intercept and an L2 penalty `alpha` on the coefficients:
    scikit-learn's `Ridge(alpha).fit(z, y, sample_weight=weights)`; `alpha=0` is ordinary least squares (the
    minimum-norm solution when the samples do not determine every coefficient)."""

    alpha: float = 1.0

    def fit(self, z: np.ndarray, y: np.ndarray, weights: np.ndarray) -> LinearFit:
        total = weights.sum()
        z_mean, y_mean = weights @ z / total, weights @ y / total
        root = np.sqrt(weights)
        design = np.vstack([root[:, None] * (z - z_mean), np.sqrt(self.alpha) * np.eye(z.shape[1])])
        rhs = np.concatenate([root * (y - y_mean), np.zeros(z.shape[1])])
        coefficients = np.linalg.lstsq(design, rhs, rcond=None)[0]
        intercept = float(y_mean - z_mean @ coefficients)
        residual = weights @ (y - intercept - z @ coefficients) ** 2
        spread = weights @ (y - y_mean) ** 2
        r2 = 1.0 - residual / spread if spread > 0 else float(residual == 0)
        return LinearFit(coefficients, intercept, float(r2))


def cosine_to_ones(z: np.ndarray) -> np.ndarray:
    """Cosine distance of each row of `z` to the all-ones vector (1 for an all-zero row, as scikit-learn does)."""
    norms = np.linalg.norm(z, axis=1) * np.sqrt(z.shape[1])
    similarity = np.divide(z.sum(axis=1), norms, out=np.zeros(len(z)), where=norms > 0)
    return 1.0 - similarity
