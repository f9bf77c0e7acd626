"""Localisation metrics: does an explanation point at the organ or lesion it should?

They accept an `Explanation` (reduced over channels with `reduce`, signed sum by default) or a spatial map
on the mask's grid, so maps from any method, or loaded from disk, are judged the same way. These measure
localisation, not faithfulness: an ROI-restricted map scores well almost by construction, which is why
`roi_baseline` ("explanation = ROI") belongs beside them.
"""
from __future__ import annotations

import numpy as np
import torch

from segxai.errors import SegxaiError
from segxai.explanation import Explanation, Reduce
from segxai.metrics.overlap import MaskLike, as_mask, dice, iou

MapLike = Explanation | torch.Tensor | np.ndarray


def spatial_map(explanation_or_map: MapLike, reduce: Reduce = "sum") -> torch.Tensor:
    """A finite float CPU map: an Explanation's channel-reduced map, or the given array as it is."""
    if isinstance(explanation_or_map, Explanation):
        if explanation_or_map.batched:
            raise SegxaiError("metrics judge one image's explanation; explain the images one at a time")
        values = explanation_or_map.channel_map(reduce)
    elif isinstance(explanation_or_map, np.ndarray):
        if not np.issubdtype(explanation_or_map.dtype, np.number):
            raise SegxaiError(f"the map has non-numeric dtype {explanation_or_map.dtype}")
        values = torch.from_numpy(np.ascontiguousarray(explanation_or_map))
    elif isinstance(explanation_or_map, torch.Tensor):
        values = explanation_or_map.detach()
    else:
        raise SegxaiError(
            f"expected an Explanation, a torch.Tensor or a numpy array, not {type(explanation_or_map).__name__}"
        )
    values = values.cpu().double()
    if not bool(torch.isfinite(values).all()):
        raise SegxaiError("the map contains NaN or infinite values")
    return values


def binarize_map(
    values: torch.Tensor,
    *,
    threshold: float | None = None,
    top_k: float | None = None,
    within: torch.Tensor | None = None,
) -> torch.Tensor:
    """The binarised explanation, with `Explanation.binarize`'s rules (min-max-normalised map >= threshold, or
    the top_k fraction of voxels), applied only to the voxels of `within` when given: the normalisation and the
    top-k fraction are then taken over that region, and voxels outside it are never selected."""
    region = values if within is None else values[within]
    # One binarisation rule for the library: reuse Explanation's on the (possibly restricted) values.
    selected = Explanation(region[None]).binarize(threshold=threshold, top_k=top_k)
    if within is None:
        return selected
    mask = torch.zeros_like(within)
    mask[within] = selected
    return mask


def explanation_overlap(
    explanation_or_map: MapLike,
    mask: MaskLike,
    *,
    threshold: float | None = None,
    top_k: float | None = None,
    reduce: Reduce = "sum",
    within: MaskLike | None = None,
    empty: float = 1.0,
) -> dict[str, float]:
    """Dice and IoU of the binarised explanation against `mask` (the XAI-CLIP localisation score).

    Give exactly one of `threshold` (on the min-max-normalised map, in 0..1) or `top_k` (a fraction of
    voxels). By default the whole grid is normalised, as XAI-CLIP normalises the whole map, so restricted and
    unrestricted maps are binarised by the same rule; `within` (e.g. the ROI) normalises and selects only
    inside that region instead. `empty` is the score when both masks are empty.
    """
    values, target = _map_and_mask(explanation_or_map, mask, reduce)
    region = None if within is None else _region(within, target.shape)
    selected = binarize_map(values, threshold=threshold, top_k=top_k, within=region)
    return {"dice": dice(selected, target, empty), "iou": iou(selected, target, empty)}


def roi_baseline(roi: MaskLike, mask: MaskLike, *, empty: float = 1.0) -> dict[str, float]:
    """Dice and IoU of the trivial explanation "the ROI itself" against `mask`: what an ROI-restricted map
    gets for free, to report beside `explanation_overlap`."""
    return {"dice": dice(roi, mask, empty), "iou": iou(roi, mask, empty)}


def energy_inside(explanation_or_map: MapLike, mask: MaskLike, *, reduce: Reduce = "sum") -> float:
    """The share of positive attribution mass inside `mask`, in [0, 1]; negative values are ignored, and a map
    with no positive mass scores 0."""
    values, region = _map_and_mask(explanation_or_map, mask, reduce)
    positive = values.clamp_min(0)
    total = float(positive.sum())
    return float(positive[region].sum()) / total if total > 0 else 0.0


def pointing_game(
    explanation_or_map: MapLike, mask: MaskLike, tolerance: float = 0, *, reduce: Reduce = "sum"
) -> bool:
    """Whether the map's maximum lies within `tolerance` voxels (Euclidean) of `mask`.

    The first maximum in scan order is used; a constant map points nowhere and an empty mask cannot be hit,
    so both are misses.
    """
    if tolerance < 0:
        raise SegxaiError(f"tolerance is a distance in voxels and cannot be negative, got {tolerance}")
    values, region = _map_and_mask(explanation_or_map, mask, reduce)
    if not bool(region.any()) or float(values.max()) == float(values.min()):
        return False
    peak = torch.tensor(np.unravel_index(int(values.argmax()), tuple(values.shape)))
    distance = (region.nonzero() - peak).double().norm(dim=1).min()
    return bool(distance <= tolerance)


def _map_and_mask(explanation_or_map: MapLike, mask: MaskLike, reduce: Reduce) -> tuple[torch.Tensor, torch.Tensor]:
    values = spatial_map(explanation_or_map, reduce)
    region = as_mask(mask)
    if values.shape != region.shape:
        raise SegxaiError(
            f"the map has shape {tuple(values.shape)} but the mask has {tuple(region.shape)}; pass an Explanation "
            "or a spatial map (e.g. explanation.channel_map()) on the mask's grid"
        )
    return values, region


def _region(within: MaskLike, shape: torch.Size) -> torch.Tensor:
    region = as_mask(within, "within")
    if region.shape != shape:
        raise SegxaiError(f"within has shape {tuple(region.shape)} but the mask has {tuple(shape)}")
    if not bool(region.any()):
        raise SegxaiError("within is empty: it selects no voxel")
    return region
