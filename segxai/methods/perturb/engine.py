"""The one batched perturbation engine: regions x fill x estimator, restricted to an ROI and computed on a crop.

The cost of a perturbation explanation is (number of perturbed passes) x (cost of one pass). The engine cuts
the first by generating only regions that touch the ROI within one receptive field (measured by a gradient
probe) of the voxels the target reads, and the second by running the network on a crop: those voxels grown by
the receptive field, where the target's outputs are exact. When the receptive field is global (instance norm,
attention) the full input is used.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from segxai.errors import SegxaiError
from segxai.methods.base import Context
from segxai.methods.perturb.estimators import Estimator
from segxai.methods.perturb.fills import Fill
from segxai.methods.perturb.regions import Regions
from segxai.model import SegModel, SegOutput
from segxai.progress import progress_bar
from segxai.roi import CropPlan, crop_plan, receptive_field
from segxai.targets import Target, evaluate

Outside = Literal["keep", "zero"]
# Crops start and end on multiples of this, so strided layers (U-Nets down-sample by up to 16) keep their phase.
CROP_ALIGNMENT = 16
# A crop saves little when it keeps most of the input; then the full input is used.
MIN_CROP_SAVING = 0.8


@dataclass
class Reference:
    """The unperturbed input and what the network made of it: the bound target and its score."""

    x: torch.Tensor
    output: SegOutput
    target: Target
    score: torch.Tensor


@dataclass
class Crop:
    """Where the network runs (`outer`) and the exact part of its output that is used (`inner`)."""

    outer: CropPlan
    inner: CropPlan
    target: Target | None
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def inner_in_outer(self) -> tuple[slice, ...]:
        return tuple(slice(i.start - o.start, i.stop - o.start) for i, o in zip(self.inner.slices, self.outer.slices))


def reference(model: SegModel, x: torch.Tensor, target: Target, roi: torch.Tensor | None, outside: Outside) -> Reference:
    """Run the clean input once (blanked outside the ROI when `outside="zero"`) and bind the target to it."""
    if outside not in ("keep", "zero"):
        raise SegxaiError(f"outside must be 'keep' or 'zero', not {outside!r}")
    if outside == "zero" and roi is not None:
        x = x * roi.to(x.device)
    with torch.no_grad():
        output = model(x)
        bound = target.bind(output)
        score = evaluate(bound, output)
    return Reference(x, output, bound, score)


def reach(model: SegModel, ref: Reference, roi: torch.Tensor | None) -> torch.Tensor | None:
    """The part of the ROI whose perturbation can change the target: the ROI within one receptive field of
    the voxels the target reads. Regions elsewhere have exactly no effect, so they are not evaluated.

    Returns the ROI itself when nothing is known (no ROI, a target that reads any voxel, a global receptive
    field), and raises when the ROI lies wholly out of the target's reach."""
    if roi is None:
        return None
    shape = tuple(ref.x.shape[2:])
    support = ref.target.support(shape)
    radius = None if support is None else receptive_field(model, ref.x)
    if radius is None:
        return roi
    zone = torch.zeros(shape, dtype=torch.bool)
    zone[crop_plan(support, margin=radius).slices] = True
    reachable = roi.cpu() & zone
    if not reachable.any():
        raise SegxaiError("the ROI lies farther than the network's receptive field from the target's voxels, so "
                          "no perturbation inside it can change the target; choose an ROI near the target")
    return reachable.to(roi.device)


def plan_crop(model: SegModel, ref: Reference, roi: torch.Tensor | None, crop: Literal["auto", "none"]) -> Crop | None:
    """The crop to compute on, or None for the full input (no ROI, crop="none", a global receptive field,
    a target that reads the whole grid, or too small a saving).

    A target that can be scored on a crop (`Target.crop`) needs only its own voxels plus one receptive field;
    otherwise the output is pasted back over the ROI grown by one receptive field, computed on that box grown
    by one more."""
    if crop not in ("auto", "none"):
        raise SegxaiError(f"crop must be 'auto' or 'none', not {crop!r}")
    if crop == "none" or roi is None:
        return None
    shape = tuple(ref.x.shape[2:])
    support = ref.target.support(shape)
    if support is None:
        return None
    radius = receptive_field(model, ref.x)
    if radius is None:
        return None
    inner = crop_plan(support, margin=0)
    target = ref.target.crop(inner.slices)
    if target is None:
        region = roi.cpu() | support
        inner = crop_plan(region, margin=radius)
        outer = crop_plan(region, margin=tuple(2 * r for r in radius), multiple=CROP_ALIGNMENT)
    else:
        outer = crop_plan(support, margin=radius, multiple=CROP_ALIGNMENT)
    kept = torch.tensor(outer.crop_shape).prod() / torch.tensor(shape).prod()
    misaligned = any(c % CROP_ALIGNMENT and c != n for c, n in zip(outer.crop_shape, shape))
    if outer.full or kept > MIN_CROP_SAVING or misaligned:
        return None
    return Crop(outer, inner, target, {"receptive_field": list(radius), "crop_shape": list(outer.crop_shape)})


def run(
    model: SegModel,
    ref: Reference,
    regions: Regions,
    fill: Fill,
    estimator: Estimator,
    roi: torch.Tensor | None,
    crop: Crop | None,
    context: Context,
    desc: str,
) -> torch.Tensor:
    """Score every region's perturbed input in batches and feed the estimator; returns its `(*spatial)` map."""
    device = ref.x.device
    inside = None if roi is None else roi.to(device).float()
    total = len(regions)
    if total == 0:
        raise SegxaiError("no perturbation region touches the ROI; use a smaller window or a larger ROI")
    starts = range(0, total, context.batch_size)
    for start in progress_bar(starts, enabled=context.progress, total=len(starts), desc=desc):
        stop = min(start + context.batch_size, total)
        masks = regions.masks(start, stop).to(device)
        if inside is not None:
            masks = masks * inside
        weights = masks[:, None]
        perturbed = ref.x * (1.0 - weights) + fill(start, stop - start) * weights
        with torch.no_grad():
            scores = _score(model, ref, perturbed, crop)
        estimator.update(masks, scores, regions.features(start, stop))
    attribution = estimator.result()
    return attribution if inside is None else attribution * inside


def _score(model: SegModel, ref: Reference, perturbed: torch.Tensor, crop: Crop | None) -> torch.Tensor:
    if crop is None:
        return evaluate(ref.target, model(perturbed))
    logits = model(crop.outer.crop(perturbed)).logits[(..., *crop.inner_in_outer)]
    if crop.target is not None:
        return evaluate(crop.target, SegOutput(logits, ref.output.activation, ref.output.threshold))
    full = ref.output.logits.expand(len(perturbed), *ref.output.logits.shape[1:]).clone()
    full[(..., *crop.inner.slices)] = logits
    return evaluate(ref.target, SegOutput(full, ref.output.activation, ref.output.threshold))
