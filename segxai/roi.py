"""Regions of interest: where perturbations may act, and the crop that computation may be limited to.

An ROI is a boolean mask on the input's spatial grid. `crop_plan` turns an ROI into the smallest box that still
gives exact results for it: the ROI's bounding box grown by the network's receptive field (measured with a
gradient probe when not given), aligned to the network's down-sampling factor.
"""
from __future__ import annotations

from dataclasses import dataclass
import warnings
from typing import Any, Protocol, Sequence

import numpy as np
import torch
from scipy import ndimage

from segxai.errors import SegxaiError
from segxai.instances import label_instances
from segxai.model import SegModel

MaskLike = torch.Tensor | np.ndarray



class TextLocalizer(Protocol):
    """Anything that maps a raw `(C, *spatial)` image and a prompt to a probability map on its grid
    (`segxai.localize.Localizer` is one)."""

    def predict(self, image: MaskLike, prompt: str) -> torch.Tensor: ...


def as_roi(roi: MaskLike | None, spatial_shape: Sequence[int]) -> torch.Tensor | None:
    """Validate an ROI against an input grid: boolean, same spatial shape, not empty."""
    if roi is None:
        return None
    mask = roi.detach().cpu() if isinstance(roi, torch.Tensor) else torch.from_numpy(np.asarray(roi))
    if tuple(mask.shape) != tuple(spatial_shape):
        raise SegxaiError(f"the ROI has shape {tuple(mask.shape)} but the input grid is {tuple(spatial_shape)}")
    mask = mask.bool()
    if not bool(mask.any()):
        raise SegxaiError("the ROI is empty: it selects no voxel")
    return mask


def from_mask(mask: MaskLike, margin: float = 0, spacing: Sequence[float] | None = None) -> torch.Tensor:
    """An ROI from a mask, grown by `margin` (in voxels, or in mm when `spacing` is given)."""
    array = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    array = array.astype(bool)
    if not array.any():
        raise SegxaiError("the ROI mask is empty: it selects no voxel")
    if margin > 0:
        distance = ndimage.distance_transform_edt(~array, sampling=spacing)
        array = distance <= margin
    return torch.from_numpy(array)


def from_box(start: Sequence[int], size: Sequence[int], shape: Sequence[int]) -> torch.Tensor:
    """An ROI from an axis-aligned box `start` + `size` (voxels per spatial axis) on a grid of `shape`."""
    if not len(start) == len(size) == len(shape):
        raise SegxaiError(f"box start {tuple(start)} and size {tuple(size)} must have one value per axis of {tuple(shape)}")
    if any(s <= 0 for s in size):
        raise SegxaiError(f"box size {tuple(size)} must be positive on every axis")
    if any(not 0 <= b < n for b, n in zip(start, shape)):
        raise SegxaiError(f"box start {tuple(start)} is outside the grid {tuple(shape)}")
    mask = torch.zeros(tuple(shape), dtype=torch.bool)
    mask[tuple(slice(b, b + s) for b, s in zip(start, size))] = True
    return mask


def from_prediction(model: SegModel, inputs: MaskLike, cls: int, margin: float = 0) -> torch.Tensor:
    """An ROI from the model's own prediction of class `cls` on a single image, grown by `margin` voxels."""
    labels = model.predict(inputs)
    if labels.ndim != (model.spatial_dims or labels.ndim):
        raise SegxaiError("from_prediction takes a single image (C, *spatial), not a batch")
    return from_predicted_labels(labels, cls, margin)


def from_predicted_labels(labels: MaskLike, cls: int, margin: float = 0) -> torch.Tensor:
    """An ROI from a label map the model already predicted: the voxels of class `cls`, grown by `margin`."""
    predicted = torch.as_tensor(labels) == cls
    if not bool(predicted.any()):
        raise SegxaiError(f"the model predicts no voxel of class {cls}, so the ROI would be empty")
    return from_mask(predicted.cpu(), margin)


def from_text(prompt: str, localizer: TextLocalizer, image: MaskLike, margin: float = 8, **options: Any) -> torch.Tensor:
    """An ROI from a text prompt ("left kidney") on one raw `(C, *spatial)` image with a trained localizer,
    grown by `margin` voxels (the default keeps boundary context); `options` go to `from_probability`
    (threshold, components, fill_holes, spacing, fallback)."""
    return from_probability(localizer.predict(image, prompt), margin=margin, **options)


