"""RISE (Petsiuk et al. 2018) for segmentation, N-D, optionally restricted to an ROI (XAI-CLIP)."""
from __future__ import annotations

from typing import Any

from segxai.methods.perturb.base import PerturbationMethod
from segxai.methods.perturb.estimators import WeightedSum
from segxai.methods.perturb.regions import RiseMasks


class RISE(PerturbationMethod):
    """Score random smooth masks and weight each mask by its score: `S = sum_i T(x_i) M_i / (N p)`. With an
    ROI the masks live on the ROI's bounding box.

    Args:
        model: a `SegModel` or a network.
        n_masks: number of masks N.
        grid: cells per axis of each mask's random binary grid (upsampled and randomly shifted).
        p: probability that a cell is kept.
        **options: the shared perturbation settings (`fill`, `outside`, `crop`, `pool`).
    """

    name = "rise"
    summary = "RISE (Petsiuk et al. 2018): random smooth masks weighted by the target's score"

    def __init__(self, model, n_masks: int = 2000, grid: int = 7, p: float = 0.5, **options) -> None:
        super().__init__(model, **options)
        self.n_masks, self.grid, self.p = int(n_masks), int(grid), float(p)

    def params(self) -> dict[str, Any]:
        return {"n_masks": self.n_masks, "grid": self.grid, "p": self.p, **super().params()}

    def _regions(self, shape, roi, context):
        return RiseMasks(shape, self.n_masks, self.grid, self.p, generator=context.generator, roi=roi)

    def _estimator(self, ref, regions):
        return WeightedSum(self.p)
