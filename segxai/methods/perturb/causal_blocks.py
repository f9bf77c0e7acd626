"""Causal blocks (PdCR, arXiv 2602.20511): the average treatment effect (ATE) of each input block on a target.

A treatment replaces one block of a regular grid (squares in 2D, cubes in 3D) by a fill, by default content
drawn from other images (`do(x_b := p)`, p from a pool). Its effect is `T(treated) - T(x)`, so a negative ATE
means the original content supports the target (red in the paper's figures) and a positive one that it hurts
(blue). It is a composition on the perturbation engine: a block-draw region family, the engine's fills, and a
per-block estimator, run in two stages (a short screen, then more draws for the blocks that react). Blocks
overlapping the target's region are not treated, and blocks beyond the network's receptive field from it cost
no forward pass: their effect is exactly zero.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from segxai.errors import SegxaiError
from segxai.methods.base import Context
from segxai.methods.perturb import engine
from segxai.methods.perturb.base import PerturbationMethod, PerturbationStats
from segxai.methods.perturb.estimators import Estimator
from segxai.methods.perturb.fills import FILLS, Fill, _sample_seeds, make_fill
from segxai.methods.perturb.regions import Regions, check_sizes, per_axis
from segxai.targets import Target

RANDOM_FILLS = ("pool", "noise")
# The paper's histogram of block ATEs (in Dice points); +-tau is inserted between -0.3 and 0.3.
HISTOGRAM_EDGES = (-3.0, -1.0, -0.3, 0.3, 1.0, 3.0)


class BlockGrid:
    """Non-overlapping blocks of side `block` with corners at multiples of it; the last block along an axis is
    clipped by the border when the grid is not a multiple of the block."""

    def __init__(self, shape: Sequence[int], block: Sequence[int]) -> None:
        self.shape, self.block = tuple(shape), tuple(block)
        self.counts = tuple(math.ceil(n / b) for n, b in zip(self.shape, self.block))
        index = torch.stack(torch.meshgrid(*[torch.arange(c) for c in self.counts], indexing="ij"), -1)
        self.corners = index.reshape(-1, len(self.shape)) * torch.tensor(self.block)
        # The flat block index of every voxel, in the order of `corners`.
        coords = torch.meshgrid(*(torch.arange(n) // b for n, b in zip(self.shape, self.block)), indexing="ij")
        self.ids = torch.zeros(self.shape, dtype=torch.long)
        for coord, count in zip(coords, self.counts):
            self.ids = self.ids * count + coord

    def __len__(self) -> int:
        return len(self.corners)

    def box(self, index: int) -> tuple[slice, ...]:
        return tuple(slice(c, min(c + b, n)) for c, b, n in zip(self.corners[index].tolist(), self.block, self.shape))

    def touching(self, mask: torch.Tensor | None) -> torch.Tensor:
        """Which blocks hold at least one voxel of `mask` (all blocks for None)."""
        if mask is None:
            return torch.ones(len(self), dtype=torch.bool)
        return torch.bincount(self.ids[mask.cpu().bool()], minlength=len(self)) > 0

    def paint(self, values: torch.Tensor) -> torch.Tensor:
        """A `(*shape)` map with each block's value over its voxels."""
        out = torch.zeros(self.shape)
        for index in torch.nonzero(values).flatten().tolist():
            out[self.box(index)] = float(values[index])
        return out


class BlockDraws(Regions):
    """`draws` samples of each block in `blocks` (block-major order); `features` gives each sample's block index,
    which is what the block estimator groups the scores by."""

    def __init__(self, grid: BlockGrid, blocks: torch.Tensor, draws: int) -> None:
        self.grid, self.shape = grid, grid.shape
        self.sample_blocks = blocks.repeat_interleave(draws)

    def __len__(self) -> int:
        return len(self.sample_blocks)

    def masks(self, start: int, stop: int) -> torch.Tensor:
        masks = torch.zeros((stop - start, *self.shape))
        for row, index in enumerate(self.sample_blocks[start:stop].tolist()):
            masks[(row, *self.grid.box(index))] = 1.0
        return masks

    def features(self, start: int, stop: int) -> torch.Tensor:
        return self.sample_blocks[start:stop]


