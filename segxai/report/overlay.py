"""PNG overlays of attribution maps on the image, with mask and ROI contours, for 2D and 3D inputs.

A 3D input is shown as one 2D slice: the one where the map is strongest, unless a slice is given. Drawing
uses matplotlib's object API with the Agg canvas (no pyplot, no global state) and is imported on first use.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

import numpy as np

from segxai.atomic import write_bytes
from segxai.errors import SegxaiError

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure as MplFigure

_MAX_CHANNELS = 4
_DPI = 100
_OVERLAY_INCHES = 5.0
_MONTAGE_PANEL_INCHES = 4.5
_ROBUST_PERCENTILE = 99.5
_ALPHA = 0.85  # opacity of the map at its colour limit; weaker values are more transparent
_CONTOURS = (("target", "lime", "solid"), ("ROI", "yellow", "dashed"))

Plan = tuple[int, int] | None  # (spatial axis, slice index) for 3D, None for 2D


def choose_slice(volume: np.ndarray, weights: np.ndarray | None = None, axis: int = -1) -> int:
    """Index along `axis` of a 3D array with the largest sum of |weights| (default |volume|).

    Ties go to the slice nearest the middle, so an empty or flat map shows the centre of the volume.
    """
    volume = np.asarray(volume)
    if volume.ndim != 3:
        raise SegxaiError(f"choose_slice needs a 3D spatial array, got shape {volume.shape}")
    w = np.abs(volume if weights is None else np.asarray(weights, dtype=np.float64))
    if w.shape != volume.shape:
        raise SegxaiError(f"weights shape {w.shape} does not match volume shape {volume.shape}")
    ax = _normalise_axis(axis)
    sums = w.sum(axis=tuple(a for a in range(3) if a != ax), dtype=np.float64)
    best = np.flatnonzero(np.isclose(sums, sums.max(), rtol=1e-9, atol=0.0))
    return int(best[np.argmin(np.abs(best - (len(sums) - 1) / 2))])


def save_overlay(
    path: str | Path,
    image: np.ndarray,
    attribution: np.ndarray | None = None,
    *,
    mask: np.ndarray | None = None,
    roi: np.ndarray | None = None,
    title: str | None = None,
    slice_index: int | None = None,
    axis: int = -1,
    signed: bool = True,
    alpha: float = _ALPHA,
) -> Path:
    """Save a 5x5 in, 100 dpi PNG of `attribution` over `image`, with `mask` (solid) and `roi` (dashed) contours.

    `image` is `(*spatial)` or `(C, *spatial)` with C in 1..4: channel 0 is the grey underlay, except a 2D
    3-channel image, shown as RGB. Without any map or mask a 3D array whose first axis is <= 4 is read as
    `(C, H, W)`. `attribution` is a signed, unnormalised `(*spatial)` map: `signed=True` uses "RdBu_r"
    symmetric about 0, `signed=False` shows |attribution| with "inferno". The colour limit is the 99.5th
    percentile of the non-zero |values| in the shown slice, not the maximum, so that a few extreme voxels
    (common in gradient maps) do not wash out the rest; the colour bar keeps real values and marks the
    clipped tail with an arrow. Pixels where the map is exactly 0 stay transparent. For 3D, one slice along
    `axis` is shown (`slice_index`, else the strongest slice of |attribution|, else of mask/roi, else the
    middle) and "slice k/N, axis a" (0-based k, N slices) is added to the title; 2D ignores both.
    """
    if not 0.0 <= alpha <= 1.0:
        raise SegxaiError(f"alpha must be in [0, 1], got {alpha}")
    arrays = _validate(image, {"attribution": attribution, "mask": mask, "roi": roi})
    channels = arrays.pop("image")
    weights = next((a for a in arrays.values() if a is not None and a.any()), None)
    plan = _plan(channels.shape[1:], axis, slice_index, weights)
    fig = new_figure(_OVERLAY_INCHES, _OVERLAY_INCHES)
    ax = fig.add_subplot()
    draw_underlay(ax, channels, plan)
    if attribution is not None:
        draw_map(fig, ax, _plane(arrays["attribution"], plan), signed, alpha)
    draw_contours(ax, _plane(arrays["mask"], plan), _plane(arrays["roi"], plan), legend=True)
    ax.set_title(_title(title, plan, channels.shape[1:]), fontsize=11)
    return write_bytes(path, png_bytes(fig))


def save_montage(
    path: str | Path,
    image: np.ndarray,
    maps: Mapping[str, np.ndarray],
    *,
    mask: np.ndarray | None = None,
    slice_index: int | None = None,
    axis: int = -1,
) -> Path:
    """Save a PNG with one column per map (titled by its key) over the same underlay and slice.

    Each map gets its own symmetric colour scale and colour bar, as in `save_overlay`, so methods with
    different units can be compared by shape. For 3D the slice is `slice_index`, else the one where the maps,
    each scaled to max |value| 1, are jointly strongest, else the mask's strongest slice.
    """
    if not maps:
        raise SegxaiError("save_montage needs at least one map")
    arrays = _validate(image, {**{f"map {name!r}": m for name, m in maps.items()}, "mask": mask})
    channels, mask_arr = arrays.pop("image"), arrays.pop("mask")
    weights = _joint_weights(list(arrays.values()))
    plan = _plan(channels.shape[1:], axis, slice_index, mask_arr if weights is None else weights)
    fig = new_figure(_MONTAGE_PANEL_INCHES * len(maps), _MONTAGE_PANEL_INCHES)
    for i, (name, arr) in enumerate(zip(maps, arrays.values())):
        ax = fig.add_subplot(1, len(maps), i + 1)
        draw_underlay(ax, channels, plan)
        draw_map(fig, ax, _plane(arr, plan), True, _ALPHA)
        draw_contours(ax, _plane(mask_arr, plan), None, legend=i == 0)
        ax.set_title(str(name), fontsize=11)
    if plan is not None:
        fig.suptitle(_title(None, plan, channels.shape[1:]), fontsize=11)
    return write_bytes(path, png_bytes(fig))


def _validate(image: np.ndarray, named: dict[str, np.ndarray | None]) -> dict[str, np.ndarray | None]:
    """Check shapes and values; return "image" as `(C, *spatial)` plus the named arrays (None if not given)."""
    img = _finite("image", image)
    given = {name: _finite(name, a) for name, a in named.items() if a is not None}
    spatial = _spatial_shape(img.shape, given)
    for name, arr in given.items():
        if arr.shape != spatial:
            raise SegxaiError(f"{name} shape {arr.shape} does not match image spatial shape {spatial} "
                              f"(image shape {img.shape})")
    channels = img[None] if img.shape == spatial else img
    return {"image": channels, **{name: given.get(name) for name in named}}


def _finite(name: str, array: np.ndarray) -> np.ndarray:
    """A real-valued, finite array, without copying (3D volumes can be large; only planes get converted)."""
    arr = np.asarray(array)
    if arr.dtype.kind not in "biuf":
        raise SegxaiError(f"{name} must be a real-valued array, got dtype {arr.dtype}")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise SegxaiError(f"{name} contains NaN or infinite values")
    return arr


def _spatial_shape(image_shape: tuple[int, ...], given: dict[str, np.ndarray]) -> tuple[int, ...]:
    """The image's spatial shape: `image_shape` or, with a leading channel axis, `image_shape[1:]`."""
    candidates = [s for s in (image_shape, image_shape[1:]) if len(s) in (2, 3)]
    if len(image_shape) > 2 and not 1 <= image_shape[0] <= _MAX_CHANNELS:
        candidates = [s for s in candidates if s == image_shape]
    if not candidates:
        raise SegxaiError(f"image shape {image_shape} is not (*spatial) or (C, *spatial) with 2 or 3 "
                          f"spatial dims and C in 1..{_MAX_CHANNELS}")
    first = next(iter(given.values()), None)
    return next((s for s in candidates if first is not None and s == first.shape), candidates[-1])


