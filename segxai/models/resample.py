"""Nearest-neighbour index maps between two grids covering the same extent (voxel centres aligned as in
scikit-image's and nnU-Net's resizing), for carrying masks and positions between an image and a model's grid."""
from __future__ import annotations

from typing import Sequence

import numpy as np


def nearest_indices(source: Sequence[int], target: Sequence[int]) -> list[np.ndarray]:
    """Per axis, the source index each target voxel reads (`out = source[np.ix_(*indices)]`)."""
    return [np.clip(((np.arange(t) + 0.5) * s / t).astype(int), 0, s - 1) for s, t in zip(source, target)]


def scatter_indices(points: np.ndarray, source: Sequence[int], target: Sequence[int]) -> np.ndarray:
    """The target voxel containing each source voxel centre, `(N, dims)` -> `(N, dims)` (so no marked voxel is
    lost when the target grid is coarser)."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, len(source))
    scale = np.asarray(target, np.float64) / np.asarray(source, np.float64)
    return np.clip(((points + 0.5) * scale).astype(int), 0, np.asarray(target) - 1)
