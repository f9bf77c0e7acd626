"""Plots of instance-level saliency statistics (one image, many lesions): the radial profile across the lesion
border, each modality's share per lesion, and peak saliency grouped by lesion type (TP/FP/FN).

They take the rows of `segxai.metrics.instance_rows` and radial profiles, and write PNGs atomically with the
same Agg canvas as the overlays.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence

import numpy as np

from segxai.atomic import write_bytes
from segxai.errors import SegxaiError
from segxai.report.overlay import new_figure, png_bytes

TYPE_COLOURS = {"TP": "tab:green", "FP": "tab:red", "FN": "tab:blue", "predicted": "tab:grey"}


class Profile(Protocol):
    """A radial profile as `segxai.metrics.radial_profile` gives it: bin centres and mean saliency per bin."""

    distance: np.ndarray
    mean: np.ndarray


def save_radial_profiles(profiles: Mapping[int, Profile], types: Mapping[int, str], type_means: Mapping[str, Profile],
                         path: str | Path, *, channel_name: str = "") -> Path:
    """Mean saliency against signed distance to the lesion border (negative inside), one thin line per lesion
    coloured by its type and a thick line for each type's mean profile (`type_means`, computed by
    `segxai.metrics.mean_profiles`)."""
    if not profiles:
        raise SegxaiError("no radial profile to plot")
    fig = new_figure(6.0, 4.0)
    ax = fig.add_subplot()
    for lesion, profile in profiles.items():
        kind = types.get(lesion, "predicted")
        ax.plot(profile.distance, _first_channel(profile.mean), color=TYPE_COLOURS.get(kind, "black"), alpha=0.25,
                linewidth=0.8)
    for kind, mean in type_means.items():
        n = sum(types.get(lesion, "predicted") == kind for lesion in profiles)
        ax.plot(mean.distance, _first_channel(mean.mean), color=TYPE_COLOURS.get(kind, "black"), linewidth=2.2,
                label=f"{kind} (n={n})")
    ax.axvline(0, color="black", linewidth=0.8, linestyle="dashed")
    ax.axhline(0, color="black", linewidth=0.5)
    ax.set_xlabel("signed distance to the lesion border (voxels; < 0 inside)")
    ax.set_ylabel(f"mean saliency{f' ({channel_name})' if channel_name else ''}")
    ax.legend(frameon=False)
    return write_bytes(path, png_bytes(fig))


def save_modality_shares(rows: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Each lesion's share of |saliency| per modality (the `share_*` columns), as stacked horizontal bars."""
    columns = [key for key in (rows[0] if rows else {}) if key.startswith("share_")]
    if not columns:
        raise SegxaiError("the rows hold no share_* columns to plot")
    fig = new_figure(6.0, 1.0 + 0.3 * len(rows))
    ax = fig.add_subplot()
    labels = [f"{row['id']} ({row['type']})" for row in rows]
    left = np.zeros(len(rows))
    for column in columns:
        values = np.array([float(row[column]) for row in rows])
        ax.barh(labels, values, left=left, label=column.removeprefix("share_"))
        left += values
    ax.set_xlim(0, 1)
    ax.invert_yaxis()
    ax.set_xlabel("share of |saliency| around the lesion")
    ax.legend(frameon=False, ncols=len(columns), loc="lower center", bbox_to_anchor=(0.5, 1.0))
    return write_bytes(path, png_bytes(fig))


def save_peak_by_type(rows: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Peak saliency of every lesion, one column of points per lesion type with its median marked."""
    if not rows:
        raise SegxaiError("no lesion rows to plot")
    kinds = [kind for kind in TYPE_COLOURS if any(row["type"] == kind for row in rows)]
    fig = new_figure(4.5, 4.0)
    ax = fig.add_subplot()
    jitter = np.random.default_rng(0)  # seeded: the same rows draw the same figure
    for position, kind in enumerate(kinds):
        peaks = np.array([float(row["peak"]) for row in rows if row["type"] == kind])
        ax.scatter(position + jitter.uniform(-0.12, 0.12, len(peaks)), peaks, color=TYPE_COLOURS[kind], alpha=0.8)
        ax.hlines(np.median(peaks), position - 0.25, position + 0.25, color="black")
    ax.set_xticks(range(len(kinds)), [f"{kind}\nn={sum(r['type'] == kind for r in rows)}" for kind in kinds])
    ax.set_ylabel("peak saliency (lesion dilated by the margin)")
    return write_bytes(path, png_bytes(fig))


def _first_channel(mean: np.ndarray) -> np.ndarray:
    return mean if mean.ndim == 1 else mean[0]
