"""Gaussian-blended sliding-window inference as nnU-Net runs it: differentiable, and able to run only the tiles
that reach the output voxels a target reads.

nnU-Net places tiles of its patch size evenly (at most `step` x patch apart, the first at 0 and the last flush
with the far edge), pads an image smaller than the patch symmetrically with zeros, weights each tile's logits by
a Gaussian (sigma = patch / 8) and divides by the summed weights. A voxel's logits therefore depend only on the
tiles covering it, so skipping every tile that misses a target's voxels leaves those voxels exactly as they are.
A patch with one axis fewer than the input (nnU-Net's 2d configuration on a volume) runs slice by slice.
Under autograd each tile call is checkpointed (`torch.utils.checkpoint`): the network's intermediate tensors are
recomputed tile by tile in the backward pass instead of being held for every tile at once, so a gradient through
hundreds of tiles needs about one tile's memory, for about one more forward pass per tile.
"""
from __future__ import annotations

from contextlib import contextmanager
from functools import lru_cache
from itertools import product
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from scipy.ndimage import gaussian_filter

from segxai.errors import SegxaiError

Net = Callable[[torch.Tensor], torch.Tensor]


def tile_starts(size: int, patch: int, step: float) -> list[int]:
    """Start offsets along one axis of length `size` (>= `patch`): as few tiles as keep neighbours at most
    `step * patch` apart, spread evenly from 0 to `size - patch`."""
    if size <= patch:
        return [0]
    count = int(np.ceil((size - patch) / (patch * step))) + 1
    spacing = (size - patch) / (count - 1)
    return [int(np.round(spacing * i)) for i in range(count)]


