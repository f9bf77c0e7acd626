"""Fills: what a perturbed region is replaced with (zero, a constant, the channel mean, a blurred copy, noise,
or the same place in another image drawn from a pool)."""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from scipy import ndimage

from segxai.errors import SegxaiError

FILLS = ("zero", "mean", "blur", "noise", "pool")
Fill = Callable[[int, int], torch.Tensor]


def make_fill(
    fill: str | float,
    x: torch.Tensor,
    *,
    generator: torch.Generator,
    pool: torch.Tensor | None = None,
    blur_sigma: float = 5.0,
) -> Fill:
    """A function `(start, n) -> (n or 1, C, *spatial)` baseline for samples `start..start+n` of the `(1, C, *spatial)`
    input `x`. Random fills draw from `generator` in sample order, so results do not depend on batch size."""
    if isinstance(fill, (int, float)) and not isinstance(fill, bool):
        constant = torch.full_like(x, float(fill))
        return lambda start, n: constant
    if fill == "zero":
        zeros = torch.zeros_like(x)
        return lambda start, n: zeros
    if fill == "mean":
        mean = x.mean(dim=tuple(range(2, x.ndim)), keepdim=True).expand_as(x)
        return lambda start, n: mean
    if fill == "blur":
        sigma = (0, 0, *(blur_sigma,) * (x.ndim - 2))
        blurred = torch.from_numpy(ndimage.gaussian_filter(x.cpu().numpy(), sigma)).to(x.device)
        return lambda start, n: blurred
    if fill == "noise":
        return _noise_fill(x, generator)
    if fill == "pool":
        return _pool_fill(x, pool, generator)
    raise SegxaiError(f"unknown fill {fill!r}; use a number or one of {', '.join(FILLS)}")


def _noise_fill(x: torch.Tensor, generator: torch.Generator) -> Fill:
    """Gaussian noise with each channel's mean and standard deviation; one seed per sample."""
    dims = tuple(range(2, x.ndim))
    mean, std = x.mean(dim=dims, keepdim=True), x.std(dim=dims, keepdim=True)
    seeds = _sample_seeds(generator)

    def draw(start: int, n: int) -> torch.Tensor:
        noise = torch.stack([
            torch.randn(x.shape[1:], generator=torch.Generator().manual_seed(seeds(start + i))) for i in range(n)
        ]).to(x.device)
        return mean + std * noise

    return draw


def _pool_fill(x: torch.Tensor, pool: torch.Tensor | None, generator: torch.Generator) -> Fill:
    """The same voxels of another image of the pool `(P, C, *spatial)`, one image drawn per sample."""
    if pool is None or pool.ndim != x.ndim or tuple(pool.shape[1:]) != tuple(x.shape[1:]):
        shape = None if pool is None else tuple(pool.shape)
        raise SegxaiError(f"fill='pool' needs pool images (P, C, *spatial) on the input grid {tuple(x.shape[1:])}, got {shape}")
    pool = pool.to(x.device, x.dtype)
    seeds = _sample_seeds(generator)

    def draw(start: int, n: int) -> torch.Tensor:
        index = [int(np.random.default_rng(seeds(start + i)).integers(len(pool))) for i in range(n)]
        return pool[index]

    return draw


def _sample_seeds(generator: torch.Generator) -> Callable[[int], int]:
    """A seed per sample index, derived from one draw of `generator`, so any batching gives the same draws."""
    base = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
    return lambda index: base * 1_000_003 + index
