"""Estimators: turn the scores of perturbed inputs into a map. Each accumulates batch by batch."""
from __future__ import annotations

import numpy as np
import torch


class Estimator:
    """Base class: `update(masks, scores, features)` per batch, then `result()` -> `(*spatial)` map."""

    def update(self, masks: torch.Tensor, scores: torch.Tensor, features: torch.Tensor | None) -> None:  # pragma: no cover
        raise NotImplementedError

    def result(self) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


class Difference(Estimator):
    """Occlusion: each voxel gets the mean score drop `T(x) - T(x_k)` over the regions k that cover it."""

    def __init__(self, reference_score: torch.Tensor) -> None:
        self.reference = reference_score
        self.total: torch.Tensor | None = None
        self.count: torch.Tensor | None = None

    def update(self, masks, scores, features) -> None:
        weighted = torch.einsum("n,n...->...", (self.reference - scores).float(), masks)
        covered = masks.sum(0)
        self.total = weighted if self.total is None else self.total + weighted
        self.count = covered if self.count is None else self.count + covered

    def result(self) -> torch.Tensor:
        return torch.where(self.count > 0, self.total / self.count.clamp_min(1e-12), torch.zeros_like(self.total))


class WeightedSum(Estimator):
    """RISE: `S(u) = 1 / (N p) * sum_i T(x_i) M_i(u)`, with M_i the kept (unperturbed) part of mask i.

    A voxel no mask ever perturbed (outside the ROI's reach) has no evidence and gets 0, not the mean score
    (which would rank it first)."""

    def __init__(self, keep_probability: float) -> None:
        self.p = keep_probability
        self.total: torch.Tensor | None = None
        self.perturbed: torch.Tensor | None = None
        self.n = 0

    def update(self, masks, scores, features) -> None:
        weighted = torch.einsum("n,n...->...", scores.float(), 1.0 - masks)
        touched = masks.amax(0) > 0
        self.total = weighted if self.total is None else self.total + weighted
        self.perturbed = touched if self.perturbed is None else self.perturbed | touched
        self.n += len(scores)

    def result(self) -> torch.Tensor:
        return self.total / (self.n * self.p) * self.perturbed


class WeightedRidge(Estimator):
    """LIME: a Ridge regression of the scores on the samples' on/off features, each sample weighted by
    `sqrt(exp(-d^2 / kernel_width^2))` with d its cosine distance to the all-on sample. Superpixel
    `feature_ids[j]` gets coefficient j on its voxels; `intercept` and the weighted R^2 `score` are kept."""

    def __init__(self, segments: torch.Tensor, feature_ids: torch.Tensor, kernel_width: float = 0.25,
                 alpha: float = 1.0) -> None:
        self.segments, self.feature_ids = segments, torch.as_tensor(feature_ids)
        self.kernel_width, self.alpha = float(kernel_width), float(alpha)
        self.z: list[torch.Tensor] = []
        self.scores: list[torch.Tensor] = []
        self.intercept: float | None = None
        self.score: float | None = None

    def update(self, masks, scores, features) -> None:
        self.z.append(features.detach().cpu())
        self.scores.append(scores.detach().float().cpu())

    def result(self) -> torch.Tensor:
        # Imported on first use: scikit-learn takes most of a second to import.
        from sklearn.linear_model import Ridge

        z = torch.cat(self.z).double().numpy()
        y = torch.cat(self.scores).double().numpy()
        weights = np.sqrt(np.exp(-cosine_to_ones(z) ** 2 / self.kernel_width**2))
        ridge = Ridge(alpha=self.alpha).fit(z, y, sample_weight=weights)
        self.intercept, self.score = float(ridge.intercept_), float(ridge.score(z, y, sample_weight=weights))
        coefficients = np.zeros(int(self.segments.max()) + 1, dtype=np.float32)
        coefficients[self.feature_ids.cpu().numpy()] = ridge.coef_
        return torch.from_numpy(coefficients).to(self.segments.device)[self.segments]


def cosine_to_ones(z: np.ndarray) -> np.ndarray:
    """Cosine distance of each row of `z` to the all-ones vector (1 for an all-zero row, as scikit-learn does)."""
    norms = np.linalg.norm(z, axis=1) * np.sqrt(z.shape[1])
    similarity = np.divide(z.sum(axis=1), norms, out=np.zeros(len(z)), where=norms > 0)
    return 1.0 - similarity