def from_probability(
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


@dataclass(frozen=True)
class CropPlan:
    """A box on the input grid that computation may be limited to; `full` when it is the whole grid."""

    slices: tuple[slice, ...]
    shape: tuple[int, ...]
    margin: tuple[int, ...] | None

    @property
    def full(self) -> bool:
        return all(s.start == 0 and s.stop == n for s, n in zip(self.slices, self.shape))

    @property
    def crop_shape(self) -> tuple[int, ...]:
        return tuple(s.stop - s.start for s in self.slices)

    def crop(self, x: torch.Tensor) -> torch.Tensor:
        """Crop the trailing spatial axes of `x`."""
        return x[(..., *self.slices)]

    def paste(self, values: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
        """Put cropped `values` (`(..., *crop_shape)`) back onto the full grid, `fill` elsewhere."""
        full = values.new_full((*values.shape[: values.ndim - len(self.shape)], *self.shape), fill)
        full[(..., *self.slices)] = values
        return full


def receptive_field(model: SegModel, sample: torch.Tensor, probe: int = 8) -> tuple[int, ...] | None:
    """Measure how far (in voxels, per axis) an output voxel sees into the input, by a gradient probe.

    The gradient of the logits in a small central cube (side `probe`, so every down-sampling phase is
    covered) is taken with respect to `sample` (a `(1, C, *spatial)` batch) and a random input; the support of
    the gradient, minus the cube, is the receptive-field radius. Returns None when the support reaches every
    border: instance norm, global pooling or attention make the whole input relevant, so no crop is exact.
    The result is remembered per input shape on the model (`model.receptive_fields`), so it is probed once.
    """
    spatial = tuple(sample.shape[2:])
    if spatial in model.receptive_fields:
        return model.receptive_fields[spatial]
    radius = _probe(model, sample, probe)
    model.receptive_fields[spatial] = radius
    return radius


def _probe(model: SegModel, sample: torch.Tensor, probe: int) -> tuple[int, ...] | None:
    spatial = tuple(sample.shape[2:])
    centre = tuple(slice(max(0, n // 2 - probe // 2), min(n, n // 2 - probe // 2 + probe)) for n in spatial)
    generator = torch.Generator().manual_seed(0)
    support = torch.zeros(spatial, dtype=torch.bool)
    for x in (sample, torch.randn(sample.shape, generator=generator)):
        x = x.detach().to(model.device).float().requires_grad_(True)
        logits = model(x).logits
        (grad,) = torch.autograd.grad(logits[(slice(None), slice(None), *centre)].sum(), x)
        support |= (grad.abs().sum(dim=(0, 1)) > 0).cpu()
    if not bool(support.any()):
        raise SegxaiError("the receptive-field probe found no gradient; give the margin explicitly")
    radius = []
    for axis, (n, box) in enumerate(zip(spatial, centre)):
        present = support.any(dim=tuple(a for a in range(len(spatial)) if a != axis)).nonzero().flatten()
        low, high = int(present.min()), int(present.max())
        if low == 0 and high == n - 1:
            return None
        radius.append(max(box.start - low, high - (box.stop - 1), 0))
    return tuple(radius)


def crop_plan(
    roi: MaskLike,
    margin: int | Sequence[int] | None = None,
    *,
    model: SegModel | None = None,
    sample: torch.Tensor | None = None,
    multiple: int | Sequence[int] = 1,
) -> CropPlan:
    """The box covering `roi` plus `margin` voxels, aligned to `multiple` (the network's total stride).

    Without `margin`, it is measured with `receptive_field(model, sample)`; when the receptive field is the
    whole input the plan is the full grid (`plan.full` is True). The start is aligned down and the size up
    to `multiple` so strided layers see the same sampling phase as on the full input; a box cut by the grid's
    border keeps its aligned start (SegModel pads its end, as it pads the full input's end).
    """
    mask = roi.detach().cpu().numpy() if isinstance(roi, torch.Tensor) else np.asarray(roi)
    mask = mask.astype(bool)
    shape = mask.shape
    if not mask.any():
        raise SegxaiError("the ROI is empty: it selects no voxel")
    if margin is None:
        if model is None or sample is None:
            raise SegxaiError("crop_plan needs a margin, or a model and a sample input to measure it")
        margin = receptive_field(model, sample)
        if margin is None:
            return CropPlan(tuple(slice(0, n) for n in shape), shape, None)
    margins = _per_axis(margin, len(shape), "margin")
    multiples = _per_axis(multiple, len(shape), "multiple")
    if min(multiples) < 1:
        raise SegxaiError(f"multiple must be at least 1, not {multiple!r}")
    slices = []
    for axis, (n, pad, step) in enumerate(zip(shape, margins, multiples)):
        present = np.flatnonzero(mask.any(axis=tuple(a for a in range(len(shape)) if a != axis)))
        start, stop = max(0, int(present[0]) - pad), min(n, int(present[-1]) + 1 + pad)
        start -= start % step
        stop = min(n, start + -(-(stop - start) // step) * step)  # a crop cut by the border is padded at its end
        slices.append(slice(start, stop))
    return CropPlan(tuple(slices), shape, tuple(margins))


def _per_axis(value: int | Sequence[int], ndim: int, name: str) -> tuple[int, ...]:
    values = (int(value),) * ndim if isinstance(value, (int, np.integer)) else tuple(int(v) for v in value)
    if len(values) != ndim or any(v < 0 for v in values):
        raise SegxaiError(f"{name} must be a non-negative int or one per axis ({ndim}), not {value!r}")
    return values
