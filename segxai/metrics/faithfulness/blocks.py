"""Block interventions (PdCR's faithfulness protocol): top-k block curves and the sign-consistency check.

Each treated input is scored by the perturbation engine against the clean input of the same batch, so the
curves hold effects that are exactly zero where a treatment changes nothing; `k = 0` (nothing treated) costs
no pass.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from segxai.errors import SegxaiError
from segxai.measure import Cost
from segxai.methods.base import Context, as_segmodel
from segxai.methods.perturb import engine
from segxai.methods.perturb.causal_blocks import BlockGrid
from segxai.methods.perturb.fills import make_fill
from segxai.methods.perturb.frozen_norm import Norm, Statistics, check_norm, frozen, recorder
from segxai.methods.perturb.regions import per_axis
from segxai.metrics.faithfulness.curves import TargetLike, single_image, voxel_map
from segxai.metrics.localization import MapLike
from segxai.model import ArrayLike, SegModel
from segxai.targets import Target, as_target, evaluate

Supportive = Literal["high", "low"]
Ranking = Literal["random"]
RANDOM_FILLS = ("noise", "pool")


@dataclass
class BlockCurve:
    """Target scores as the top-`k` ranked blocks of an explanation are treated together (PdCR, arXiv 2602.20511).

    `scores` and `ses` are the mean and standard error over `draws` fills at each `k` of `ks`; `drops` is
    `base - scores` (positive = the score fell); `area` is the trapezoid area of the drops over `k / max(ks)`,
    i.e. the mean drop along the curve in the target's units (higher = more faithful). `order` lists the candidate
    blocks (flat indices on the block grid `grid`), most supportive first; `cost` is what the curve took.
    """

    ks: np.ndarray
    scores: np.ndarray
    ses: np.ndarray
    drops: np.ndarray
    base: float
    area: float
    order: np.ndarray
    grid: tuple[int, ...]
    draws: int
    cost: Cost

    def row(self) -> dict[str, float | int]:
        """The summary figures for a comparison table (`segxai.metrics.write_csv`)."""
        return {"base": self.base, "area": self.area, "max_drop": float(self.drops.max()),
                "blocks": int(self.order.size), "draws": self.draws, "forward_passes": self.cost.forward_passes}


@dataclass
class SignConsistency:
    """Score changes when all blocks with positive, and separately all with negative, block-mean attribution
    are treated together (`*_delta` = treated - clean, mean over draws, None for an empty group), and whether each
    non-empty group moves the score the way the map's sign convention predicts (`consistent`)."""

    base: float
    positive_delta: float | None
    positive_se: float | None
    positive_blocks: int
    negative_delta: float | None
    negative_se: float | None
    negative_blocks: int
    consistent: bool


