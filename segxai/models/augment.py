"""Training data on one grid: resampling to a size or spacing, padding to a common stride-aligned grid, and
seeded MONAI augmentations applied to image and label together (light: flips, intensity, small affine; strong:
also turns, a larger affine and gamma, for photographs), and random contrasts for models that must read another
modality than the one they were trained on."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from segxai.errors import SegxaiError


def resample(image: np.ndarray, labels: np.ndarray | None, shape: Sequence[int]) -> tuple[np.ndarray, np.ndarray | None]:
    """Resample an image `(C, *spatial)` (linear, anti-aliased in 2D) and its label map (nearest) to `shape`."""
    shape = tuple(int(n) for n in shape)
    if len(shape) != image.ndim - 1 or min(shape) < 1:
        raise SegxaiError(f"cannot resample a grid {image.shape[1:]} to {shape}: give one positive size per axis")
    if tuple(image.shape[1:]) == shape:
        return image, labels
    mode = "bilinear" if len(shape) == 2 else "trilinear"
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]
    out = F.interpolate(x, size=shape, mode=mode, align_corners=False, antialias=len(shape) == 2)[0].numpy()
    if labels is None:
        return out, None
    y = torch.from_numpy(np.ascontiguousarray(labels, dtype=np.int64))[None, None].float()
    return out, F.interpolate(y, size=shape, mode="nearest-exact")[0, 0].numpy().astype(np.int64)


def shape_for_spacing(shape: Sequence[int], spacing: Sequence[float], target: Sequence[float]) -> tuple[int, ...]:
    """The grid that covers the same extent as `shape` at voxel size `spacing` when voxels are `target` big."""
    if len(target) != len(shape) or min(target) <= 0:
        raise SegxaiError(f"--spacing needs one positive size per axis ({len(shape)}), not {tuple(target)}")
    return tuple(max(1, int(round(n * s / t))) for n, s, t in zip(shape, spacing, target))


def common_grid(shapes: Sequence[Sequence[int]], stride: int) -> tuple[int, ...]:
    """The smallest grid holding every shape, each axis rounded up to a multiple of `stride`."""
    largest = np.max(np.asarray([tuple(s) for s in shapes]), axis=0)
    return tuple(int(-(-n // stride) * stride) for n in largest)


def pad_end(array: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Zero-pad the trailing axes of `array` at their end up to `shape` (as SegModel pads inputs)."""
    lead = array.ndim - len(shape)
    widths = [(0, 0)] * lead + [(0, int(n) - m) for n, m in zip(shape, array.shape[lead:])]
    return np.pad(array, widths) if any(w for _, w in widths) else array


AUGMENTATIONS = ("none", "light", "strong")


class Augmenter:
    """Seeded MONAI augmentations of an image batch `(B, C, *spatial)` and its labels `(B, 1, *spatial)`.

    `light`: flips (2D only by default: in 3D a flip swaps left and right organs), intensity scale and shift,
    and a small affine (rotation up to ~11 degrees, scale +-10 %). `strong`, for small sets of photographs
    (endoscopy, microscopy) whose objects have no fixed side or size: also 90-degree turns (when flipping),
    a frequent, larger affine (rotation up to ~29 degrees, scale +-25 %, shifts up to 10 pixels), gamma and
    noise. `contrast` adds a random, non-monotonic remapping of the intensities (`RandContrastRemap`), random
    intensities painted per labelled structure (`RandLabelPaint`), blur, a smooth bias field and noise, so
    that a model trained on CT learns shapes and positions rather than Hounsfield values and still reads an MR.
    Each call draws its randomness from `seed`, so a training step is reproduced from the seed it was given.
    """

    def __init__(self, spatial_dims: int, flips: bool | None = None, contrast: bool = False,
                 strength: str = "light") -> None:
        from monai.transforms import (Compose, RandAdjustContrastd, RandAffined, RandBiasFieldd, RandFlipd,
                                      RandGaussianNoised, RandGaussianSmoothd, RandRotate90d, RandScaleIntensityd,
                                      RandShiftIntensityd)

        from segxai.models.contrast import RandContrastRemapd, RandLabelPaintd

        if strength not in AUGMENTATIONS[1:]:
            raise SegxaiError(f"unknown augmentation {strength!r}; choose one of {', '.join(AUGMENTATIONS)}")
        strong = strength == "strong"
        flips = spatial_dims == 2 if flips is None else flips
        keys = ["image", "label"]
        steps = [RandFlipd(keys, prob=0.5, spatial_axis=axis) for axis in range(spatial_dims)] if flips else []
        steps += [RandRotate90d(keys, prob=0.5)] if strong and flips else []
        if contrast:
            steps += [RandContrastRemapd("image", prob=0.5), RandLabelPaintd("image", "label", prob=0.5),
                      RandGaussianSmoothd("image", sigma_x=(0.0, 1.0), sigma_y=(0.0, 1.0), sigma_z=(0.0, 1.0),
                                          prob=0.3),
                      RandBiasFieldd("image", coeff_range=(0.0, 0.3), prob=0.3),
                      RandGaussianNoised("image", std=0.03, prob=0.3)]
        if strong:
            steps += [RandAdjustContrastd("image", gamma=(0.7, 1.5), prob=0.3),
                      RandGaussianNoised("image", std=0.02, prob=0.2)]
        rotation = (0.5 if strong else 0.2,) * (1 if spatial_dims == 2 else 3)
        steps += [
            RandScaleIntensityd("image", factors=0.2 if strong else 0.1, prob=0.5),
            RandShiftIntensityd("image", offsets=0.1, prob=0.5),
            RandAffined(keys, prob=0.8 if strong else 0.5, rotate_range=rotation,
                        scale_range=0.25 if strong else 0.1, translate_range=10 if strong else None,
                        mode=("bilinear", "nearest"), padding_mode="zeros"),
        ]
        self.transform = Compose(steps)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        self.transform.set_random_state(seed=int(seed))
        pairs = [self.transform({"image": x, "label": y.float()}) for x, y in zip(images, labels)]
        plain = lambda t: t.as_tensor() if hasattr(t, "as_tensor") else t
        return (torch.stack([plain(p["image"]).float() for p in pairs]),
                torch.stack([plain(p["label"]).round().long() for p in pairs]))
