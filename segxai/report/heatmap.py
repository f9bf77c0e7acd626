"""A target x segment heat map: which structures an explained target's attribution falls on.

Values are densities (a segment's share of |attribution| over its share of the grid, 1 = as its size predicts),
drawn on a log scale centred on 1 so that leaning on a structure (red) and avoiding it (blue) read alike; each
cell is annotated with its value. PNGs are drawn with the Agg canvas and written atomically.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from segxai.atomic import write_bytes
from segxai.errors import SegxaiError
from segxai.report.overlay import new_figure, png_bytes

FLOOR = 1e-3  # densities below this are drawn as this (log scale)


def save_heatmap(path: str | Path, matrix: np.ndarray, rows: Sequence[str], columns: Sequence[str], *,
                 title: str = "", label: str = "density") -> Path:
    """Draw `matrix` (`(len(rows), len(columns))`, non-negative; NaN = no value) as a log-scale heat map.

    Args:
        path: the PNG to write.
        matrix: the values.
        rows: the row labels (targets).
        columns: the column labels (segments).
        title: the figure title.
        label: the colour bar's label.
    Returns:
        The path written.
    """
    values = np.asarray(matrix, dtype=np.float64)
    if values.shape != (len(rows), len(columns)) or values.size == 0:
        raise SegxaiError(f"a heat map of {len(rows)} x {len(columns)} labels needs such a matrix, not {values.shape}")
    if np.any(values[np.isfinite(values)] < 0):
        raise SegxaiError("heat-map values are densities and cannot be negative")
    logs = np.log10(np.clip(values, FLOOR, None))
    limit = max(float(np.nanmax(np.abs(logs))) if np.isfinite(logs).any() else 0.0, 0.5)
    fig = new_figure(1.6 + 0.75 * len(columns), 1.4 + 0.45 * len(rows))
    ax = fig.add_subplot()
    image = ax.imshow(np.ma.masked_invalid(logs), cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto")
    ax.set_xticks(range(len(columns)), labels=list(columns), rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), labels=list(rows), fontsize=8)
    for (i, j), value in np.ndenumerate(values):
        if np.isfinite(value):
            ax.text(j, i, f"{value:.2g}", ha="center", va="center", fontsize=7)
    bar = fig.colorbar(image, ax=ax)
    bar.set_label(f"log10 {label}", fontsize=7)
    if title:
        ax.set_title(title, fontsize=9)
    return write_bytes(path, png_bytes(fig))