def block_intervention_curve(
    model: SegModel | nn.Module,
    inputs: ArrayLike,
    target: TargetLike,
    attribution: MapLike | Ranking,
    *,
    block: int | tuple[int, ...] = 8,
    ks: list[int] | None = None,
    supportive: Supportive = "high",
    fill: str | float = "zero",
    pool: ArrayLike | None = None,
    draws: int = 1,
    exclude: ArrayLike | None = None,
    seed: int = 0,
    batch_size: int | str = "auto",
    progress: bool = False,
    norm: Norm = "exact",
) -> BlockCurve:
    """Treat the top-`k` blocks of `attribution` together and score `target` (bound to the clean output),
    for each `k` in `ks`.

    Blocks are ranked by their mean channel-summed attribution. Sign convention: `supportive="high"` ranks the
    largest values first (Grad-CAM, RISE, occlusion: high = the content supports the score); `"low"` ranks the
    most negative first (CausalBlocks ATE maps: negative = replacing the block lowers the score, so the original
    content supports it). Blocks touching `exclude` (e.g. the target region, as PdCR skips its RoI) are never
    treated. Random fills are averaged over `draws`; deterministic ones use one draw.

    Args:
        model: a `SegModel` or a network.
        inputs: one image `(C, *spatial)`.
        target: the score, bound to the clean output.
        attribution: the map, or "random" for the seeded random control.
        block: the block side, an int or one per axis.
        ks: the block counts (default 0, 1, 2, 4, ... and all candidate blocks).
        supportive: which end of the map supports the score, "high" or "low".
        fill: any perturbation fill (`zero`, a number, `mean`, `blur`, `noise`) or `pool`: with pool images
            on the input grid, the same voxels of one image drawn per draw; with a pool of `block`-sized
            patches `(P, C, *block)`, an independent patch per block (PdCR).
        pool: the images or patches for `fill="pool"`.
        draws: fills per `k` for random fills.
        exclude: a `(*spatial)` mask whose blocks are never treated.
        seed: seeds the fills and the random control.
        batch_size: inputs per forward pass, a positive int or "auto" (a memory budget).
        progress: show a progress bar.
        norm: "exact", or "frozen" for the clean input's normalisation statistics in every treated pass.
    Returns:
        The curve.
    """
    setup = _BlockSetup.create(model, inputs, block, exclude, fill, pool, draws, seed, batch_size, progress, norm)
    order = setup.order(attribution, supportive)
    ks = _block_counts(ks, len(order))
    with setup.model.measure() as measure, torch.no_grad():
        bound, base = setup.bind(target)
        effects = setup.effects(bound, [(setup.voxel_ranks(order), ks)], "block curve")[0]
    mean, se = _mean_se(effects)
    fractions = torch.tensor(ks, dtype=torch.float64) / max(ks)
    area = float(torch.trapezoid(torch.from_numpy(-mean), fractions))
    return BlockCurve(np.array(ks), base + mean, se, -mean, base, area, order.numpy(), setup.grid, setup.draws,
                      measure.cost)


def sign_consistency(
    model: SegModel | nn.Module,
    inputs: ArrayLike,
    target: TargetLike,
    attribution: MapLike,
    *,
    block: int | tuple[int, ...] = 8,
    supportive: Supportive = "low",
    tau: float = 0.0,
    fill: str | float = "zero",
    pool: ArrayLike | None = None,
    draws: int = 1,
    exclude: ArrayLike | None = None,
    seed: int = 0,
    batch_size: int | str = "auto",
    norm: Norm = "exact",
) -> SignConsistency:
    """Treat all blocks with block-mean attribution > `tau` together, then all with < -`tau`, and check the
    signs (PdCR, arXiv 2602.20511). With `supportive="low"` (ATE maps) the positive group should raise the
    score and the negative group lower it; with `"high"` the reverse. Note a Dice against the model's own
    prediction starts at 1, so no treatment can raise it: use a ground-truth reference or a continuous score.

    Args:
        tau: blocks with |block mean| <= tau belong to neither group.
        the others: as for `block_intervention_curve`.
    Returns:
        The two groups' mean effects and the verdict.
    """
    if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not tau >= 0:
        raise SegxaiError(f"tau must be a non-negative number, not {tau!r}")
    _check_supportive(supportive)
    setup = _BlockSetup.create(model, inputs, block, exclude, fill, pool, draws, seed, batch_size, False, norm)
    means = setup.block_means(attribution)
    positive, negative = setup.order_by(means, descending=True), setup.order_by(means, descending=False)
    sizes = int((means[positive] > tau).sum()), int((means[negative] < -tau).sum())
    if not any(sizes):
        raise SegxaiError(f"no candidate block has a mean attribution beyond +-{tau}; nothing to check")
    groups = [(setup.voxel_ranks(order), [size]) for order, size in zip((positive, negative), sizes) if size]
    with torch.no_grad():
        bound, base = setup.bind(target)
        effects = iter(setup.effects(bound, groups, "sign consistency"))
    (positive_delta, positive_se), (negative_delta, negative_se) = [
        tuple(float(v[0]) for v in _mean_se(next(effects))) if size else (None, None) for size in sizes
    ]
    signs = (1.0, -1.0) if supportive == "low" else (-1.0, 1.0)
    consistent = all(d is None or d * sign > 0 for d, sign in zip((positive_delta, negative_delta), signs))
    return SignConsistency(base, positive_delta, positive_se, sizes[0], negative_delta, negative_se, sizes[1],
                           consistent)


