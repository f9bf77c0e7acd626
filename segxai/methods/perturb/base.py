"""What every perturbation method shares: fill, ROI handling (`outside`), cropping, frozen norms, incremental
inference, the engine call and the per-item figures (`PerturbationStats`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

from segxai.explanation import ItemStats
from segxai.methods.base import Context, Explainer
from segxai.methods.perturb import engine
from segxai.methods.perturb.estimators import Estimator
from segxai.methods.perturb.fills import make_fill
from segxai.methods.perturb.frozen_norm import Norm, check_norm
from segxai.methods.perturb.plan import ItemPlan, check_incremental, prepare
from segxai.methods.perturb.regions import Regions
from segxai.targets import Target


@dataclass(frozen=True, kw_only=True)
class PerturbationStats(ItemStats):
    """Per-item figures of a perturbation method: the clean `score`, the number of perturbed `regions` scored,
    whether the network ran on a crop (then the receptive field and the crop's shape), the norm mode and, with
    frozen norms, the measured deviation from the exact network (max and mean over `norm_checked` seeded
    perturbations, relative to the clean score, and the largest error relative to the largest exact effect among
    them, with a warning when large; `norm_correction`: "first-order" when the scores carry the statistics' first-order
    change, see `segxai.methods.perturb.frozen_norm`), and whether incremental inference
    ran ("on", "off" or "off: <why>")."""

    score: float
    regions: int
    cropped: bool
    receptive_field: tuple[int, ...] | None = None
    crop_shape: tuple[int, ...] | None = None
    norm: str = "exact"
    norm_deviation_max: float | None = None
    norm_deviation_mean: float | None = None
    norm_deviation_of_effect: float | None = None
    norm_checked: int | None = None
    norm_warning: str | None = None
    norm_correction: str | None = None
    incremental: str = "off"


class PerturbationMethod(Explainer):
    """Base class: a method only says which regions to perturb and how to estimate the map from the scores.

    `fill` replaces perturbed voxels ("zero", a number, "mean", "blur", "noise" or "pool" with `pool` images);
    `outside` keeps ("keep") or blanks ("zero") the input outside the ROI. Only the part of the ROI within one
    receptive field of the target's voxels is perturbed (elsewhere a perturbation cannot change the target), and
    `crop="auto"` runs the network on a crop around the target when that is exact and cheaper. `norm="frozen"`
    normalises instance/group/layer-norm layers with the clean input's statistics, so such networks become local
    (an approximation whose error each item measures, see `segxai.methods.perturb.frozen_norm`);
    `incremental="auto"` recomputes each layer only where a perturbation changed its input (exact; it falls
    back to whole passes for unsupported layers, see `segxai.methods.perturb.incremental`). The map is one
    channel (all input channels are perturbed together) and zero outside the ROI. Each item is explained on
    its own and records its `PerturbationStats` (or a method's subclass of it, from `_item_stats`).
    """

    def __init__(self, model, *, fill: str | float = "zero", outside: Literal["keep", "zero"] = "keep",
                 crop: Literal["auto", "none"] = "auto", pool: torch.Tensor | None = None,
                 norm: Norm = "exact", incremental: Literal["auto", "off"] = "off") -> None:
        """
        Args:
            model: a `SegModel` or a network.
            fill: what replaces perturbed voxels.
            outside: keep or blank the input outside the ROI.
            crop: "auto" computes on a crop where that is exact and cheaper; "none" never crops.
            pool: images `(P, C, *spatial)` for `fill="pool"`.
            norm: "exact", or "frozen" for the clean input's normalisation statistics.
            incremental: "auto" recomputes only what each perturbation changes where the network allows it.
        """
        super().__init__(model)
        check_norm(norm)
        check_incremental(incremental)
        self.fill, self.outside, self.crop, self.pool = fill, outside, crop, pool
        self.norm, self.incremental = norm, incremental

    def params(self) -> dict[str, Any]:
        return {"fill": self.fill, "outside": self.outside, "crop": self.crop, "norm": self.norm,
                "incremental": self.incremental}

    def _regions(self, shape: tuple[int, ...], roi: torch.Tensor | None, context: Context) -> Regions:
        raise NotImplementedError

    def _item_regions(self, ref: engine.Reference, roi: torch.Tensor | None, context: Context) -> Regions:
        """The regions for one input: from its grid, unless a method's regions follow the image (LIME)."""
        return self._regions(tuple(ref.x.shape[2:]), roi, context)

    def _estimator(self, ref: engine.Reference, regions: Regions) -> Estimator:
        raise NotImplementedError

    def _item_stats(self, ref: engine.Reference, regions: Regions, estimator: Estimator,
                    figures: dict[str, Any]) -> PerturbationStats:
        """The figures of one item, read after the engine ran (`figures`: the plan's, see `ItemPlan.figures`);
        a method with more (LIME's fit) overrides this and reads them from `estimator`."""
        return PerturbationStats(score=float(ref.score[0]), regions=len(regions), **figures)

    def _plan(self, item: torch.Tensor, target: Target, roi: torch.Tensor | None) -> ItemPlan:
        """The item's reference, reach, crop, norm statistics and scorer (see `segxai.methods.perturb.plan`)."""
        return prepare(self.model, item, target, roi, outside=self.outside, crop=self.crop, norm=self.norm,
                       incremental_mode=self.incremental)

    def _attribute(self, x: torch.Tensor, target: Target, roi: torch.Tensor | None, context: Context):
        maps, footprints = [], []
        for index, item in enumerate(x.split(1)):
            plan = self._plan(item, target, roi)
            ref = plan.ref
            inside = None if roi is None else roi.to(ref.x.device).float()
            with plan.active():
                regions = self._item_regions(ref, plan.reachable, context)
                fill = make_fill(self.fill, ref.x, generator=context.generator, pool=self.pool)
                estimator = self._estimator(ref, regions)
                attribution = engine.run(self.model, ref, regions, fill, estimator, roi, plan.scorer, context,
                                         desc=self.name)
            figures = plan.figures(engine.MaskedFill(ref.x, regions, fill, inside), context)
            maps.append(attribution[None])
            footprints.append(ref.target.support(tuple(item.shape[2:])))
            context.record(index, self._item_stats(ref, regions, estimator, figures))
        footprint = None if any(f is None for f in footprints) else torch.stack(footprints)
        return torch.stack(maps), footprint
