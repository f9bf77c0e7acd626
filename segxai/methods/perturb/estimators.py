"""Estimators: turn the scores of perturbed inputs into a map. Each accumulates batch by batch."""
from __future__ import annotations

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
    """RISE: `S(u) = 1 / (N p) * sum_i T(x_i) M_i(u)`, with M_i the kept (unperturbed) part of mask i."""

    def __init__(self, keep_probability: float) -> None:
        self.p = keep_probability
        self.total: torch.Tensor | None = None
        self.n = 0

    def update(self, masks, scores, features) -> None:
        weighted = torch.einsum("n,n...->...", scores.float(), 1.0 - masks)
        self.total = weighted if self.total is None else self.total + weighted
        self.n += len(scores)

    def result(self) -> torch.Tensor:
        return self.total / (self.n * self.p)