class BlockEffects(Estimator):
    """Per block: the count, sum and sum of squares of the effects `scale * (T(treated) - T(x))`, and their
    largest magnitude (the screen's test). `result()` paints the ATE map, zero where |ATE| < `tau`."""

    relative = True

    def __init__(self, grid: BlockGrid, scale: float, tau: float) -> None:
        self.grid, self.scale, self.tau = grid, scale, tau
        n = len(grid)
        self.count = torch.zeros(n)
        self.total, self.squares, self.peak = (torch.zeros(n, dtype=torch.float64) for _ in range(3))

    def update(self, masks, scores, features) -> None:
        effects = (self.scale * scores).detach().double().cpu()
        blocks = features.cpu()
        self.count.index_add_(0, blocks, torch.ones(len(blocks)))
        self.total.index_add_(0, blocks, effects)
        self.squares.index_add_(0, blocks, effects**2)
        self.peak.scatter_reduce_(0, blocks, effects.abs(), reduce="amax")

    def ate(self) -> torch.Tensor:
        """Mean effect per block, set to 0 below `tau` in magnitude (and for untreated blocks)."""
        mean = self.total / self.count.clamp_min(1)
        return torch.where(mean.abs() >= self.tau, mean, torch.zeros_like(mean))

    def standard_error(self) -> torch.Tensor:
        """`sd / sqrt(n)` with the sample standard deviation; 0 for blocks with fewer than two draws."""
        n = self.count.double()
        variance = (self.squares - self.total**2 / n.clamp_min(1)) / (n - 1).clamp_min(1)
        return torch.where(n > 1, variance.clamp_min(0).sqrt() / n.clamp_min(1).sqrt(), torch.zeros_like(n))

    def result(self) -> torch.Tensor:
        return self.grid.paint(self.ate())


@dataclass(frozen=True, kw_only=True)
class CausalBlockStats(PerturbationStats):
    """Per-item figures of causal blocks: `regions` counts the treatments run; `base_score` is the clean score
    times `scale`; blocks screened, estimated further and out of reach; the paper's block counts and
    histogram (see `block_stats`) and one row per candidate block (corner, size, ATE, SE, draws)."""

    base_score: float
    screened_blocks: int
    estimated_blocks: int
    unreachable_blocks: int
    block_counts: dict[str, int]
    histogram: dict[str, list]
    blocks: tuple[dict[str, Any], ...]


