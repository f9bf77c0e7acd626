"""Localisation scores that cannot be circular: trivial baselines on the case's own geometry, and leakage.

A map restricted to an ROI, or judged against the region that defines its target, scores well by construction
(on polyps the ROI alone reaches Dice 0.9). So every localisation score is shown beside what trivial maps of the
same case get under the same rule: the ROI itself, a blurred ROI, a blob of the ROI's area at the grid's
centre, and a blurred copy of the map (ROAR/ROAD-style scores reward blur). `leakage` is the share of
|attribution| outside the target's region (the DEA benchmark's off-target mass): 0 for a map confined to it.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from segxai.errors import SegxaiError
from segxai.explanation import Reduce
from segxai.metrics.localization import MapLike, energy_inside, explanation_overlap, pointing_game, spatial_map
from segxai.metrics.overlap import MaskLike, as_mask

BASELINES = ("roi", "blurred_roi", "centred_blob", "blurred_map")
SCORES = ("dice", "iou", "energy_inside", "pointing_game")


def gaussian_blur(values: torch.Tensor, sigma: float) -> torch.Tensor:
    """`values` (`(*spatial)`) smoothed by a Gaussian of `sigma` voxels on every axis (edges reflected)."""
    from scipy import ndimage

    if not sigma > 0:
        raise SegxaiError(f"the blur's sigma is in voxels and must be positive, not {sigma!r}")
    return torch.from_numpy(ndimage.gaussian_filter(values.double().numpy(), float(sigma)))


def centred_blob(shape: tuple[int, ...], voxels: int) -> torch.Tensor:
    """The `voxels` grid points nearest the grid's centre (a disc or ball, exactly that many; ties in scan order)."""
    total = int(np.prod(shape))
    if not 0 <= voxels <= total:
        raise SegxaiError(f"a blob of {voxels} voxels does not fit a grid of {total}")
    axes = torch.meshgrid(*(torch.arange(n, dtype=torch.float64) - (n - 1) / 2 for n in shape), indexing="ij")
    distance = sum(axis**2 for axis in axes).flatten()
    blob = torch.zeros(total, dtype=torch.bool)
    blob[torch.argsort(distance, stable=True)[:voxels]] = True
    return blob.view(shape)


def baseline_maps(explanation_or_map: MapLike, roi: MaskLike, *, sigma: float = 2.0,
                  reduce: Reduce = "sum") -> dict[str, torch.Tensor]:
    """The trivial maps of `BASELINES` on the map's grid.

    Args:
        explanation_or_map: the explanation (its blurred copy is a baseline).
        roi: the region a map gets for free: the ROI it was restricted to, else the target's own region.
        sigma: the blur, in voxels.
        reduce: how an Explanation's channels are reduced.
    Returns:
        The maps by name, each `(*spatial)` double.
    """
    values = spatial_map(explanation_or_map, reduce)
    region = as_mask(roi, "roi")
    if tuple(region.shape) != tuple(values.shape):
        raise SegxaiError(f"the ROI has shape {tuple(region.shape)} but the map has {tuple(values.shape)}")
    indicator = region.double()
    return {"roi": indicator, "blurred_roi": gaussian_blur(indicator, sigma),
            "centred_blob": centred_blob(tuple(region.shape), int(region.sum())).double(),
            "blurred_map": gaussian_blur(values, sigma)}


def leakage(explanation_or_map: MapLike, region: MaskLike, *, reduce: Reduce = "abs") -> float:
    """The share of |attribution| outside `region`, in [0, 1]: 0 for a map confined to it, 1 for one entirely
    outside; NaN for a map without mass (nothing to place).

    Args:
        explanation_or_map: the explanation or a map on the region's grid.
        region: the target's region (its footprint, or the ROI it may reach).
        reduce: how an Explanation's channels are reduced ("abs": the sum of |values| over channels).
    Returns:
        The share.
    """
    values = spatial_map(explanation_or_map, reduce).abs()
    inside = as_mask(region, "region")
    if tuple(inside.shape) != tuple(values.shape):
        raise SegxaiError(f"the region has shape {tuple(inside.shape)} but the map has {tuple(values.shape)}")
    total = float(values.sum())
    return float(values[~inside].sum()) / total if total > 0 else float("nan")


def localisation_scores(explanation_or_map: MapLike, mask: MaskLike, *, threshold: float = 0.5,
                        tolerance: float = 0.0, reduce: Reduce = "sum") -> dict[str, Any]:
    """The localisation scores of `SCORES` for one map against `mask` (the rules of `segxai.metrics`)."""
    return {**explanation_overlap(explanation_or_map, mask, threshold=threshold, reduce=reduce),
            "energy_inside": energy_inside(explanation_or_map, mask, reduce=reduce),
            "pointing_game": pointing_game(explanation_or_map, mask, tolerance, reduce=reduce)}


def scores_with_baselines(explanation_or_map: MapLike, mask: MaskLike, roi: MaskLike, *, threshold: float = 0.5,
                          tolerance: float = 0.0, sigma: float = 2.0, reduce: Reduce = "sum") -> dict[str, Any]:
    """One flat row: the map's localisation scores against `mask`, the same scores of every trivial baseline
    (`baseline_<name>_<score>`), the map's `leakage` outside `mask`, and `beats_roi_baseline` (the map's Dice
    above the ROI's; a method that does not is only restating the ROI)."""
    row = localisation_scores(explanation_or_map, mask, threshold=threshold, tolerance=tolerance, reduce=reduce)
    for name, values in baseline_maps(explanation_or_map, roi, sigma=sigma, reduce=reduce).items():
        scores = localisation_scores(values, mask, threshold=threshold, tolerance=tolerance)
        row.update({f"baseline_{name}_{key}": value for key, value in scores.items()})
    row["leakage"] = leakage(explanation_or_map, mask)
    row["beats_roi_baseline"] = bool(row["dice"] > row["baseline_roi_dice"])
    return row


def baseline_table(rows: list[Mapping[str, Any]], score: str = "dice", by: str = "method") -> list[dict[str, Any]]:
    """Means per `by` of a score for the maps and each baseline, with the leakage and the share of rows that
    beat the ROI baseline; `verdict` says when the mean does not beat it.

    Args:
        rows: rows of `scores_with_baselines` (with a `by` key).
        score: one of `SCORES`.
        by: the grouping column.
    Returns:
        One row per group.
    """
    if score not in SCORES:
        raise SegxaiError(f"score must be one of {', '.join(SCORES)}, not {score!r}")
    groups: dict[Any, list[Mapping[str, Any]]] = {}
    for row in rows:
        if score in row and f"baseline_roi_{score}" in row:
            groups.setdefault(row[by], []).append(row)
    table = []
    for key, members in groups.items():
        entry: dict[str, Any] = {by: key, "rows": len(members), score: _mean(members, score)}
        for name in BASELINES:
            entry[f"{name} {score}"] = _mean(members, f"baseline_{name}_{score}")
        entry["leakage"] = _mean(members, "leakage")
        entry["beats ROI (share of rows)"] = _mean(members, "beats_roi_baseline")
        entry["verdict"] = "beats the ROI" if entry[score] > entry[f"roi {score}"] else "does not beat the ROI baseline"
        table.append(entry)
    return table


def _mean(rows: list[Mapping[str, Any]], key: str) -> float:
    values = [float(r[key]) for r in rows if r.get(key) is not None and not np.isnan(float(r[key]))]
    return float(np.mean(values)) if values else float("nan")