@dataclass
class _BlockSetup:
    """What both block interventions share: the model, the image, the block grid, candidates, the fills and
    the engine's context (batch size, progress and the seeded generator)."""

    model: SegModel
    x: torch.Tensor
    ids: torch.Tensor
    candidates: torch.Tensor
    grid: tuple[int, ...]
    fills: list[torch.Tensor]
    draws: int
    context: Context
    norm: Norm = "exact"
    statistics: Statistics | None = None

    @classmethod
    def create(cls, model: SegModel | nn.Module, inputs: ArrayLike, block: int | tuple[int, ...],
               exclude: ArrayLike | None, fill: str | float, pool: ArrayLike | None, draws: int,
               seed: int, batch_size: int | str, progress: bool, norm: Norm = "exact") -> _BlockSetup:
        """Validate the settings, lay the block grid over the image and draw the fills."""
        if isinstance(draws, bool) or not isinstance(draws, (int, np.integer)) or draws < 1:
            raise SegxaiError(f"draws must be a positive int, not {draws!r}")
        model = as_segmodel(model)
        x = single_image(model, inputs, "block interventions are computed")
        spatial = tuple(x.shape[2:])
        sides = per_axis(block, len(spatial), "block")
        blocks = BlockGrid(spatial, sides)
        candidates = _candidate_blocks(blocks, exclude)
        context = engine.context(model, x, seed=seed, batch_size=batch_size, progress=progress)
        draws = int(draws) if fill in RANDOM_FILLS else 1
        fills = _block_fills(fill, pool, x, sides, blocks.counts, context.generator, draws)
        return cls(model, x, blocks.ids, candidates, blocks.counts, fills, draws, context, check_norm(norm))

    def block_means(self, attribution: MapLike) -> torch.Tensor:
        """The mean channel-summed attribution of every block of the grid."""
        values = voxel_map(attribution, tuple(self.x.shape[2:])).flatten()
        total = torch.bincount(self.ids.flatten(), weights=values, minlength=self.candidates.numel())
        return total / torch.bincount(self.ids.flatten(), minlength=self.candidates.numel())

    def order_by(self, means: torch.Tensor, descending: bool) -> torch.Tensor:
        """Candidate block indices sorted by `means` (ties keep block scan order)."""
        blocks = torch.nonzero(self.candidates).flatten()
        return blocks[torch.argsort(means[blocks], descending=descending, stable=True)]

    def order(self, attribution: MapLike | Ranking, supportive: Supportive) -> torch.Tensor:
        """Candidate blocks, most supportive first, or a seeded random order for `"random"`."""
        _check_supportive(supportive)
        if isinstance(attribution, str):
            if attribution != "random":
                raise SegxaiError(f"attribution must be a map or 'random', not {attribution!r}")
            blocks = torch.nonzero(self.candidates).flatten()
            return blocks[torch.randperm(len(blocks), generator=self.context.generator)]
        return self.order_by(self.block_means(attribution), descending=supportive == "high")

    def voxel_ranks(self, order: torch.Tensor) -> torch.Tensor:
        """Each voxel's block rank in `order`; blocks outside it rank last, so they are never treated."""
        block_rank = torch.full((self.candidates.numel(),), len(order), dtype=torch.long)
        block_rank[order] = torch.arange(len(order))
        return block_rank[self.ids].to(self.x.device)

    def bind(self, target: TargetLike) -> tuple[Target, float]:
        """The target bound to the clean output, and its clean score (recording norm statistics when frozen)."""
        with recorder(self.model, self.norm) as self.statistics:
            clean = self.model(self.x)
        bound = as_target(target).bind(clean)
        return bound, float(evaluate(bound, clean)[0])

    def effects(self, target: Target, groups: list[tuple[torch.Tensor, list[int]]], desc: str) -> list[np.ndarray]:
        """For each (voxel ranks, ks), the `(len(ks), draws)` effects `T(treated) - T(x)` with the top-k blocks
        filled, scored by the engine beside the clean input; `k = 0` treats nothing (effect 0, no pass)."""
        items = [(g, row, k, t) for g, (_, ks) in enumerate(groups) for row, k in enumerate(ks) if k > 0
                 for t in range(self.draws)]

        def treated(i: int) -> torch.Tensor:
            group, _, k, t = items[i]
            return torch.where(groups[group][0] < k, self.fills[t][0], self.x[0])

        with frozen(self.model, self.statistics):
            scores = engine.score_all(self.model, engine.Inputs(len(items), treated),
                                      engine.target_scorer(self.model, target), self.context, clean=self.x,
                                      desc=desc)
        out = [np.zeros((len(ks), self.draws)) for _, ks in groups]
        for (group, row, _, t), score in zip(items, scores.tolist()):
            out[group][row, t] = score
        return out


