"""How alike two explanation maps are: Spearman rank correlation and SSIM of the channel-summed maps.

Used by the sanity check (a map should change when the model is randomised) and the stability check (it should
not change much under small input noise). Both ignore the maps' units: ranks for Spearman, and each map scaled
by its own max |value| for SSIM.
"""
from __future__ import annotations

import numpy as np

from segxai.errors import SegxaiError
from segxai.metrics.localization import MapLike, spatial_map

_SSIM_WINDOW = 7


def map_similarity(a: MapLike, b: MapLike) -> dict[str, float]:
    """`{"spearman", "ssim"}` of two maps on one grid (Explanations are summed over channels).

    A constant map has no ranks: it is 1.0 similar to an identical map and 0.0 to any other.
    """
    x, y = spatial_map(a).numpy(), spatial_map(b).numpy()
    if x.shape != y.shape:
        raise SegxaiError(f"cannot compare maps of shapes {x.shape} and {y.shape}")
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        same = float(np.array_equal(x, y))
        return {"spearman": same, "ssim": same}
    from scipy.stats import spearmanr
    from skimage.metrics import structural_similarity

    rho = float(spearmanr(x.ravel(), y.ravel()).statistic)
    window = min(_SSIM_WINDOW, *(s if s % 2 else s - 1 for s in x.shape))
    ssim = float(structural_similarity(_scaled(x), _scaled(y), data_range=2.0, win_size=max(window, 3)))
    return {"spearman": rho, "ssim": ssim}


def _scaled(values: np.ndarray) -> np.ndarray:
    return values / np.abs(values).max()
