"""Which structures does a prediction lean on? Attribution mass per segment of a label map (Agg²Exp, WACV 2025).

For one explained target, `segment_mass` sums the attribution (signed, and absolute) of every input channel over
each segment of a label map (the model's prediction or a reference) and normalises it by the segment's size. The
scale-free figure is `density`: the segment's share of |attribution| over its share of the grid (1 = no more
than its size predicts, 10 = ten times more), so cases, methods and map scales compare. Rows of many targets make
the per-case target x segment table (`segment_matrix`); rows of many cases give the per-dataset distribution
(`segment_distribution`) and the cases that stand out (`segment_outliers`, a robust z-score from median/MAD).
Works on any grid (2D, 3D) and any method's map.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from segxai.errors import SegxaiError
from segxai.explanation import Explanation
from segxai.metrics.localization import MapLike, spatial_map

ALL_CHANNELS = "all"  # the row of a segment summed over input channels
KEYS = ("method", "target", "roi", "segment", "channel")  # what a dataset's rows are grouped by, where present
MAD_SCALE = 0.6745  # 1 / the 0.75 quantile of the standard normal: makes MAD-based z comparable to an sd-based one
MEAN_AD_SCALE = 1.2533  # sqrt(pi / 2): the same for the mean absolute deviation, the fallback when MAD is 0


def segment_mass(
    attribution: MapLike,
    labels: np.ndarray | torch.Tensor,
    *,
    names: Mapping[int, str] | None = None,
    channel_names: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """The attribution mass in each segment of `labels`, per input channel and summed over channels.

    Args:
        attribution: an `Explanation`, a `(C, *spatial)` attribution or a `(*spatial)` map on the labels' grid.
        labels: a non-negative integer label map `(*spatial)`; every label present is a segment (0 included).
        names: segment names by label (default: the label as text).
        channel_names: input channel names (default: `c0`, `c1`, ...).
    Returns:
        One row per channel (and `"all"`) and segment: `segment`, `name`, `voxels`, `channel`, `signed` and
        `absolute` (sums), `signed_mean` and `absolute_mean` (per voxel), `absolute_share` (of the channel's
        total |attribution|; NaN for a channel without mass: there is nothing to place) and `density`
        (`absolute_share` / the segment's share of voxels).
    """
    values = _channels(attribution, labels)
    segments, index = _segments(labels, tuple(values.shape[1:]))
    channels = _channel_names(channel_names, values.shape[0])
    counts = torch.bincount(index, minlength=len(segments)).double()
    total_voxels = float(index.numel())
    flat = values.flatten(1)
    signed = torch.stack([torch.bincount(index, weights=channel, minlength=len(segments)) for channel in flat])
    absolute = torch.stack([torch.bincount(index, weights=channel.abs(), minlength=len(segments)) for channel in flat])
    if len(channels) > 1:
        channels = [*channels, ALL_CHANNELS]
        signed, absolute = torch.cat([signed, signed.sum(0, keepdim=True)]), torch.cat([absolute, absolute.sum(0, keepdim=True)])
    names = names or {}
    rows = []
    for c, channel in enumerate(channels):
        total = float(absolute[c].sum())
        for s, label in enumerate(segments):
            share = float(absolute[c, s]) / total if total > 0 else float("nan")
            rows.append({"segment": label, "name": str(names.get(label, label)), "voxels": int(counts[s]),
                         "channel": channel, "signed": float(signed[c, s]), "absolute": float(absolute[c, s]),
                         "signed_mean": float(signed[c, s] / counts[s]), "absolute_mean": float(absolute[c, s] / counts[s]),
                         "absolute_share": share, "density": share / (float(counts[s]) / total_voxels)})
    return rows


def segment_matrix(
    rows: Sequence[Mapping[str, Any]], value: str = "density", *, channel: str | None = None
) -> tuple[list[str], list[str], np.ndarray]:
    """The target x segment table of `value` from rows that carry a `target` (e.g. one case's rows of several
    targets, or a dataset's `segment_distribution` with `value="median"`).

    Args:
        rows: rows of `segment_mass` with a `target` key added.
        value: the column to tabulate.
        channel: the channel to show (default: `"all"` when present, else the only channel).
    Returns:
        The target labels, the segment names, and a `(targets, segments)` array (NaN where a target's rows
        lack a segment).
    """
    chosen = [r for r in rows if r.get("channel") == _pick_channel(rows, channel)]
    if not chosen:
        raise SegxaiError(f"no segment rows for channel {channel!r}")
    targets = list(dict.fromkeys(str(r["target"]) for r in chosen))
    segments = list(dict.fromkeys(str(r["name"]) for r in sorted(chosen, key=lambda r: r["segment"])))
    matrix = np.full((len(targets), len(segments)), np.nan)
    for r in chosen:
        matrix[targets.index(str(r["target"])), segments.index(str(r["name"]))] = float(r[value])
    return targets, segments, matrix


def segment_distribution(rows: Sequence[Mapping[str, Any]], value: str = "density") -> list[dict[str, Any]]:
    """The distribution of `value` across cases for every (method, target, ROI, segment, channel) present.

    Args:
        rows: `segment_mass` rows of many cases, each with a `case` key (and any of `KEYS`).
        value: the column to summarise.
    Returns:
        One row per group with a finite value (NaN ones, maps without mass, are skipped): the keys, `name`,
        `cases` (with a finite value), `median`, `mad` (median absolute deviation), `q25`,
        `q75`, `mean`, `min` and `max`.
    """
    table = []
    for key, members in _groups(rows).items():
        values = np.array([float(r[value]) for r in members])
        values = values[np.isfinite(values)]
        if values.size == 0:
            continue
        median = float(np.median(values))
        table.append({**dict(key), "name": members[0]["name"], "cases": len(values), "median": median,
                      "mad": float(np.median(np.abs(values - median))), "q25": float(np.quantile(values, 0.25)),
                      "q75": float(np.quantile(values, 0.75)), "mean": float(values.mean()),
                      "min": float(values.min()), "max": float(values.max())})
    return table


def robust_z(values: Sequence[float]) -> np.ndarray:
    """`0.6745 (x - median) / MAD` per value; where the MAD is 0 (over half the values equal) the mean absolute
    deviation scaled by 1.2533 stands in, and where that is 0 too every z is 0."""
    x = np.asarray(values, dtype=np.float64)
    deviation = np.abs(x - np.median(x))
    mad = float(np.median(deviation))
    if mad > 0:
        return MAD_SCALE * (x - np.median(x)) / mad
    mean_ad = float(deviation.mean())
    return (x - np.median(x)) / (MEAN_AD_SCALE * mean_ad) if mean_ad > 0 else np.zeros_like(x)


def segment_outliers(
    rows: Sequence[Mapping[str, Any]], value: str = "density", *, threshold: float = 3.5
) -> list[dict[str, Any]]:
    """Every case's robust z-score of `value` within its (method, target, ROI, segment, channel) group.

    Args:
        rows: `segment_mass` rows of many cases, each with a `case` key.
        value: the column to score.
        threshold: |z| above which a case is flagged (3.5, Iglewicz and Hoaglin's rule).
    Returns:
        One row per case and group with a finite value: the keys, `case`, `name`, `value`, `z` and `outlier`.
    """
    if not threshold > 0:
        raise SegxaiError(f"threshold must be positive, not {threshold!r}")
    table = []
    for key, members in _groups(rows).items():
        members = [m for m in members if np.isfinite(float(m[value]))]
        if not members:
            continue
        for member, z in zip(members, robust_z([float(r[value]) for r in members])):
            table.append({**dict(key), "case": member["case"], "name": member["name"], "value": float(member[value]),
                          "z": float(z), "outlier": bool(abs(z) > threshold)})
    return table


def _channels(attribution: MapLike, labels: np.ndarray | torch.Tensor) -> torch.Tensor:
    """The attribution as a finite `(C, *spatial)` double tensor on the labels' grid."""
    if isinstance(attribution, Explanation):
        if attribution.batched:
            raise SegxaiError("segment mass is computed for one image's explanation; explain the images one at a time")
        values = spatial_map(attribution.attribution)
    else:
        values = spatial_map(attribution)
    spatial = tuple(labels.shape)
    if tuple(values.shape) == spatial:
        values = values[None]
    if tuple(values.shape[1:]) != spatial:
        raise SegxaiError(f"the attribution has shape {tuple(values.shape)}; expected (C, *{spatial}) or {spatial}, "
                          "the label map's grid")
    return values


def _segments(labels: np.ndarray | torch.Tensor, spatial: tuple[int, ...]) -> tuple[list[int], torch.Tensor]:
    """The labels present and each voxel's segment index (flat)."""
    array = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if array.dtype == bool:
        array = array.astype(np.int64)
    if not np.issubdtype(array.dtype, np.integer):
        if not np.issubdtype(array.dtype, np.floating) or not np.all(np.mod(array, 1) == 0):
            raise SegxaiError(f"labels must be an integer label map, not values of dtype {array.dtype}")
    if array.size == 0 or array.min() < 0:
        raise SegxaiError("labels must be a non-empty map of non-negative labels")
    present, index = np.unique(array.astype(np.int64), return_inverse=True)
    return [int(v) for v in present], torch.from_numpy(index.reshape(-1).astype(np.int64))


def _channel_names(names: Sequence[str] | None, count: int) -> list[str]:
    if names is None:
        return [f"c{i}" for i in range(count)]
    if len(names) != count:
        raise SegxaiError(f"{len(names)} channel names for an attribution of {count} channel(s)")
    if ALL_CHANNELS in names:
        raise SegxaiError(f"{ALL_CHANNELS!r} names the sum over channels; choose another channel name")
    return [str(n) for n in names]


def _pick_channel(rows: Sequence[Mapping[str, Any]], channel: str | None) -> str | None:
    if channel is not None:
        return channel
    present = list(dict.fromkeys(r.get("channel") for r in rows))
    return ALL_CHANNELS if ALL_CHANNELS in present else (present[0] if present else None)


def _groups(rows: Sequence[Mapping[str, Any]]) -> dict[tuple, list[Mapping[str, Any]]]:
    """Rows grouped by the `KEYS` they carry; every row needs a `case`, and a case appears once per group."""
    if not rows:
        raise SegxaiError("no segment rows to summarise")
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for row in rows:
        if "case" not in row:
            raise SegxaiError("dataset segment rows need a `case` key")
        groups.setdefault(tuple((k, row[k]) for k in KEYS if k in row), []).append(row)
    for key, members in groups.items():
        cases = [m["case"] for m in members]
        if len(set(cases)) != len(cases):
            raise SegxaiError(f"a case appears more than once in the group {dict(key)}; add the key that tells them apart")
    return groups

