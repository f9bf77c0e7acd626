"""The PdCR figures for a causal-blocks explanation (PdCR, arXiv 2602.20511): the ATE map over the image in red (negative:
the original content supports the segmentation) and blue (positive: it hurts) with the target region marked, a
pie chart of positive, negative and zero blocks, and a colour bar annotated with the smallest and largest ATE.

A 3D map is shown on the slice where |ATE| is largest. PNGs are drawn with the Agg canvas and written atomically.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Mapping

import numpy as np

from segxai.atomic import write_bytes
from segxai.errors import SegxaiError
from segxai.report.overlay import _plan, _plane, draw_underlay, new_figure, png_bytes

if TYPE_CHECKING:
    from segxai.explanation import Explanation

CMAP = "RdBu"  # red for negative ATE, white at 0, blue for positive (the paper's colours)
MAP_ALPHA = 0.7  # the paper blends 0.7 x heatmap with 0.3 x image
PIE_COLOURS = {"positive": "tab:blue", "negative": "tab:red", "zero": "lightgrey"}


def save_ate_overlay(path: str | Path, image: np.ndarray, ate: np.ndarray, region: np.ndarray | None = None,
                     *, title: str = "block ATE") -> Path:
    """The signed `(*spatial)` ATE map over `image` (`(C, *spatial)`) on a scale symmetric about 0, with the
    target `region` outlined in green."""
    ate = np.asarray(ate, dtype=np.float64)
    image = np.asarray(image, dtype=np.float64)
    if image.shape[1:] != ate.shape or ate.ndim not in (2, 3):
        raise SegxaiError(f"image {image.shape} and ATE map {ate.shape} must be (C, *spatial) and (*spatial), 2D or 3D")
    plan = _plan(ate.shape, -1, None, np.abs(ate) if ate.any() else None)
    fig = new_figure(5.0, 5.0)
    ax = fig.add_subplot()
    draw_underlay(ax, image, plan)
    limit = max(float(np.abs(ate).max()), 1e-12)
    ax.imshow(_plane(ate, plan), cmap=CMAP, vmin=-limit, vmax=limit, alpha=MAP_ALPHA, interpolation="nearest")
    if region is not None and np.any(_plane(np.asarray(region, bool), plan)):
        ax.contour(_plane(np.asarray(region, float), plan), levels=[0.5], colors="lime", linewidths=1.5)
    ax.set_title(title if plan is None else f"{title}\nslice {plan[1]}, axis {plan[0]}")
    return write_bytes(path, png_bytes(fig))


def save_block_pie(path: str | Path, counts: Mapping[str, int]) -> Path:
    """Fractions of blocks with positive, negative and zero ATE."""
    labels = [k for k in PIE_COLOURS if counts.get(k, 0) > 0]
    if not labels:
        raise SegxaiError(f"no block to plot in {dict(counts)}")
    fig = new_figure(4.0, 4.0)
    ax = fig.add_subplot()
    ax.pie([counts[k] for k in labels], labels=[f"{k} ({counts[k]})" for k in labels],
           colors=[PIE_COLOURS[k] for k in labels], autopct="%1.1f%%")
    ax.set_title("blocks by sign of ATE")
    return write_bytes(path, png_bytes(fig))


def save_colour_bar(path: str | Path, ate: np.ndarray, *, unit: str = "Dice points") -> Path:
    """The overlay's colour scale, annotated with the smallest and largest ATE."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    ate = np.asarray(ate, dtype=np.float64)
    limit = max(float(np.abs(ate).max()), 1e-12)
    fig = new_figure(5.0, 1.2)
    ax = fig.add_subplot()
    bar = fig.colorbar(ScalarMappable(Normalize(-limit, limit), CMAP), cax=ax, orientation="horizontal")
    bar.set_label(f"ATE ({unit}); min {ate.min():.3g}, max {ate.max():.3g}")
    return write_bytes(path, png_bytes(fig))


def save_causal_figures(explanation: Explanation, out_dir: str | Path, *, name: str = "causal") -> dict[str, Path]:
    """Write the overlay, pie chart and colour bar of a single-input `CausalBlocks` explanation into `out_dir`."""
    counts = explanation.stats.get("block_counts")
    if explanation.batched or explanation.inputs is None or counts is None:
        raise SegxaiError("save_causal_figures needs an unbatched CausalBlocks explanation that kept its input")
    ate = explanation.attribution[0].numpy()
    region = None if explanation.target_mask is None else explanation.target_mask.numpy()
    out = Path(out_dir)
    return {
        "overlay": save_ate_overlay(out / f"{name}_overlay.png", explanation.inputs.numpy(), ate, region),
        "pie": save_block_pie(out / f"{name}_pie.png", counts),
        "bar": save_colour_bar(out / f"{name}_bar.png", ate),
    }
