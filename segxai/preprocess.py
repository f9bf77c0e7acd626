"""Intensity normalisation the network was trained with, stored in its checkpoint and applied before explaining."""
from __future__ import annotations

from typing import Any

import numpy as np

from segxai.errors import SegxaiError


def normalize_intensity(image: np.ndarray, spec: dict[str, Any] | None) -> np.ndarray:
    """Apply a normalisation `spec` to a `(C, *spatial)` image and return float32.

    Kinds: {"kind": "window", "low": L, "high": H} clips to [L, H] and scales to [0, 1] (CT in HU);
    {"kind": "zscore_nonzero"} z-scores each channel over its non-zero voxels (skull-stripped MRI);
    {"kind": "scale", "factor": f} multiplies (8-bit photos: 1/255); {"kind": "equalize"} replaces each value by
    its rank in its channel's histogram (scikit-image's `equalize_hist`, in [0, 1]): it assumes no units, so one
    spec reads CT and MR, and it spreads the soft-tissue range that a min-max scaling of CT squeezes between air
    and bone; {"kind": "none"} or None leaves values.
    """
    image = np.asarray(image, dtype=np.float32)
    if not np.isfinite(image).all():  # before a window clips an infinity into range
        bad = int((~np.isfinite(image)).sum())
        raise SegxaiError(f"the image contains {bad} NaN or infinite value(s); clean or mask them first")
    if spec is not None and not isinstance(spec, dict):
        raise SegxaiError(f"an intensity normalisation is a dict such as {{'kind': 'window', 'low': -200, "
                          f"'high': 700}}, not {spec!r}")
    kind = "none" if spec is None else spec.get("kind", "none")
    if kind == "none":
        return image
    if kind == "window":
        low, high = _number(spec, "low"), _number(spec, "high")
        if not high > low:
            raise SegxaiError(f"intensity window needs high > low, got [{low}, {high}]")
        return ((np.clip(image, low, high) - low) / (high - low)).astype(np.float32)
    if kind == "zscore_nonzero":
        out = np.zeros_like(image)
        for channel, values in enumerate(image):
            inside = values != 0
            if inside.any():
                mean, std = values[inside].mean(), values[inside].std()
                out[channel][inside] = (values[inside] - mean) / (std if std > 0 else 1.0)
        return out
    if kind == "equalize":
        from skimage.exposure import equalize_hist

        return np.stack([equalize_hist(values, nbins=1024) if np.ptp(values) > 0 else np.zeros_like(values)
                         for values in image]).astype(np.float32)
    if kind == "scale":
        return (image * _number(spec, "factor")).astype(np.float32)
    raise SegxaiError(f"unknown intensity normalisation {kind!r}; use window, zscore_nonzero, equalize, scale "
                      "or none")


def _number(spec: dict[str, Any], key: str) -> float:
    """A finite number of an intensity normalisation, or an error naming the key."""
    value = spec.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
        raise SegxaiError(f"intensity normalisation {spec.get('kind')!r} needs a finite number {key!r}, "
                          f"got {value!r}")
    return float(value)
