"""Instance saliency statistics (Spagnolo et al., instance-level quantitative saliency): which modality a lesion's explanation uses, how saliency falls
off across the lesion border (signed distance, radial profile, rings) and its peak around the lesion.

A saliency map is `(*spatial)` or `(C, *spatial)` on the lesion mask's grid; a leading channel axis is kept in the
results. Neighbourhoods use the instances' connectivity: SciPy rank `ndim - 1` by default (18 in 3D)."""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from segxai.errors import SegxaiError
from segxai.explanation import Explanation
from segxai.metrics.overlap import MaskLike, as_mask

SaliencyLike = Explanation | torch.Tensor | np.ndarray


# ------------------------------------------------------------------------------------------- inputs
def lesion_mask(value: MaskLike, name: str = "lesion mask", *, nonempty: bool = True) -> np.ndarray:
    """A boolean numpy mask (via `as_mask`, so label or probability maps are refused), non-empty if asked."""
    mask = as_mask(value, name).numpy()
    if nonempty and not mask.any():
        raise SegxaiError(f"the {name} is empty: it selects no voxel")
    return mask


def saliency_array(value: SaliencyLike, shape: tuple[int, ...]) -> tuple[np.ndarray, bool]:
    """The map as finite float64 `(C, *shape)`, and whether it came with a channel axis."""
    if isinstance(value, Explanation):
        if value.batched:
            raise SegxaiError("instance statistics judge one image's explanation; pass one item of the batch")
        value = value.attribution
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if not isinstance(value, np.ndarray):
        raise SegxaiError(f"the saliency must be an array, tensor or Explanation, not {type(value).__name__}")
    if not (np.issubdtype(value.dtype, np.number) or value.dtype == bool):
        raise SegxaiError(f"the saliency has non-numeric dtype {value.dtype}")
    values = value.astype(np.float64)
    if values.shape == shape:
        values, channels = values[None], False
    elif values.shape[1:] == shape:
        channels = True
    else:
        raise SegxaiError(f"the saliency has shape {values.shape}; expected {shape} or (C, *{shape}) to match the mask")
    if not np.isfinite(values).all():
        raise SegxaiError("the saliency contains NaN or infinite values")
    return values, channels


def _structure(ndim: int, connectivity: int | None) -> np.ndarray:
    """The neighbourhood of one dilation step, of the same SciPy rank as `label_instances` uses."""
    rank = ndim - 1 if connectivity is None else int(connectivity)
    if not 1 <= rank <= max(ndim, 1):
        raise SegxaiError(f"connectivity must be between 1 and {ndim} for a {ndim}D mask, not {connectivity}")
    return ndimage.generate_binary_structure(ndim, rank)


def dilate(mask: MaskLike, steps: int, connectivity: int | None = None) -> np.ndarray:
    """`mask` dilated `steps` times by the connectivity neighbourhood (18-connected in 3D by default).

    Zero steps return the mask itself (SciPy would read `iterations=0` as "until nothing changes").
    """
    region = lesion_mask(mask, "mask", nonempty=False)
    if int(steps) != steps or steps < 0:
        raise SegxaiError(f"dilation steps must be a whole number >= 0, got {steps}")
    if steps == 0:
        return region.copy()
    return ndimage.binary_dilation(region, _structure(region.ndim, connectivity), iterations=int(steps))


def _select(values: np.ndarray, region: np.ndarray, channels: bool, reduce: Callable[..., np.ndarray]) -> Any:
    """`reduce` of each channel over `region`; NaN when the region is empty; a float without channels."""
    result = reduce(values[:, region], axis=1) if region.any() else np.full(len(values), np.nan)
    return result if channels else float(result[0])


# ------------------------------------------------------------------------------------------- modality share
def modality_share(saliency: SaliencyLike, region: MaskLike) -> np.ndarray:
    """Each channel's share of the total |saliency| inside `region`, `(C,)` summing to 1 (NaN if all zero).

    This is the FLAIR / (FLAIR + MPRAGE) ratio of the instance-saliency paper, for any number of modalities.
    """
    mask = lesion_mask(region, "region")
    values, _ = saliency_array(saliency, mask.shape)
    totals = np.abs(values[:, mask]).sum(axis=1)
    total = totals.sum()
    return totals / total if total > 0 else np.full(len(totals), np.nan)


# ------------------------------------------------------------------------------------------- radial profile
def signed_distance(lesion: MaskLike, spacing: Sequence[float] | None = None) -> np.ndarray:
    """Signed Euclidean distance to the lesion border: minus the distance to the nearest outside voxel inside
    the lesion (so border voxels are at -1), the distance to the nearest lesion voxel outside it (+1 next to
    it), in the units of `spacing` (voxels by default)."""
    mask = lesion_mask(lesion)
    if mask.all():
        raise SegxaiError("the lesion fills the whole grid: it has no border to measure distances from")
    sampling = None if spacing is None else axis_spacing(spacing, mask.ndim)
    outside = ndimage.distance_transform_edt(~mask, sampling=sampling)
    inside = ndimage.distance_transform_edt(mask, sampling=sampling)
    return np.where(mask, -inside, outside)


def axis_spacing(spacing: Sequence[float], ndim: int) -> tuple[float, ...]:
    values = tuple(float(s) for s in spacing)
    if len(values) != ndim or not all(math.isfinite(s) and s > 0 for s in values):
        raise SegxaiError(f"spacing must be {ndim} positive numbers, one per axis, not {tuple(spacing)}")
    return values


