"""Estimators: turn the scores of perturbed inputs into a map. Each accumulates batch by batch."""
from __future__ import annotations

import numpy as np
import torch

from segxai.errors import SegxaiError
from segxai.methods.perturb.surrogate import Kernel, LinearFit, Surrogate


class Estimator:
    """Base class: `update(masks, scores, features)` per batch, then `result()` -> `(*spatial)` map.

    A `relative` estimator receives effects, `T(perturbed) - T(clean)` with the clean score from the same batch
    (exactly 0 for a perturbation without effect), instead of the scores themselves."""

    relative = False

    def update(self, masks: torch.Tensor, scores: torch.Tensor, features: torch.Tensor | None) -> None:  # pragma: no cover
        raise NotImplementedError

    def result(self) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


class Difference(Estimator):
    """Occlusion: each voxel gets the mean score drop `T(x) - T(x_k)` over the regions k that cover it."""

    relative = True

    def __init__(self) -> None:
        self.total: torch.Tensor | None = None
        self.count: torch.Tensor | None = None

    def update(self, masks, scores, features) -> None:
        weighted = torch.einsum("n,n...->...", -scores.float(), masks)
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


class SurrogateFit(Estimator):
    """LIME and KernelSHAP: `surrogate` fits the scores on the samples' on/off features, each sample weighted
    by `kernel` (see `segxai.methods.perturb.surrogate`). Superpixel `feature_ids[j]` gets coefficient j on its
    voxels; the `fit` (coefficients, intercept, weighted R^2) is kept for the item's figures."""

    def __init__(self, segments: torch.Tensor, feature_ids: torch.Tensor, kernel: Kernel, surrogate: Surrogate) -> None:
        self.segments, self.feature_ids = segments, torch.as_tensor(feature_ids)
        self.kernel, self.surrogate = kernel, surrogate
        self.z: list[torch.Tensor] = []
        self.scores: list[torch.Tensor] = []
        self.fit: LinearFit | None = None

    def update(self, masks, scores, features) -> None:
        self.z.append(features.detach().cpu())
        self.scores.append(scores.detach().float().cpu())

    def result(self) -> torch.Tensor:
        z = torch.cat(self.z).double().numpy()
        y = torch.cat(self.scores).double().numpy()
        weights = np.asarray(self.kernel(z), dtype=np.float64)
        if weights.shape != y.shape or not np.isfinite(weights).all() or (weights < 0).any() or weights.sum() <= 0:
            raise SegxaiError(f"the kernel must give one finite, non-negative weight per sample ({len(y)}), "
                              "not all zero")
        self.fit = self.surrogate.fit(z, y, weights)
        coefficients = np.zeros(int(self.segments.max()) + 1, dtype=np.float32)
        coefficients[self.feature_ids.cpu().numpy()] = self.fit.coefficients
        return torch.from_numpy(coefficients).to(self.segments.device)[self.segments]
