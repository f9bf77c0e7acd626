"""What every perturbation method shares: fill, ROI handling (`outside`), cropping and the engine call."""
from __future__ import annotations

from typing import Any, Literal

import torch

from segxai.methods.base import Context, Explainer
from segxai.methods.perturb import engine
from segxai.methods.perturb.estimators import Estimator
from segxai.methods.perturb.fills import make_fill
from segxai.methods.perturb.regions import Regions
from segxai.targets import Target


class PerturbationMethod(Explainer):
    """Base class: a method only says which regions to perturb and how to estimate the map from the scores.

    `fill` replaces perturbed voxels ("zero", a number, "mean", "blur", "noise" or "pool" with `pool` images);
    `outside` keeps ("keep") or blanks ("zero") the input outside the ROI. Only the part of the ROI within one
    receptive field of the target's voxels is perturbed (elsewhere a perturbation cannot change the target), and
    `crop="auto"` runs the network on a crop around the target when that is exact and cheaper. The map is one channel (all input
    channels are perturbed together) and zero outside the ROI.
    """

    def __init__(self, model, *, fill: str | float = "zero", outside: Literal["keep", "zero"] = "keep",
                 crop: Literal["auto", "none"] = "auto", pool: torch.Tensor | None = None) -> None:
        super().__init__(model)
        self.fill, self.outside, self.crop, self.pool = fill, outside, crop, pool

    def params(self) -> dict[str, Any]:
        return {"fill": self.fill, "outside": self.outside, "crop": self.crop}

    def _regions(self, shape: tuple[int, ...], roi: torch.Tensor | None, context: Context) -> Regions:
        raise NotImplementedError

    def _item_regions(self, ref: engine.Reference, roi: torch.Tensor | None, context: Context) -> Regions:
        """The regions for one input: from its grid, unless a method's regions follow the image (LIME)."""
        return self._regions(tuple(ref.x.shape[2:]), roi, context)

    def _estimator(self, ref: engine.Reference, regions: Regions) -> Estimator:
        raise NotImplementedError

    def _attribute(self, x: torch.Tensor, target: Target, roi: torch.Tensor | None, context: Context):
        maps, footprints = [], []
        for item in x.split(1):
            ref = engine.reference(self.model, item, target, roi, self.outside)
            reachable = engine.reach(self.model, ref, roi)
            crop = engine.plan_crop(self.model, ref, reachable, self.crop)
            regions = self._item_regions(ref, reachable, context)
            fill = make_fill(self.fill, ref.x, generator=context.generator, pool=self.pool)
            attribution = engine.run(self.model, ref, regions, fill, self._estimator(ref, regions), roi, crop,
                                     context, desc=self.name)
            maps.append(attribution[None])
            footprints.append(ref.target.support(tuple(item.shape[2:])))
            self.run_stats = {"regions": len(regions), "cropped": crop is not None, **({} if crop is None else crop.stats)}
        footprint = None if any(f is None for f in footprints) else torch.stack(footprints)
        return torch.stack(maps), footprint

