"""What every perturbation method shares: fill, ROI handling (`outside`), cropping, the engine call and the
per-item figures (`PerturbationStats`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

from segxai.explanation import ItemStats
from segxai.methods.base import Context, Explainer
from segxai.methods.perturb import engine
from segxai.methods.perturb.estimators import Estimator
from segxai.methods.perturb.fills import make_fill
from segxai.methods.perturb.regions import Regions
from segxai.targets import Target


@dataclass(frozen=True, kw_only=True)
class PerturbationStats(ItemStats):
    """Per-item figures of a perturbation method: the clean `score`, the number of perturbed `regions` scored,
    whether the network ran on a crop, and then the receptive field and the crop's shape."""

    score: float
    regions: int
    cropped: bool
    receptive_field: tuple[int, ...] | None = None
    crop_shape: tuple[int, ...] | None = None


def crop_figures(crop: engine.Crop | None) -> dict[str, Any]:
    """The crop's fields of `PerturbationStats` (none when the full input is used)."""
    if crop is None:
        return {"cropped": False}
    return {"cropped": True, "receptive_field": tuple(crop.stats["receptive_field"]),
            "crop_shape": tuple(crop.stats["crop_shape"])}


class PerturbationMethod(Explainer):
    """Base class: a method only says which regions to perturb and how to estimate the map from the scores.

    `fill` replaces perturbed voxels ("zero", a number, "mean", "blur", "noise" or "pool" with `pool` images);
    `outside` keeps ("keep") or blanks ("zero") the input outside the ROI. Only the part of the ROI within one
    receptive field of the target's voxels is perturbed (elsewhere a perturbation cannot change the target), and
    `crop="auto"` runs the network on a crop around the target when that is exact and cheaper. The map is one
    channel (all input channels are perturbed together) and zero outside the ROI. Each item is explained on
    its own and records its `PerturbationStats` (or a method's subclass of it, from `_item_stats`).
    """

    def __init__(self, model, *, fill: str | float = "zero", outside: Literal["keep", "zero"] = "keep",
                 crop: Literal["auto", "none"] = "auto", pool: torch.Tensor | None = None) -> None:
        """
        Args:
            model: a `SegModel` or a network.
            fill: what replaces perturbed voxels.
            outside: keep or blank the input outside the ROI.
            crop: "auto" computes on a crop where that is exact and cheaper; "none" never crops.
            pool: images `(P, C, *spatial)` for `fill="pool"`.
        """
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

    def _item_stats(self, ref: engine.Reference, regions: Regions, estimator: Estimator,
                    crop: engine.Crop | None) -> PerturbationStats:
        """The figures of one item, read after the engine ran; a method with more (LIME's fit) overrides this
        and reads them from `estimator`, the one it built for this item."""
        return PerturbationStats(score=float(ref.score[0]), regions=len(regions), **crop_figures(crop))

    def _attribute(self, x: torch.Tensor, target: Target, roi: torch.Tensor | None, context: Context):
        maps, footprints = [], []
        for index, item in enumerate(x.split(1)):
            ref = engine.reference(self.model, item, target, roi, self.outside)
            reachable = engine.reach(self.model, ref, roi)
            crop = engine.plan_crop(self.model, ref, reachable, self.crop)
            regions = self._item_regions(ref, reachable, context)
            fill = make_fill(self.fill, ref.x, generator=context.generator, pool=self.pool)
            estimator = self._estimator(ref, regions)
            attribution = engine.run(self.model, ref, regions, fill, estimator, roi, crop, context, desc=self.name)
            maps.append(attribution[None])
            footprints.append(ref.target.support(tuple(item.shape[2:])))
            context.record(index, self._item_stats(ref, regions, estimator, crop))
        footprint = None if any(f is None for f in footprints) else torch.stack(footprints)
        return torch.stack(maps), footprint
