"""Connected-component instances of a binary mask, in 2D and 3D, numbered as SciPy numbers them."""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from segxai.errors import SegxaiError


def label_instances(mask: np.ndarray, connectivity: int | None = None, min_size: int = 1) -> np.ndarray:
    """Label the connected components of `mask` 1..N in scan order, dropping those under `min_size` voxels.

    `connectivity` is SciPy's rank (1 = faces only, ndim = full); the default `ndim - 1` gives 4-connectivity
    in 2D and 18-connectivity in 3D. Numbers stay in scan order after small components are dropped.
    """
    mask = np.asarray(mask, dtype=bool)
    rank = mask.ndim - 1 if connectivity is None else int(connectivity)
    if not 1 <= rank <= max(mask.ndim, 1):
        raise SegxaiError(f"connectivity must be between 1 and {mask.ndim} for a {mask.ndim}D mask, not {connectivity}")
    labels, count = ndimage.label(mask, structure=ndimage.generate_binary_structure(mask.ndim, rank))
    if min_size > 1 and count:
        sizes = np.bincount(labels.ravel(), minlength=count + 1)
        keep = sizes >= min_size
        keep[0] = False
        renumber = np.zeros(count + 1, dtype=labels.dtype)
        renumber[keep] = np.arange(1, int(keep.sum()) + 1)
        labels = renumber[labels]
    return labels