def _normalise_axis(axis: int) -> int:
    if not -3 <= axis < 3:
        raise SegxaiError(f"axis {axis} is out of range for a 3D volume")
    return axis % 3


def _plan(spatial: tuple[int, ...], axis: int, slice_index: int | None, weights: np.ndarray | None) -> Plan:
    """Which slice of a 3D volume to show; None for 2D, which is shown whole."""
    if len(spatial) == 2:
        return None
    ax = _normalise_axis(axis)
    n = spatial[ax]
    if slice_index is None:
        slice_index = (n - 1) // 2 if weights is None else choose_slice(weights, axis=ax)
    if not 0 <= slice_index < n:
        raise SegxaiError(f"slice_index {slice_index} is out of range for {n} slices along axis {ax}")
    return ax, int(slice_index)


def _joint_weights(maps: list[np.ndarray]) -> np.ndarray | None:
    """Sum of |map| / max|map| over the non-zero maps, so no map dominates the slice choice by its units."""
    scaled = [np.abs(m) / np.abs(m).max() for m in maps if np.any(m)]
    return sum(scaled) if scaled else None


def _plane(array: np.ndarray | None, plan: Plan) -> np.ndarray | None:
    """The shown 2D plane of a spatial array."""
    if array is None or plan is None:
        return array
    return np.take(array, plan[1], axis=plan[0])


