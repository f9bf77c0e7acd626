"""Region generators: families of perturbation masks on the input grid (1 = replace by the fill, 0 = keep).

Masks are rendered lazily, one batch at a time, so a 3D occlusion with thousands of windows never holds them
all in memory. With an ROI, only regions touching it are generated (the XAI-CLIP restriction).
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from segxai.errors import SegxaiError
from segxai.measure import check_fits


class Regions:
    """Base class: `len(regions)` masks; `masks(start, stop)` renders `(n, *spatial)` float masks in [0, 1]."""

    shape: tuple[int, ...]

    def __len__(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def masks(self, start: int, stop: int) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def features(self, start: int, stop: int) -> torch.Tensor | None:
        """Interpretable on/off features of each sample (LIME); None for region families without them."""
        return None


def check_sizes(value: object, name: str) -> None:
    """Refuse a size setting that is not a positive whole number or a sequence of them (one per spatial axis)."""
    def whole(v: object) -> bool:
        return isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1

    if not (whole(value) or isinstance(value, (tuple, list)) and value and all(whole(v) for v in value)):
        raise SegxaiError(f"{name} must be a positive whole number or one per spatial axis, e.g. 8 or (8, 8, 4), "
                          f"not {value!r}")


def per_axis(value: int | Sequence[int], ndim: int, name: str) -> tuple[int, ...]:
    """Broadcast an int to every spatial axis, or check a per-axis tuple (MONAI style)."""
    check_sizes(value, name)
    values = (int(value),) * ndim if isinstance(value, (int, np.integer)) else tuple(int(v) for v in value)
    if len(values) != ndim:
        raise SegxaiError(f"{name} {value!r} gives {len(values)} sizes for an input with {ndim} spatial axes")
    return values


class SlidingWindows(Regions):
    """Boxes of size `window` every `stride` voxels (Captum's placement: floor((n - w) / s) + 1 per axis).

    With `roi`, only windows that touch it are kept; the count is found with one max-pool over the ROI.
    """

    def __init__(self, shape: Sequence[int], window: int | Sequence[int], stride: int | Sequence[int],
                 roi: torch.Tensor | None = None) -> None:
        self.shape = tuple(int(n) for n in shape)
        self.window = per_axis(window, len(self.shape), "window")
        self.stride = per_axis(stride, len(self.shape), "stride")
        if any(w > n for w, n in zip(self.window, self.shape)):
            raise SegxaiError(f"window {self.window} is larger than the input grid {self.shape}")
        counts = [(n - w) // s + 1 for n, w, s in zip(self.shape, self.window, self.stride)]
        if roi is None:
            keep = torch.ones(counts, dtype=torch.bool)
        else:
            pool = (F.max_pool2d, F.max_pool3d)[len(self.shape) - 2]
            keep = pool(roi.float()[None, None], self.window, self.stride)[0, 0] > 0
        self.corners = torch.stack(torch.nonzero(keep, as_tuple=True), dim=1) * torch.tensor(self.stride)

    def __len__(self) -> int:
        return int(self.corners.shape[0])

    def masks(self, start: int, stop: int) -> torch.Tensor:
        corners = self.corners[start:stop]
        masks = torch.zeros((len(corners), *self.shape))
        for index, corner in enumerate(corners.tolist()):
            masks[(index, *(slice(c, c + w) for c, w in zip(corner, self.window)))] = 1.0
        return masks


class RiseMasks(Regions):
    """RISE masks (Petsiuk et al. 2018): a random binary `grid`^d with P(keep) = `p`, upsampled smoothly to
    (grid + 1) cells and cropped at a random shift. With `roi`, masks live on the ROI's bounding box, so cells
    shrink to the region and the masks vary only where it matters.

    The draws are made lazily, `CHUNK` masks at a time from a generator seeded by one draw of `generator`
    and the chunk's number, so memory does not grow with `n_masks` and a mask does not depend on the batches
    it is rendered in."""

    CHUNK = 256

    def __init__(self, shape: Sequence[int], n_masks: int, grid: int = 7, p: float = 0.5, *,
                 generator: torch.Generator, roi: torch.Tensor | None = None) -> None:
        if n_masks < 1 or not 0 < p < 1 or grid < 1:
            raise SegxaiError(f"RISE needs n_masks >= 1, grid >= 1 and 0 < p < 1 (got {n_masks}, {grid}, {p})")
        self.shape = tuple(int(n) for n in shape)
        self.n_masks, self.grid, self.p = int(n_masks), int(grid), float(p)
        self.box = _bounding_box(roi) if roi is not None else tuple(slice(0, n) for n in self.shape)
        self.size = tuple(b.stop - b.start for b in self.box)
        self.cell = tuple(math.ceil(n / grid) for n in self.size)
        self.seed = int(torch.randint(0, 2**62, (), generator=generator))

    def __len__(self) -> int:
        return self.n_masks

    def draws(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The binary grids `(n, *grid)` and shifts `(n, d)` of masks `start` to `stop`."""
        grids, shifts = [], []
        for chunk in range(start // self.CHUNK, (stop - 1) // self.CHUNK + 1):
            first = chunk * self.CHUNK
            count = min(self.CHUNK, self.n_masks - first)
            generator = torch.Generator().manual_seed(self.seed + chunk)
            drawn = (torch.rand((count, *(self.grid,) * len(self.size)), generator=generator) < self.p).float()
            shift = torch.stack([torch.randint(0, c, (count,), generator=generator) for c in self.cell], 1)
            low, high = max(start - first, 0), min(stop - first, count)
            grids.append(drawn[low:high])
            shifts.append(shift[low:high])
        return torch.cat(grids), torch.cat(shifts)

    def masks(self, start: int, stop: int) -> torch.Tensor:
        grids, shifts = self.draws(start, stop)
        grids = grids[:, None]
        mode = "bilinear" if len(self.size) == 2 else "trilinear"
        upsampled = F.interpolate(grids, size=tuple((g + 1) * c for g, c in zip(grids.shape[2:], self.cell)),
                                  mode=mode, align_corners=False)[:, 0]
        keep = torch.stack([
            upsampled[(i, *(slice(s, s + n) for s, n in zip(shift, self.size)))]
            for i, shift in enumerate(shifts.tolist())
        ])
        masks = torch.zeros((len(keep), *self.shape))
        masks[(slice(None), *self.box)] = 1.0 - keep
        return masks


class SuperpixelSamples(Regions):
    """LIME samples: on/off states `z` of superpixels drawn by `sampler` (`(n, M, generator) -> (n, M)` bool,
    e.g. `segxai.methods.perturb.surrogate.UniformSampler`); a mask is the union of the "off" superpixels. The
    features are all superpixels or, with `roi`, those with at least `min_overlap` of their voxels inside it
    (XAI-CLIP); the others stay on. Every draw comes from `generator`."""

    def __init__(self, segments: torch.Tensor | np.ndarray, n_samples: int, *, sampler: Callable,
                 generator: torch.Generator, roi: torch.Tensor | None = None, min_overlap: float = 0.1) -> None:
        if n_samples < 2 or not 0 < min_overlap <= 1:
            raise SegxaiError(f"LIME needs n_samples >= 2 and 0 < min_overlap <= 1 (got {n_samples}, {min_overlap})")
        self.segments = torch.as_tensor(segments, dtype=torch.long).cpu()
        self.shape = tuple(self.segments.shape)
        self.n_segments = int(self.segments.max()) + 1
        self.feature_ids = self._select(roi, float(min_overlap))
        # The states are kept for the surrogate fit (as bool here, as float64 in the fit).
        check_fits(9.0 * int(n_samples) * len(self.feature_ids),
                   f"LIME's on/off states for n_samples={int(n_samples)} x {len(self.feature_ids)} superpixels",
                   "use fewer samples (n_samples) or superpixels (n_segments)")
        self.z = torch.as_tensor(sampler(int(n_samples), len(self.feature_ids), generator)).bool().cpu()
        if self.z.shape != (int(n_samples), len(self.feature_ids)):
            raise SegxaiError(f"the sampler gave states of shape {tuple(self.z.shape)}, not (n_samples, features) = "
                              f"{(int(n_samples), len(self.feature_ids))}")

    def _select(self, roi: torch.Tensor | None, min_overlap: float) -> torch.Tensor:
        """The superpixel ids used as features (all, or those overlapping the ROI enough)."""
        if roi is None:
            return torch.arange(self.n_segments)
        flat = self.segments.flatten()
        inside = torch.bincount(flat, weights=roi.flatten().double(), minlength=self.n_segments)
        overlap = inside / torch.bincount(flat, minlength=self.n_segments)
        selected = torch.nonzero(overlap >= min_overlap).flatten()
        if len(selected) == 0:
            raise SegxaiError(f"no superpixel has {min_overlap:.0%} of its voxels in the ROI (best: "
                              f"{float(overlap.max()):.1%}); lower min_overlap or use more superpixels")
        return selected

    def __len__(self) -> int:
        return int(self.z.shape[0])

    def masks(self, start: int, stop: int) -> torch.Tensor:
        off = torch.zeros((stop - start, self.n_segments))
        off[:, self.feature_ids] = (~self.z[start:stop]).float()
        return off[:, self.segments]

    def features(self, start: int, stop: int) -> torch.Tensor:
        return self.z[start:stop].float()


def _bounding_box(mask: torch.Tensor) -> tuple[slice, ...]:
    boxes = []
    for axis in range(mask.ndim):
        present = torch.nonzero(mask.any(dim=tuple(a for a in range(mask.ndim) if a != axis))).flatten()
        boxes.append(slice(int(present[0]), int(present[-1]) + 1))
    return tuple(boxes)