def _candidate_blocks(blocks: BlockGrid, exclude: ArrayLike | None) -> torch.Tensor:
    """Blocks that do not touch `exclude` (all blocks without it)."""
    if exclude is None:
        return torch.ones(len(blocks), dtype=torch.bool)
    mask = _as_tensor(exclude).bool()
    if tuple(mask.shape) != blocks.shape:
        raise SegxaiError(f"exclude has shape {tuple(mask.shape)}; expected the input grid {blocks.shape}")
    touched = blocks.touching(mask)
    if bool(touched.all()):
        raise SegxaiError("exclude touches every block; no block is left to treat")
    return ~touched


def _block_fills(fill: str | float, pool: ArrayLike | None, x: torch.Tensor, sides: tuple[int, ...],
                 grid: tuple[int, ...], generator: torch.Generator, draws: int) -> list[torch.Tensor]:
    """One full-size fill image `(1, C, *spatial)` per draw: a mosaic of pool patches when the pool holds
    `block`-sized patches, otherwise the perturbation engine's fill of that name."""
    patches = None if pool is None else _as_tensor(pool)
    is_patch_pool = patches is not None and patches.ndim == x.ndim and tuple(patches.shape[2:]) == sides
    if fill == "pool" and is_patch_pool and sides != tuple(x.shape[2:]):
        if patches.shape[1] != x.shape[1]:
            raise SegxaiError(f"pool patches have {patches.shape[1]} channels; the input has {x.shape[1]}")
        patches = patches.to(x.device, x.dtype)
        return [_mosaic(patches, grid, tuple(x.shape[2:]), generator) for _ in range(draws)]
    draw = make_fill(fill, x, generator=generator, pool=patches)
    return [draw(t, 1)[:1].expand_as(x) for t in range(draws)]


def _mosaic(patches: torch.Tensor, grid: tuple[int, ...], spatial: tuple[int, ...],
            generator: torch.Generator) -> torch.Tensor:
    """An image tiled with one randomly drawn patch per block (drawn uniformly with replacement)."""
    index = torch.randint(len(patches), (math.prod(grid),), generator=generator).to(patches.device)
    channels, sides, d = patches.shape[1], tuple(patches.shape[2:]), len(grid)
    tiles = patches[index].view(*grid, channels, *sides)
    interleaved = [d] + [axis for a in range(d) for axis in (a, d + 1 + a)]
    image = tiles.permute(interleaved).reshape(channels, *(g * b for g, b in zip(grid, sides)))
    return image[(slice(None), *(slice(0, n) for n in spatial))][None]


def _block_counts(ks: list[int] | None, total: int) -> list[int]:
    """The default 0, 1, 2, 4, ... and `total`, or the given counts checked to lie in [0, total]."""
    if ks is None:
        powers = [2**i for i in range(max(total, 1).bit_length()) if 2**i < total]
        return [0, *powers, total]
    counts = [int(k) for k in ks]
    if not counts or min(counts) < 0 or max(counts) > total or max(counts) == 0:
        raise SegxaiError(f"ks must be block counts in [0, {total}] with at least one positive, not {ks!r}")
    return counts


def _as_tensor(values: ArrayLike) -> torch.Tensor:
    return values if isinstance(values, torch.Tensor) else torch.as_tensor(np.asarray(values))


def _check_supportive(supportive: str) -> None:
    if supportive not in ("high", "low"):
        raise SegxaiError(f"supportive must be 'high' or 'low', not {supportive!r}")


def _mean_se(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard error over the last axis (draws); the error is 0 for one draw."""
    draws = values.shape[-1]
    se = values.std(-1, ddof=1) / math.sqrt(draws) if draws > 1 else np.zeros(values.shape[:-1])
    return values.mean(-1), se