@dataclass
class RadialProfile:
    """Mean saliency per signed-distance bin: `distance` (bin centres), `mean` (`(bins,)` or `(C, bins)`),
    `count` (voxels per bin). Only bins holding voxels are listed."""

    distance: np.ndarray
    mean: np.ndarray
    count: np.ndarray

    def rows(self) -> list[dict[str, Any]]:
        """One row per bin (one mean column per channel), ready for `write_csv` or a plot."""
        means = self.mean if self.mean.ndim == 2 else self.mean[None]
        names = ["mean"] if self.mean.ndim == 1 else [f"mean_c{c}" for c in range(len(means))]
        return [
            {"distance": float(d), "voxels": int(n), **{name: float(m[i]) for name, m in zip(names, means)}}
            for i, (d, n) in enumerate(zip(self.distance, self.count))
        ]


def mean_profiles(profiles: Mapping[int, RadialProfile], types: Mapping[int, str]) -> dict[str, RadialProfile]:
    """The voxel-weighted mean radial profile of each lesion type ("predicted" for untyped lesions), over the
    distances any lesion of that type has."""
    groups: dict[str, list[RadialProfile]] = {}
    for lesion, profile in profiles.items():
        groups.setdefault(types.get(lesion, "predicted"), []).append(profile)
    means = {}
    for kind, group in groups.items():
        distance = np.unique(np.concatenate([p.distance for p in group]))
        first = group[0].mean
        sums = np.zeros((*first.shape[:-1], len(distance)))
        counts = np.zeros(len(distance))
        for profile in group:
            index = np.searchsorted(distance, profile.distance)
            sums[..., index] += profile.mean * profile.count
            counts[index] += profile.count
        means[kind] = RadialProfile(distance, sums / counts, counts.astype(np.int64))
    return means


def radial_profile(
    saliency: SaliencyLike,
    lesion: MaskLike,
    *,
    max_distance: float = 10.0,
    max_depth: float | None = None,
    step: float = 1.0,
    spacing: Sequence[float] | None = None,
) -> RadialProfile:
    """Mean saliency in shells of signed distance to the lesion border (Spagnolo et al., instance-level quantitative saliency).

    Bin j holds the voxels with signed distance in [(j - 1/2) step, (j + 1/2) step) and is centred at j·step:
    negative inside, positive outside. Voxels farther out than `max_distance` or deeper than `max_depth`
    (None: the whole lesion) are left out. The sign pattern the paper reports shows up as positive means at
    negative distances and negative means just outside.
    """
    if not (math.isfinite(step) and step > 0) or max_distance < 0 or (max_depth is not None and max_depth < 0):
        raise SegxaiError(f"step must be > 0 and the distance limits >= 0 (step={step}, max_distance="
                          f"{max_distance}, max_depth={max_depth})")
    distance = signed_distance(lesion, spacing)
    values, channels = saliency_array(saliency, distance.shape)
    keep = distance <= max_distance
    if max_depth is not None:
        keep &= distance >= -max_depth
    if not keep.any():
        raise SegxaiError(f"no voxel lies within max_distance={max_distance} and max_depth={max_depth}")
    bins = np.floor(distance[keep] / step + 0.5).astype(np.int64)
    offset = int(bins.min())
    count = np.bincount(bins - offset)
    sums = np.stack([np.bincount(bins - offset, weights=channel[keep], minlength=len(count)) for channel in values])
    filled = count > 0
    mean = sums[:, filled] / count[filled]
    centres = (np.flatnonzero(filled) + offset) * step
    return RadialProfile(centres, mean if channels else mean[0], count[filled])


def inside_vs_rings(
    saliency: SaliencyLike, lesion: MaskLike, *, rings: int = 3, width: int = 1, connectivity: int | None = None
) -> dict[str, Any]:
    """Mean saliency inside the lesion and in `rings` rings of `width` dilation steps around it.

    Ring j holds the voxels reached by dilating the lesion j·width times but not (j - 1)·width times, so ring 1
    is the immediate neighbourhood. Keys: "inside", "ring_1", ... ; a ring cut off by the grid edge is NaN.
    """
    mask = lesion_mask(lesion)
    values, channels = saliency_array(saliency, mask.shape)
    if int(rings) != rings or rings < 0 or int(width) != width or width < 1:
        raise SegxaiError(f"rings must be a whole number >= 0 and width one >= 1, got rings={rings}, width={width}")
    result = {"inside": _select(values, mask, channels, np.mean)}
    previous = mask
    for ring in range(1, int(rings) + 1):
        grown = dilate(previous, width, connectivity)
        result[f"ring_{ring}"] = _select(values, grown & ~previous, channels, np.mean)
        previous = grown
    return result


# ------------------------------------------------------------------------------------------- peak saliency
def peak_saliency(
    saliency: SaliencyLike,
    lesion: MaskLike,
    *,
    margin: int = 3,
    absolute: bool = False,
    connectivity: int | None = None,
) -> Any:
    """The peak (max) saliency over the lesion dilated `margin` times (default 3, as in Spagnolo et al., instance-level quantitative saliency).

    With `absolute`, the largest |saliency| instead. A float for a spatial map, `(C,)` with channels; the
    paper compares the FLAIR channel's peak between lesion types.
    """
    mask = lesion_mask(lesion)
    values, channels = saliency_array(saliency, mask.shape)
    region = dilate(mask, margin, connectivity)
    return _select(np.abs(values) if absolute else values, region, channels, np.max)
