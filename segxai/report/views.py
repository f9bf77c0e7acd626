"""Three orthogonal views of a 3D map through the target's centre, as a clinician reads a scan.

Each panel is the slice through the centre along one spatial axis; the target is outlined (never filled) and
the map shares one symmetric window (its robust limit over the whole volume) across the three panels, with a
labelled colour bar. Given the image's affine the volume is first turned (axis permutation and flips, exact,
no resampling) so that the panels are axial, coronal and sagittal in radiological convention: the patient's
right on the viewer's left, anterior up in the axial view, superior up in the others; orientation letters
mark every edge and pixels keep the voxels' aspect. Without an affine the panels are the array's own axes,
unlabelled. A 2D input is drawn by `save_overlay`.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from segxai.atomic import write_bytes
from segxai.errors import SegxaiError
from segxai.grid import Reoriented, SameGrid, grid_values
from segxai.report.overlay import (
    _ALPHA,
    _validate,
    draw_contours,
    draw_map,
    draw_underlay,
    new_figure,
    png_bytes,
    robust_limit,
    save_overlay,
)

_PANEL_INCHES = 4.0
# The display orientation: axis 0 runs superior -> inferior, axis 1 anterior -> posterior, axis 2 right -> left,
# so slicing along axis 0, 1, 2 gives the axial, coronal and sagittal planes already in radiological layout.
_DISPLAY_CODES = ("I", "P", "L")
_DISPLAY_LETTERS = (("S", "I"), ("A", "P"), ("R", "L"))
_DISPLAY_NAMES = ("axial", "coronal", "sagittal")


def view_centre(shape: Sequence[int], mask: np.ndarray | None = None,
                attribution: np.ndarray | None = None) -> tuple[int, ...]:
    """The voxel the views go through: the target's centroid (the nearest target voxel to it, so a ring-shaped
    target is still cut), else the strongest voxel of the map, else the middle of the grid."""
    if mask is not None and np.any(mask):
        voxels = np.argwhere(np.asarray(mask) > 0)
        centroid = voxels.mean(0)
        return tuple(int(v) for v in voxels[np.argmin(((voxels - centroid) ** 2).sum(1))])
    if attribution is not None and np.any(attribution):
        return tuple(int(v) for v in np.unravel_index(np.argmax(np.abs(attribution)), np.shape(attribution)))
    return tuple((int(n) - 1) // 2 for n in shape)


def save_views(
    path: str | Path,
    image: np.ndarray,
    attribution: np.ndarray | None = None,
    *,
    mask: np.ndarray | None = None,
    roi: np.ndarray | None = None,
    title: str | None = None,
    signed: bool = True,
    centre: Sequence[int] | None = None,
    affine: np.ndarray | None = None,
    alpha: float = _ALPHA,
) -> Path:
    """Save a PNG of three orthogonal views (3D) or one overlay (2D) of `attribution` over `image`.

    Args:
        path: the PNG to write.
        image: `(*spatial)` or `(C, *spatial)`; channel 0 is the grey underlay.
        attribution: the signed, unnormalised map `(*spatial)`, or None.
        mask: the target, outlined in solid lime; roi: outlined dashed yellow.
        title: the figure title.
        signed: symmetric "RdBu_r" window about 0 (False: |map| with "inferno").
        centre: the voxel the views go through, in the array's own indices (default `view_centre`).
        affine: voxel -> world (RAS mm) of the arrays; gives radiological views with orientation letters.
        alpha: the map's opacity at its window limit.
    Returns:
        The path written.
    """
    arrays = _validate(image, {"attribution": attribution, "mask": mask, "roi": roi})
    channels = arrays.pop("image")
    spatial = channels.shape[1:]
    if len(spatial) == 2:
        return save_overlay(path, image, attribution, mask=mask, roi=roi, title=title, signed=signed, alpha=alpha)
    at_target = centre is None and arrays["mask"] is not None and bool(np.any(arrays["mask"]))
    centre = tuple(int(c) for c in (centre if centre is not None else view_centre(spatial, arrays["mask"],
                                                                                  arrays["attribution"])))
    if len(centre) != 3 or any(not 0 <= c < n for c, n in zip(centre, spatial)):
        raise SegxaiError(f"centre {centre} is outside the grid {spatial}")
    oriented = affine is not None
    turn = Reoriented.of(spatial, affine, _DISPLAY_CODES) if oriented else SameGrid(tuple(spatial))
    spacing = np.linalg.norm(turn.model_affine(affine)[:3, :3], axis=0) if oriented else np.ones(3)
    shown = {name: None if a is None else grid_values(turn, a[None])[0] for name, a in arrays.items()}
    channels, where = grid_values(turn, channels), turn.index_to_model(centre)
    limit = None if shown["attribution"] is None else robust_limit(shown["attribution"])
    fig = new_figure(3 * _PANEL_INCHES + 0.8, _PANEL_INCHES + 0.6)
    for axis in range(3):
        ax = fig.add_subplot(1, 3, axis + 1)
        draw_underlay(ax, channels, (axis, where[axis]))
        plane = lambda name: None if shown[name] is None else np.take(shown[name], where[axis], axis=axis)
        if limit is not None:
            draw_map(fig, ax, plane("attribution"), signed, alpha, limit=limit, bar=axis == 2,
                     label=f"{'attribution' if signed else '|attribution|'} (window ±{limit:.3g})")
        draw_contours(ax, plane("mask"), plane("roi"), legend=axis == 0)
        rows, cols = [a for a in range(3) if a != axis]
        ax.set_aspect(spacing[rows] / spacing[cols])
        ax.set_title(_DISPLAY_NAMES[axis] if oriented else f"axis {axis}, slice {where[axis]}/{spatial[axis]}",
                     fontsize=10)
        if oriented:
            _draw_letters(ax, [_DISPLAY_LETTERS[rows], _DISPLAY_LETTERS[cols]])
    through = f"through voxel {centre}" + (" (target centre)" if at_target else "")
    fig.suptitle(f"{title}\n{through}" if title else through, fontsize=11)
    return write_bytes(path, png_bytes(fig))


def views_like(like: Any) -> Callable[..., Path]:
    """`save_views` bound to the geometry of `like` (a `segxai.io.Image`; its affine orients 3D views), as the
    `overlay` argument of `Explanation.save`."""
    affine = getattr(like, "affine", None)
    return functools.partial(save_views, affine=affine) if affine is not None else save_views


def _draw_letters(ax: Any, pairs: list[tuple[str, str]]) -> None:
    """Orientation letters at the edges: rows axis top/bottom, columns axis left/right."""
    (top, bottom), (left, right) = pairs
    style = dict(transform=ax.transAxes, color="white", fontsize=12, fontweight="bold", ha="center", va="center")
    ax.text(0.5, 0.97, top, **style)
    ax.text(0.5, 0.03, bottom, **style)
    ax.text(0.03, 0.5, left, **style)
    ax.text(0.97, 0.5, right, **style)