def _title(title: str | None, plan: Plan, spatial: tuple[int, ...]) -> str:
    if plan is None:
        return title or ""
    where = f"slice {plan[1]}/{spatial[plan[0]]}, axis {plan[0]}"
    return f"{title}\n{where}" if title else where


def new_figure(width: float, height: float) -> MplFigure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=_DPI, layout="compressed")


def png_bytes(fig: MplFigure) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    buffer = io.BytesIO()
    FigureCanvasAgg(fig).print_png(buffer)
    return buffer.getvalue()


def draw_underlay(ax: Axes, channels: np.ndarray, plan: Plan) -> None:
    """Grey channel 0 scaled over the whole volume (consistent across slices), or RGB for a 2D 3-channel image."""
    ax.set_axis_off()
    if channels.shape[0] == 3 and channels.ndim == 3:
        rgb = np.moveaxis(channels, 0, -1).astype(np.float64)
        ax.imshow((rgb - rgb.min()) / max(np.ptp(rgb), 1e-12), interpolation="nearest")
        return
    grey = channels[0]
    low, high = float(grey.min()), float(grey.max())
    plane = _plane(grey, plan).astype(np.float64)
    ax.imshow(plane, cmap="gray", vmin=low, vmax=max(high, low + 1e-12), interpolation="nearest")


def robust_limit(attribution: np.ndarray) -> float:
    """The colour limit of a map: the 99.5th percentile of its non-zero |values| (1 for an all-zero map)."""
    nonzero = np.abs(np.asarray(attribution, dtype=np.float64))
    nonzero = nonzero[nonzero != 0]
    return float(np.percentile(nonzero, _ROBUST_PERCENTILE)) if nonzero.size else 1.0


def draw_map(fig: MplFigure, ax: Axes, attribution: np.ndarray, signed: bool, alpha: float,
             limit: float | None = None, label: str | None = None, bar: bool = True) -> None:
    """The map with exact zeros transparent, windowed symmetrically at `limit` (default: its robust limit),
    with a colour bar in real units labelled `label` (default "attribution" or "|attribution|")."""
    import matplotlib
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    shown = np.asarray(attribution, dtype=np.float64)
    shown = shown if signed else np.abs(shown)
    nonzero = np.abs(shown[shown != 0])
    limit = robust_limit(shown) if limit is None else float(limit)
    cmap = matplotlib.colormaps["RdBu_r" if signed else "inferno"].with_extremes(bad=(0.0, 0.0, 0.0, 0.0))
    norm = Normalize(-limit if signed else 0.0, limit)
    clipped = nonzero.size > 0 and nonzero.max() > limit
    extend = ("both" if signed else "max") if clipped else "neither"
    # Opacity grows with |value| (full `alpha` at the colour limit), so weak values fade into the underlay
    # instead of veiling it, and exact zeros stay fully transparent.
    opacity = alpha * np.clip(np.abs(shown) / limit, 0.0, 1.0) ** 0.5
    ax.imshow(np.ma.masked_equal(shown, 0.0), cmap=cmap, norm=norm, alpha=opacity, interpolation="nearest")
    if not bar:
        return
    # The bar is opaque (easier to read than the blended overlay) and, as its width is a fraction of the
    # image width, widened for tall images so that it spans their height.
    rows, cols = shown.shape
    colour_bar = fig.colorbar(ScalarMappable(norm, cmap), ax=ax, fraction=0.05 * max(1.0, rows / cols), pad=0.02,
                              extend=extend)
    colour_bar.formatter.set_powerlimits((-2, 3))  # 1e-3-sized gradients read as "x1e-3" ticks, not 0.00075
    colour_bar.set_label(label or ("attribution" if signed else "|attribution|"))


def draw_contours(ax: Axes, mask: np.ndarray | None, roi: np.ndarray | None, legend: bool) -> None:
    """Outline mask > 0 (solid lime) and roi > 0 (dashed yellow); a region filling the plane has no outline."""
    from matplotlib.lines import Line2D

    handles = []
    for (label, colour, style), region in zip(_CONTOURS, (mask, roi)):
        inside = None if region is None else region > 0
        if inside is None or inside.all() or not inside.any():
            continue
        ax.contour(inside.astype(float), levels=[0.5], colors=colour, linestyles=style, linewidths=1.5)
        handles.append(Line2D([], [], color=colour, linestyle=style, linewidth=1.5, label=label))
    if legend and handles:
        ax.legend(handles=handles, loc="lower right", fontsize=8, framealpha=0.7)