class CausalBlocks(PerturbationMethod):
    """Average treatment effect of each `block` (an int or one per axis) on the target, coarse to fine.

    Every block outside the target's region (its `support`; all blocks when it has none), inside the ROI and
    within one receptive field of the region gets `screen_draws` treatments; a block whose largest |effect| reaches
    `tau` gets more, up to `draws` in all (the screen's draws are kept). ATE = mean effect, set to 0 when
    |ATE| < tau, with its standard error. Effects are `scale * (T(treated) - T(x))`: with the default 100 a Dice
    target is in Dice points, the unit of the paper's `tau` and histogram. Negative ATE = the original content
    supports the target. `fill="pool"` draws a treatment per sample from `pool`: images on the input grid
    (`(P, C, *spatial)`, the block is taken from the same place) or patches of the block's size
    (`(P, C, *block)`, PdCR's patch pool, see `patch_pool`). Deterministic fills ("zero", "mean", "blur", a
    number) get one draw per block (the paper's `zero_local` ablation). The map has one channel; per-block rows
    (corner, size, ATE, SE, draws) and block statistics go to each item's `CausalBlockStats`.
    """

    name = "causal_blocks"
    summary = "causal blocks (PdCR): average treatment effect of each input block, screened then estimated"

    def __init__(self, model, block: int | Sequence[int] = 8, fill: str | float = "pool",
                 pool: torch.Tensor | None = None, screen_draws: int = 3, draws: int = 50, tau: float = 0.02, scale: float = 100.0, **options) -> None:
        super().__init__(model, fill=fill, pool=pool, **options)
        _check_settings(block, fill, pool, screen_draws, draws, tau, scale)
        self.block, self.screen_draws, self.draws = block, int(screen_draws), int(draws)
        self.tau, self.scale = float(tau), float(scale)

    @property
    def random(self) -> bool:
        return self.fill in RANDOM_FILLS

    def params(self) -> dict[str, Any]:
        return {"block": self.block, "screen_draws": self.screen_draws, "draws": self.draws, "tau": self.tau,
                "scale": self.scale, **super().params()}

    def _attribute(self, x: torch.Tensor, target: Target, roi: torch.Tensor | None, context: Context):
        maps, footprints = [], []
        for index, item in enumerate(x.split(1)):
            attribution, footprint, stats = self._explain_item(item, target, roi, context)
            maps.append(attribution[None])
            footprints.append(footprint)
            context.record(index, stats)
        footprint = None if any(f is None for f in footprints) else torch.stack(footprints)
        return torch.stack(maps), footprint

    def _explain_item(self, item: torch.Tensor, target: Target, roi: torch.Tensor | None, context: Context):
        """Screen, then estimate, the blocks of one `(1, C, *spatial)` input; returns map, footprint and its
        `CausalBlockStats`."""
        shape = tuple(item.shape[2:])
        area = torch.ones(shape, dtype=torch.bool) if roi is None else roi
        plan = self._plan(item, target, area)
        ref = plan.ref
        grid = BlockGrid(shape, per_axis(self.block, len(shape), "block"))
        support = ref.target.support(shape)
        candidates = treatable(grid, roi, support)
        screened = torch.nonzero(candidates & grid.touching(plan.reachable)).flatten()
        effects = BlockEffects(grid, self.scale, self.tau)
        screen = self.screen_draws if self.random else 1
        with plan.active():
            fill = self._fill(ref, context)
            self._treat(plan, grid, screened, screen, fill, effects, roi, context, "screen")
            estimated = screened[effects.peak[screened] >= self.tau] if self.random else screened[:0]
            self._treat(plan, grid, estimated, self.draws - screen, self._fill(ref, context), effects, roi, context,
                        "estimate")
        inside = None if roi is None else roi.to(ref.x.device).float()
        figures = plan.figures(engine.MaskedFill(ref.x, BlockDraws(grid, screened, screen), fill, inside), context)
        attribution = effects.result()
        attribution = attribution if roi is None else attribution * roi.to(attribution.device)
        stats = CausalBlockStats(
            score=float(ref.score[0]), regions=len(screened) * screen + len(estimated) * (self.draws - screen),
            **figures, **block_stats(effects, candidates, self.tau),
            base_score=float(self.scale * ref.score[0]),
            screened_blocks=len(screened), estimated_blocks=len(estimated),
            unreachable_blocks=int(candidates.sum()) - len(screened))
        return attribution, support, stats

    def _fill(self, ref: engine.Reference, context: Context) -> Fill:
        """A fill with fresh draws (each call takes a new seed from the generator)."""
        if self.fill == "pool" and self.pool.ndim == ref.x.ndim and self.pool.shape[2:] != ref.x.shape[2:]:
            return patch_fill(ref.x, self.pool, per_axis(self.block, ref.x.ndim - 2, "block"), context.generator)
        return make_fill(self.fill, ref.x, generator=context.generator, pool=self.pool)

    def _treat(self, plan, grid, blocks, draws, fill, effects, roi, context, stage: str) -> None:
        """Run `draws` treatments of each of `blocks` through the engine into `effects` (nothing when empty)."""
        if len(blocks) and draws > 0:
            engine.run(self.model, plan.ref, BlockDraws(grid, blocks, draws), fill, effects, roi, plan.scorer,
                       context, desc=f"{self.name} {stage}")


def treatable(grid: BlockGrid, roi: torch.Tensor | None, support: torch.Tensor | None) -> torch.Tensor:
    """The candidate blocks: touching the ROI and not overlapping the target's region (as the paper skips it)."""
    candidates = grid.touching(roi)
    if support is not None:
        candidates &= ~grid.touching(support)
    if not candidates.any():
        raise SegxaiError("every block in the ROI overlaps the target's region, so no block can be treated; "
                          "use a smaller block, a larger ROI or a smaller region")
    return candidates


def block_stats(effects: BlockEffects, candidates: torch.Tensor, tau: float) -> dict[str, Any]:
    """The paper's statistics over the candidate blocks (outside the region, in the ROI): counts of positive,
    negative and zero ATE, the histogram at the paper's inner edges (bins (-inf, e_0), [e_0, e_1), ...,
    [e_last, inf)), and one row per block."""
    ate, se = effects.ate()[candidates], effects.standard_error()[candidates]
    edges = [*HISTOGRAM_EDGES[:3], -tau, tau, *HISTOGRAM_EDGES[3:]]
    counts = np.bincount(np.searchsorted(np.array(edges), ate.numpy(), side="right"), minlength=len(edges) + 1)
    rows = [{"corner": effects.grid.corners[i].tolist(), "size": [s.stop - s.start for s in effects.grid.box(i)],
             "ate": float(a), "se": float(e), "draws": int(effects.count[i])}
            for i, a, e in zip(torch.nonzero(candidates).flatten().tolist(), ate, se)]
    return {"block_counts": {"positive": int((ate > 0).sum()), "negative": int((ate < 0).sum()),
                             "zero": int((ate == 0).sum())},
            "histogram": {"edges": edges, "counts": counts.tolist()}, "blocks": tuple(rows)}


