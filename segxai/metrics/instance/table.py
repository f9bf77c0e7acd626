"""The per-instance table: one row per explained lesion with its type, size, modality shares, rings and peak."""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from segxai.errors import SegxaiError
from segxai.explanation import Explanation
from segxai.instances import (
    LesionTypes,
)
from segxai.metrics.instance.saliency import (
    SaliencyLike,
    axis_spacing,
    dilate,
    inside_vs_rings,
    lesion_mask,
    modality_share,
    peak_saliency,
    saliency_array,
)


def instance_table(
    saliency: Mapping[int, SaliencyLike] | Sequence[SaliencyLike],
    types: LesionTypes,
    *,
    channel: int = 0,
    channel_names: Sequence[str] | None = None,
    margin: int = 3,
    rings: int = 3,
    connectivity: int | None = None,
    spacing: Sequence[float] | None = None,
) -> list[dict[str, Any]]:
    """One row per explained instance: id, type, voxels, volume, peak saliency, inside and ring means (of
    `channel`, FLAIR in the paper) and each channel's share of |saliency| over the lesion dilated `margin` times.

    `saliency` holds one map per instance (instance explanations differ per lesion): a mapping from lesion id
    (instances not in it are skipped) or a sequence in the order of `types.lesions`. Write it with `write_csv`.
    """
    if isinstance(saliency, Mapping):
        maps = dict(saliency)
    elif len(saliency) == len(types.lesions):
        maps = dict(zip((lesion.id for lesion in types.lesions), saliency))
    else:
        raise SegxaiError(f"got {len(saliency)} saliency maps for {len(types.lesions)} lesions")
    unknown = set(maps) - {lesion.id for lesion in types.lesions}
    if unknown:
        raise SegxaiError(f"saliency given for unknown lesion id(s) {sorted(unknown)}")
    voxel_volume = 1.0 if spacing is None else math.prod(axis_spacing(spacing, types.predicted.ndim))
    return [
        _instance_row({"id": lesion.id, "type": lesion.type, "source": lesion.source, "label": lesion.label},
                      types.mask(lesion), maps[lesion.id], channel, channel_names, margin, rings, connectivity,
                      voxel_volume)
        for lesion in types.lesions if lesion.id in maps
    ]


def instance_rows(
    explanations: Sequence[Explanation],
    *,
    channel: int = 0,
    channel_names: Sequence[str] | None = None,
    margin: int = 3,
    rings: int = 3,
    connectivity: int | None = None,
    spacing: Sequence[float] | None = None,
) -> list[dict[str, Any]]:
    """The `instance_table` rows of `segxai.explain_instances` results: each explanation's stats name its
    instance and type, and its `target_mask` holds the instance's voxels."""
    rows = []
    for explanation in explanations:
        stats = explanation.stats
        if explanation.target_mask is None or "instance" not in stats:
            raise SegxaiError("instance_rows takes the explanations explain_instances returns (one per instance)")
        mask = lesion_mask(explanation.target_mask)
        voxel_volume = 1.0 if spacing is None else math.prod(axis_spacing(spacing, mask.ndim))
        rows.append(_instance_row({"id": stats["instance"], "type": stats["instance_type"]}, mask, explanation,
                                  channel, channel_names, margin, rings, connectivity, voxel_volume))
    return rows


def _instance_row(fields: dict[str, Any], mask: np.ndarray, saliency: SaliencyLike, channel: int,
                  channel_names: Sequence[str] | None, margin: int, rings: int, connectivity: int | None,
                  voxel_volume: float) -> dict[str, Any]:
    values, _ = saliency_array(saliency, mask.shape)
    if not 0 <= channel < len(values):
        raise SegxaiError(f"channel {channel} is out of range for a saliency with {len(values)} channel(s)")
    names = list(channel_names) if channel_names is not None else [f"c{c}" for c in range(len(values))]
    if len(names) != len(values):
        raise SegxaiError(f"{len(names)} channel names for a saliency with {len(values)} channel(s)")
    shares = modality_share(values, dilate(mask, margin, connectivity))
    return {
        **fields,
        "voxels": int(mask.sum()),
        "volume": float(mask.sum()) * voxel_volume,
        "peak": peak_saliency(values[channel], mask, margin=margin, connectivity=connectivity),
        **inside_vs_rings(values[channel], mask, rings=rings, connectivity=connectivity),
        **{f"share_{name}": float(share) for name, share in zip(names, shares)},
    }