@lru_cache(maxsize=8)
def gaussian_weights(patch: tuple[int, ...], sigma_scale: float = 1 / 8, peak: float = 10.0) -> np.ndarray:
    """The tile weighting: a Gaussian centred on the patch, scaled to `peak`, with no zero (so every covered
    voxel has a positive weight sum)."""
    impulse = np.zeros(patch)
    impulse[tuple(p // 2 for p in patch)] = 1
    weights = gaussian_filter(impulse, [p * sigma_scale for p in patch], 0, mode="constant", cval=0)
    weights = (weights / weights.max() * peak).astype(np.float32)
    weights[weights == 0] = weights[weights > 0].min()
    return weights


class GaussianTiles:
    """A `SegModel` inferer: `tiles(x, net, focus)` returns the blended logits of `net` over `x` `(B, C, *spatial)`.

    Args:
        patch_size: the network's patch (nnU-Net's `patch_size`), one entry per axis it convolves.
        step: the largest distance between tile starts as a fraction of the patch (nnU-Net: 0.5).
        tile_batch: tiles run per network call (1 as nnU-Net does; more is faster on a GPU).
        checkpoint: recompute each tile's intermediate tensors in the backward pass (see above).
    `tiles_run` counts the tiles evaluated since creation (the cost figure of tile skipping).
    """

    def __init__(self, patch_size: Sequence[int], step: float = 0.5, tile_batch: int = 1,
                 checkpoint: bool = True) -> None:
        if not 0 < step <= 1:
            raise SegxaiError(f"the tile step is a fraction of the patch in (0, 1], not {step!r}")
        self.patch_size = tuple(int(p) for p in patch_size)
        self.step = float(step)
        self.tile_batch = max(1, int(tile_batch))
        self.checkpoint = bool(checkpoint)
        self.tiles_run = 0
        self.focus: torch.Tensor | None = None

    @contextmanager
    def focused(self, support: torch.Tensor | None) -> Iterator[None]:
        """Within the block, inputs of `support`'s spatial shape run only the tiles that overlap `support` (a
        boolean mask of the output voxels that will be read); other voxels come out as 0."""
        previous, self.focus = self.focus, support
        try:
            yield
        finally:
            self.focus = previous

    def boxes(self, spatial: Sequence[int]) -> list[tuple[slice, ...]]:
        """Every tile of a (padded) grid `spatial`, as slices over its spatial axes."""
        patch = self._patch(len(spatial))
        sliced = len(patch) > len(self.patch_size)
        starts = [list(range(s)) if sliced and axis == 0 else tile_starts(s, p, self.step)
                  for axis, (s, p) in enumerate(zip(spatial, patch))]
        return [tuple(slice(o, o + p) for o, p in zip(origin, patch)) for origin in product(*starts)]

    def __call__(self, x: torch.Tensor, net: Net) -> torch.Tensor:
        spatial = tuple(x.shape[2:])
        patch = self._patch(len(spatial))
        padded = tuple(max(s, p) for s, p in zip(spatial, patch))
        below = [(p - s) // 2 for s, p in zip(spatial, padded)]
        inside = tuple(slice(b, b + s) for b, s in zip(below, spatial))
        if padded != spatial:
            pads = [v for b, s, p in reversed(list(zip(below, spatial, padded))) for v in (b, p - s - b)]
            x = F.pad(x, pads, value=0.0)
        boxes = every = self.boxes(padded)
        if self.focus is not None and tuple(self.focus.shape) == spatial:
            wanted = torch.zeros(padded, dtype=torch.bool)
            wanted[inside] = self.focus.cpu()
            boxes = [box for box in boxes if bool(wanted[box].any())]
        weights = torch.from_numpy(gaussian_weights(self.patch_size)).to(x.device)
        sliced = len(patch) > len(self.patch_size)
        self._layout = (boxes, every, padded, inside, int(x.shape[0]))
        total, norm = None, torch.zeros(padded, device=x.device)
        run = net
        if self.checkpoint and torch.is_grad_enabled():
            run = lambda tiles: torch.utils.checkpoint.checkpoint(net, tiles, use_reentrant=False)  # noqa: E731
        for start in range(0, len(boxes), self.tile_batch):
            chunk = boxes[start:start + self.tile_batch]
            tiles = torch.cat([x[(slice(None), slice(None), *box)] for box in chunk])
            logits = _as_logits(run(tiles[:, :, 0] if sliced else tiles))
            if sliced:
                logits = logits.unsqueeze(2)
            if total is None:
                total = torch.zeros((x.shape[0], logits.shape[1], *padded), device=x.device, dtype=logits.dtype)
            weight = weights.unsqueeze(0) if sliced else weights
            for index, box in enumerate(chunk):
                part = logits[index * x.shape[0]:(index + 1) * x.shape[0]]
                total[(slice(None), slice(None), *box)] += part * weight
                norm[box] += weight
            self.tiles_run += len(chunk)
        if total is None:
            raise SegxaiError("the focus selects no tile: the target reads no voxel of this input")
        blended = total / norm.clamp_min(torch.finfo(torch.float32).tiny)
        return blended[(slice(None), slice(None), *inside)]

    def tile_shape(self, dims: int) -> tuple[int, ...]:
        """The spatial shape of the tiles the network receives for a `dims`-D input."""
        return self.patch_size

    def stitch(self, maps: Sequence[torch.Tensor]) -> torch.Tensor:
        """Blend per-tile maps of the last call, one `(tiles * B, K, *tile_shape)` tensor per network call in the
        order the tiles ran, as the logits were blended: the `(B, K, *spatial)` map of the whole input. Tiles
        skipped by a focus count as zero maps (the target does not depend on them), so a focused map equals the
        map of all tiles."""
        boxes, every, padded, inside, batch = self._layout
        chunks = [boxes[i:i + self.tile_batch] for i in range(0, len(boxes), self.tile_batch)]
        if len(maps) != len(chunks):
            raise SegxaiError(f"{len(maps)} per-tile maps for {len(chunks)} tile calls (a layer that runs several "
                              "times per tile, e.g. under test-time mirroring, cannot be stitched)")
        weights = torch.from_numpy(gaussian_weights(self.patch_size)).to(maps[0].device)
        sliced = len(padded) > len(self.patch_size)
        weight = weights.unsqueeze(0) if sliced else weights
        total = torch.zeros((batch, maps[0].shape[1], *padded), device=maps[0].device)
        norm = torch.zeros(padded, device=maps[0].device)
        for box in every:
            norm[box] += weight
        for chunk, values in zip(chunks, maps):
            values = values.unsqueeze(2) if sliced else values
            for index, box in enumerate(chunk):
                total[(slice(None), slice(None), *box)] += values[index * batch:(index + 1) * batch] * weight
        return (total / norm.clamp_min(torch.finfo(torch.float32).tiny))[(slice(None), slice(None), *inside)]

    def _patch(self, dims: int) -> tuple[int, ...]:
        if len(self.patch_size) == dims:
            return self.patch_size
        if len(self.patch_size) == dims - 1:
            return (1, *self.patch_size)
        raise SegxaiError(f"a {len(self.patch_size)}D patch {self.patch_size} cannot tile a {dims}D input")


def _as_logits(raw: object) -> torch.Tensor:
    """The full-resolution head of a network output (a tensor, or the first of a deep-supervision list)."""
    if isinstance(raw, (list, tuple)):
        raw = raw[0]
    if not isinstance(raw, torch.Tensor):
        raise SegxaiError(f"the network returned {type(raw).__name__}, expected a tensor of logits")
    return raw.as_tensor() if hasattr(raw, "as_tensor") else raw