def patch_fill(x: torch.Tensor, patches: torch.Tensor, block: tuple[int, ...], generator: torch.Generator) -> Fill:
    """PdCR's treatment: one patch of `patches` `(P, C, *block)` drawn per sample and tiled over the grid, so
    whichever block the sample treats receives the whole patch (blocks start at multiples of the block size)."""
    if tuple(patches.shape[2:]) != block or patches.shape[1] != x.shape[1]:
        raise SegxaiError(f"the pool must hold images on the input grid (P, {x.shape[1]}, *{tuple(x.shape[2:])}) or "
                          f"patches of the block's size (P, {x.shape[1]}, *{block}), not {tuple(patches.shape)}")
    patches = patches.to(x.device, x.dtype)
    seeds = _sample_seeds(generator)
    reps = [math.ceil(n / b) for n, b in zip(x.shape[2:], block)]
    window = (..., *(slice(0, n) for n in x.shape[2:]))

    def draw(start: int, n: int) -> torch.Tensor:
        index = [int(np.random.default_rng(seeds(start + i)).integers(len(patches))) for i in range(n)]
        return patches[index].repeat(1, 1, *reps)[window]

    return draw


def patch_pool(images: Sequence[np.ndarray | torch.Tensor], block: int | Sequence[int], per_image: int = 100,
               seed: int = 0) -> torch.Tensor:
    """PdCR's pool: `per_image` random grid-aligned blocks (with replacement when an image has fewer) cut from
    each `(C, *spatial)` image (other images than the one explained, normalised like the model's input).

    Args:
        images: `(C, *spatial)` images.
        block: the block size, an int or one per spatial axis.
        per_image: blocks cut from each image.
        seed: seeds the choice of blocks.

    Returns:
        The patches, `(len(images) * per_image, C, *block)`, for `CausalBlocks(fill="pool", pool=...)`.
    """
    if not images or per_image < 1:
        raise SegxaiError(f"patch_pool needs at least one image and per_image >= 1 (got {len(images)}, {per_image})")
    rng = np.random.default_rng(seed)
    patches = []
    for image in images:
        image = torch.as_tensor(np.asarray(image), dtype=torch.float32)
        size = per_axis(block, image.ndim - 1, "block")
        grid = BlockGrid(image.shape[1:], size)
        whole = [i for i in range(len(grid)) if all(s.stop - s.start == b for s, b in zip(grid.box(i), size))]
        if not whole:
            raise SegxaiError(f"an image of shape {tuple(image.shape)} holds no whole block of size {size}")
        chosen = rng.choice(whole, per_image, replace=len(whole) < per_image)
        patches += [image[(slice(None), *grid.box(int(i)))] for i in chosen]
    return torch.stack(patches)


def _check_settings(block, fill, pool, screen_draws, draws, tau, scale) -> None:
    """Clear errors for settings that cannot work, before any forward pass."""
    check_sizes(block, "block")
    if not isinstance(fill, (int, float)) and fill not in FILLS or isinstance(fill, bool):
        raise SegxaiError(f"unknown fill {fill!r}; use a number or one of {', '.join(FILLS)}")
    if fill == "pool" and (not isinstance(pool, torch.Tensor) or pool.ndim < 3):
        raise SegxaiError("fill='pool' needs pool=: images (P, C, *spatial) on the input grid or patches "
                          "(P, C, *block), e.g. from segxai.methods.perturb.causal_blocks.patch_pool")
    if not 1 <= int(screen_draws) <= int(draws):
        raise SegxaiError(f"need 1 <= screen_draws <= draws, got screen_draws={screen_draws}, draws={draws}")
    if not tau >= 0 or not scale > 0:
        raise SegxaiError(f"tau must be >= 0 and scale > 0, got tau={tau}, scale={scale}")
