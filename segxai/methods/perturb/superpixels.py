"""Superpixels (2D) and supervoxels (3D): the interpretable features of LIME.

Medical intensities (HU, z-scores) have no fixed range, so every channel is first rescaled to [0, 1]; the
scikit-image segmenters then see the same kind of input a natural image gives them, and their usual
parameters keep their meaning.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
from skimage import segmentation

from segxai.errors import SegxaiError

METHODS_2D = ("slic", "felzenszwalb", "quickshift")
METHODS_3D = ("slic",)

# Defaults for [0, 1] inputs, overridable through `**options`. SLIC: a low compactness so that segments follow
# intensity edges rather than forming a regular grid, and no Lab conversion (channels are not colours).
# Felzenszwalb: XAI-CLIP's settings. Quickshift: lime_image's.
DEFAULTS: dict[str, dict[str, Any]] = {
    "slic": {"compactness": 0.1, "convert2lab": False},
    "felzenszwalb": {"scale": 100, "sigma": 0.5, "min_size": 50},
    "quickshift": {"kernel_size": 4, "max_dist": 200, "ratio": 0.2},
}


def check_method(method: str, spatial_dims: int | None = None) -> None:
    """Raise a SegxaiError naming the methods that work, for an unknown method or one not available in 3D."""
    if method not in METHODS_2D:
        raise SegxaiError(f"unknown superpixel method {method!r}; choose one of {', '.join(METHODS_2D)}")
    if spatial_dims == 3 and method not in METHODS_3D:
        raise SegxaiError(f"superpixel method {method!r} works only in 2D; 3D supervoxels support {', '.join(METHODS_3D)}")


def superpixels(image: np.ndarray, method: str = "slic", n_segments: int = 100, **options: Any) -> np.ndarray:
    """Segment a `(C, *spatial)` image into superpixels (2D: slic, felzenszwalb, quickshift; 3D: slic).

    Returns `(*spatial)` int labels numbered 0..n-1 without gaps. `n_segments` is SLIC's target count;
    Felzenszwalb and quickshift set their granularity through their own options (`scale`, `kernel_size`,
    `max_dist`). Quickshift follows lime_image and works in Lab colour: one channel is replicated into a grey
    RGB image, three channels are read as RGB, and any other count is averaged into one grey channel first.
    """
    array = np.asarray(image, dtype=np.float64)
    if array.ndim not in (3, 4) or array.shape[0] < 1:
        raise SegxaiError(f"superpixels need a (C, H, W) or (C, D, H, W) image, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise SegxaiError("the image has NaN or infinite values; superpixels need finite intensities")
    check_method(method, array.ndim - 1)
    if int(n_segments) < 1:
        raise SegxaiError(f"n_segments must be a positive int, not {n_segments!r}")
    labels = _SEGMENTERS[method](_unit_range(array), int(n_segments), {**DEFAULTS[method], **options})
    return np.unique(labels, return_inverse=True)[1].reshape(labels.shape)


def _unit_range(image: np.ndarray) -> np.ndarray:
    """Rescale each channel to [0, 1] (a constant channel becomes 0) and move channels last."""
    axes = tuple(range(1, image.ndim))
    low, high = image.min(axis=axes, keepdims=True), image.max(axis=axes, keepdims=True)
    scaled = (image - low) / np.where(high > low, high - low, 1.0)
    return np.moveaxis(scaled, 0, -1)


def _slic(image: np.ndarray, n_segments: int, options: dict[str, Any]) -> np.ndarray:
    return segmentation.slic(image, n_segments=n_segments, channel_axis=-1, start_label=0, **options)


def _felzenszwalb(image: np.ndarray, n_segments: int, options: dict[str, Any]) -> np.ndarray:
    return segmentation.felzenszwalb(image, channel_axis=-1, **options)


def _quickshift(image: np.ndarray, n_segments: int, options: dict[str, Any]) -> np.ndarray:
    if image.shape[-1] != 3:
        image = np.repeat(image.mean(axis=-1, keepdims=True), 3, axis=-1)
    return segmentation.quickshift(image, channel_axis=-1, **options)


_SEGMENTERS: dict[str, Callable[[np.ndarray, int, dict[str, Any]], np.ndarray]] = {
    "slic": _slic,
    "felzenszwalb": _felzenszwalb,
    "quickshift": _quickshift,
}
