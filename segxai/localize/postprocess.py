"""Turn a localizer's probability map into an ROI: threshold, largest component(s), hole filling, margin.

When nothing survives, a given fallback ROI (a box, the segmenter's prediction) is used with a warning, so an
explanation can still run; without a fallback an empty localisation is an error.
"""
from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch
from scipy import ndimage

from segxai.errors import SegxaiError
from segxai.instances import label_instances
from segxai.roi import MaskLike, from_mask

if TYPE_CHECKING:
    from segxai.localize.model import Localizer


def roi_from_probability(
    probability: MaskLike,
    *,
    threshold: float = 0.5,
    components: int = 1,
    fill_holes: bool = True,
    margin: float = 0,
    spacing: Sequence[float] | None = None,
    fallback: MaskLike | None = None,
) -> torch.Tensor:
    """A boolean ROI from a probability map: `>= threshold`, the `components` largest connected components
    (0 keeps all), holes filled, grown by `margin` voxels (mm with `spacing`); `fallback` when that is empty."""
    prob = probability.detach().cpu().numpy() if isinstance(probability, torch.Tensor) else np.asarray(probability)
    if prob.size == 0 or not np.isfinite(prob).all():
        raise SegxaiError("the probability map is empty or holds NaN/infinite values")
    if not 0 < threshold < 1:
        raise SegxaiError(f"threshold must be between 0 and 1, not {threshold}")
    if int(components) != components or components < 0:
        raise SegxaiError(f"components must be a non-negative integer (0 keeps all), not {components}")
    mask = keep_largest(prob >= threshold, int(components))
    if fill_holes:
        mask = ndimage.binary_fill_holes(mask)
    if mask.any():
        return from_mask(mask, margin, spacing)
    if fallback is None:
        raise SegxaiError(f"the localizer found no voxel with probability >= {threshold} and no fallback ROI was given")
    warnings.warn(f"the localizer found no voxel with probability >= {threshold}; using the fallback ROI", stacklevel=2)
    return from_mask(fallback, margin, spacing)


def keep_largest(mask: np.ndarray, components: int) -> np.ndarray:
    """The `components` largest connected components of `mask` (all of them when 0); ties keep scan order."""
    labels = label_instances(mask)
    count = int(labels.max())
    if components == 0 or count <= components:
        return labels > 0
    sizes = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    kept = np.argsort(-sizes, kind="stable")[:components] + 1
    return np.isin(labels, kept)


def roi_from_text(prompt: str, localizer: Localizer, image: MaskLike, *, margin: float = 8, threshold: float = 0.5,
                  components: int = 1, spacing: Sequence[float] | None = None,
                  fallback: MaskLike | None = None) -> torch.Tensor:
    """The ROI of the structure named by `prompt` on one raw `(C, *spatial)` image (a trained `Localizer`),
    post-processed by `roi_from_probability`; the default margin of 8 voxels keeps boundary context."""
    probability = localizer.predict(image, prompt)
    return roi_from_probability(probability, threshold=threshold, components=components, margin=margin,
                                spacing=spacing, fallback=fallback)
