"""Faithfulness by intervention: deletion and insertion curves on a segmentation target.

Voxels are ranked by the channel-summed attribution; the curve scores the target (bound to the clean output)
after the top-ranked fraction of voxels is replaced by a fill (deletion) or is all that is kept of the input
(insertion). A faithful map makes the deletion curve fall fast (low AUC) and the insertion curve rise fast
(high AUC). Each step is one forward pass, batched.

`block_intervention_curve` does the same on a block grid, as PdCR's faithfulness protocol (METHODS.md 4.5):
the top-k blocks of any map (or a seeded random control) are treated together with a fill or pool patches,
averaged over draws; `sign_consistency` checks that blocks of each sign move the score the predicted way.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from segxai.errors import SegxaiError
from segxai.methods.base import as_segmodel, resolve_batch_size
from segxai.methods.perturb.causal_blocks import BlockGrid
from segxai.methods.perturb.fills import make_fill
from segxai.methods.perturb.regions import per_axis
from segxai.metrics.localization import MapLike, spatial_map
from segxai.model import ArrayLike, SegModel, SegOutput
from segxai.progress import progress_bar
from segxai.targets import Target, as_target, evaluate

Kind = Literal["deletion", "insertion"]
TargetLike = Target | Callable[[SegOutput], torch.Tensor]


@dataclass
class Curve:
    """Target scores against the fraction of voxels replaced (deletion) or inserted (insertion).

    `fractions` are the exact shares of voxels changed (`k * N // steps` of N voxels, k = 0..steps); `auc` is the
    trapezoid area over them, so it is in the target's units; `forward_passes` counts the
    batch items run, the clean reference included, and `seconds` the wall time.
    """

    kind: Kind
    fractions: np.ndarray
    scores: np.ndarray
    auc: float
    forward_passes: int
    seconds: float


def deletion_curve(
    model: SegModel | nn.Module,
    inputs: ArrayLike,
    target: TargetLike,
    attribution: MapLike,
    *,
    steps: int = 20,
    fill: float | ArrayLike = 0.0,
    batch_size: int | str = "auto",
    progress: bool = False,
) -> Curve:
    """Score `target` as the most important voxels of `inputs` (`(C, *spatial)`) are replaced by `fill`
    (a value or an array broadcastable to the input), `steps` equal fractions at a time; lower AUC is better."""
    return _curve("deletion", model, inputs, target, attribution, steps, fill, batch_size, progress)


def insertion_curve(
    model: SegModel | nn.Module,
    inputs: ArrayLike,
    target: TargetLike,
    attribution: MapLike,
    *,
    steps: int = 20,
    fill: float | ArrayLike = 0.0,
    batch_size: int | str = "auto",
    progress: bool = False,
) -> Curve:
    """Score `target` as the most important voxels of `inputs` are put back into an input made of `fill`,
    `steps` equal fractions at a time; higher AUC is better."""
    return _curve("insertion", model, inputs, target, attribution, steps, fill, batch_size, progress)


def _curve(
    kind: Kind,
    model: SegModel | nn.Module,
    inputs: ArrayLike,
    target: TargetLike,
    attribution: MapLike,
    steps: int,
    fill: float | ArrayLike,
    batch_size: int | str,
    progress: bool,
) -> Curve:
    """The shared body of both curves: rank, fill, score the clean reference and every step, integrate."""
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise SegxaiError(f"steps must be a positive int, not {steps!r}")
    model = as_segmodel(model)
    x = _single_image(model, inputs)
    ranks = _ranks(attribution, tuple(x.shape[2:])).to(x.device)
    baseline = _baseline(fill, x)
    total = ranks.numel()
    counts = [k * total // steps for k in range(steps + 1)]
    size = resolve_batch_size(batch_size, x, model.device)
    replaced, kept = (baseline, x) if kind == "deletion" else (x, baseline)
    with model.measure() as cost, torch.no_grad():
        bound = as_target(target).bind(model(x))
        values = _scores(model, bound, replaced, kept, ranks, counts, size, progress, kind)
    fractions = torch.tensor(counts, dtype=torch.float64) / total
    auc = float(torch.trapezoid(values, fractions))
    return Curve(kind, fractions.numpy(), values.numpy(), auc, cost.forward_passes, cost.seconds)


def _scores(
    model: SegModel,
    target: Target,
    replaced: torch.Tensor,
    kept: torch.Tensor,
    ranks: torch.Tensor,
    counts: list[int],
    batch_size: int,
    progress: bool,
    kind: Kind,
) -> torch.Tensor:
    """Score one input per count, in batches: voxels ranked below the count take `replaced`, the rest `kept`."""
    scores = []
    starts = range(0, len(counts), batch_size)
    for start in progress_bar(starts, enabled=progress, total=len(starts), desc=f"{kind} curve"):
        limits = torch.tensor(counts[start:start + batch_size], device=ranks.device).view(-1, *(1,) * ranks.ndim)
        chosen = (ranks < limits)[:, None]
        scores.append(evaluate(target, model(torch.where(chosen, replaced, kept))).double().cpu())
    return torch.cat(scores)


def _single_image(model: SegModel, inputs: ArrayLike) -> torch.Tensor:
    x, batched = model.prepare(inputs)
    if batched and x.shape[0] != 1:
        raise SegxaiError(f"curves are computed for one image (C, *spatial), not a batch of {x.shape[0]}")
    return x


def _ranks(attribution: MapLike, spatial: tuple[int, ...]) -> torch.Tensor:
    """Each voxel's rank by channel-summed attribution (0 = most important; ties keep scan order)."""
    values = _voxel_map(attribution, spatial)
    order = torch.argsort(values.flatten(), descending=True, stable=True)
    ranks = torch.empty_like(order)
    ranks[order] = torch.arange(order.numel())
    return ranks.view(spatial)


def _voxel_map(attribution: MapLike, spatial: tuple[int, ...]) -> torch.Tensor:
    """The channel-summed attribution on the input grid, checked to have its shape."""
    values = spatial_map(attribution, "sum")
    if values.ndim == len(spatial) + 1:  # a (C, *spatial) attribution
        values = values.sum(0)
    if tuple(values.shape) != spatial:
        raise SegxaiError(
            f"the attribution has shape {tuple(values.shape)}; expected (C, *spatial) or {spatial} for the input grid"
        )
    return values


def _baseline(fill: float | ArrayLike, x: torch.Tensor) -> torch.Tensor:
    """The fill as a tensor of the input's shape."""
    value = torch.as_tensor(fill, dtype=x.dtype).to(x.device)
    if not bool(torch.isfinite(value).all()):
        raise SegxaiError("fill contains NaN or infinite values")
    try:
        return torch.broadcast_to(value, x.shape)
    except RuntimeError:
        raise SegxaiError(f"fill of shape {tuple(value.shape)} does not broadcast to the input {tuple(x.shape[1:])}") from None


# ------------------------------------------------------------------------------------- block interventions
Supportive = Literal["high", "low"]
Ranking = Literal["random"]
RANDOM_FILLS = ("noise", "pool")


@dataclass
class BlockCurve:
    """Target scores as the top-`k` ranked blocks of an explanation are treated together (METHODS.md 4.5).

    `scores` and `ses` are the mean and standard error over `draws` fills at each `k` of `ks`; `drops` is
    `base - scores` (positive = the score fell); `area` is the trapezoid area of the drops over `k / max(ks)`,
    i.e. the mean drop along the curve in the target's units (higher = more faithful). `order` lists the candidate
    blocks (flat indices on the block grid `grid`), most supportive first.
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
    forward_passes: int
    seconds: float

    def row(self) -> dict[str, float | int]:
        """The summary figures for a comparison table (`segxai.metrics.write_csv`)."""
        return {"base": self.base, "area": self.area, "max_drop": float(self.drops.max()),
                "blocks": int(self.order.size), "draws": self.draws, "forward_passes": self.forward_passes}


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
) -> BlockCurve:
    """Treat the top-`k` blocks (side `block`) of `attribution` together and score `target` (bound to the clean
    output), for each `k` in `ks` (default 0, 1, 2, 4, ... and all candidate blocks).

    Blocks are ranked by their mean channel-summed attribution. Sign convention: `supportive="high"` ranks the
    largest values first (Grad-CAM, RISE, occlusion: high = the content supports the score); `"low"` ranks the
    most negative first (CausalBlocks ATE maps: negative = replacing the block lowers the score, so the original
    content supports it). `attribution="random"` is the seeded random control. Blocks touching `exclude` (e.g.
    the target region, as PdCR skips its RoI) are never treated. The fill is any perturbation fill (`zero`,
    a number, `mean`, `blur`, `noise`) or `pool`: with pool images on the input grid, the same voxels of one
    image drawn per draw; with a pool of `block`-sized patches `(P, C, *block)`, an independent patch per block
    (PdCR). Random fills are averaged over `draws`; deterministic ones use one draw.
    """
    setup = _BlockSetup.create(model, inputs, block, exclude, fill, pool, draws, seed)
    order = setup.order(attribution, supportive)
    ks = _block_counts(ks, len(order))
    ranks = setup.voxel_ranks(order)
    with setup.model.measure() as cost, torch.no_grad():
        bound, base = setup.bind(target)
        scores = setup.scores(bound, [(ranks, ks)], batch_size, progress)[0]
    mean, se = _mean_se(scores)
    drops = base - mean
    fractions = torch.tensor(ks, dtype=torch.float64) / max(ks)
    area = float(torch.trapezoid(torch.from_numpy(drops), fractions))
    return BlockCurve(np.array(ks), mean, se, drops, base, area, order.numpy(), setup.grid, setup.draws,
                      cost.forward_passes, cost.seconds)


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
) -> SignConsistency:
    """Treat all blocks with block-mean attribution > `tau` together, then all with < -`tau`, and check the
    signs (METHODS.md 4.5, item 2). With `supportive="low"` (ATE maps) the positive group should raise the
    score and the negative group lower it; with `"high"` the reverse. Note a Dice against the model's own
    prediction starts at 1, so no treatment can raise it: use a ground-truth reference or a continuous score.
    """
    if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not tau >= 0:
        raise SegxaiError(f"tau must be a non-negative number, not {tau!r}")
    _check_supportive(supportive)
    setup = _BlockSetup.create(model, inputs, block, exclude, fill, pool, draws, seed)
    means = setup.block_means(attribution)
    positive, negative = setup.order_by(means, descending=True), setup.order_by(means, descending=False)
    sizes = int((means[positive] > tau).sum()), int((means[negative] < -tau).sum())
    if not any(sizes):
        raise SegxaiError(f"no candidate block has a mean attribution beyond +-{tau}; nothing to check")
    groups = [(setup.voxel_ranks(order), [size]) for order, size in zip((positive, negative), sizes) if size]
    with torch.no_grad():
        bound, base = setup.bind(target)
        scores = iter(setup.scores(bound, groups, batch_size, False))
    (positive_delta, positive_se), (negative_delta, negative_se) = [
        _delta(next(scores)[0], base) if size else (None, None) for size in sizes
    ]
    signs = (1.0, -1.0) if supportive == "low" else (-1.0, 1.0)
    consistent = all(d is None or d * sign > 0 for d, sign in zip((positive_delta, negative_delta), signs))
    return SignConsistency(base, positive_delta, positive_se, sizes[0], negative_delta, negative_se, sizes[1],
                           consistent)


@dataclass
class _BlockSetup:
    """What both block interventions share: the model, the image, the block grid, candidates and the fills."""

    model: SegModel
    x: torch.Tensor
    ids: torch.Tensor
    candidates: torch.Tensor
    grid: tuple[int, ...]
    fills: list[torch.Tensor]
    draws: int
    generator: torch.Generator

    @classmethod
    def create(cls, model: SegModel | nn.Module, inputs: ArrayLike, block: int | tuple[int, ...],
               exclude: ArrayLike | None, fill: str | float, pool: ArrayLike | None, draws: int,
               seed: int) -> "_BlockSetup":
        """Validate the settings, lay the block grid over the image and draw the fills."""
        if isinstance(draws, bool) or not isinstance(draws, (int, np.integer)) or draws < 1:
            raise SegxaiError(f"draws must be a positive int, not {draws!r}")
        model = as_segmodel(model)
        x = _single_image(model, inputs)
        spatial = tuple(x.shape[2:])
        sides = per_axis(block, len(spatial), "block")
        blocks = BlockGrid(spatial, sides)
        grid, ids = blocks.counts, blocks.ids
        candidates = _candidate_blocks(blocks, exclude)
        generator = torch.Generator().manual_seed(int(seed))
        draws = int(draws) if fill in RANDOM_FILLS else 1
        fills = _block_fills(fill, pool, x, sides, grid, generator, draws)
        return cls(model, x, ids, candidates, grid, fills, draws, generator)

    def block_means(self, attribution: MapLike) -> torch.Tensor:
        """The mean channel-summed attribution of every block of the grid."""
        values = _voxel_map(attribution, tuple(self.x.shape[2:])).flatten()
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
            return blocks[torch.randperm(len(blocks), generator=self.generator)]
        return self.order_by(self.block_means(attribution), descending=supportive == "high")

    def voxel_ranks(self, order: torch.Tensor) -> torch.Tensor:
        """Each voxel's block rank in `order`; blocks outside it rank last, so they are never treated."""
        block_rank = torch.full((self.candidates.numel(),), len(order), dtype=torch.long)
        block_rank[order] = torch.arange(len(order))
        return block_rank[self.ids].to(self.x.device)

    def bind(self, target: TargetLike) -> tuple[Target, float]:
        """The target bound to the clean output, and its clean score."""
        clean = self.model(self.x)
        bound = as_target(target).bind(clean)
        return bound, float(evaluate(bound, clean)[0])

    def scores(self, target: Target, groups: list[tuple[torch.Tensor, list[int]]], batch_size: int | str,
               progress: bool) -> list[np.ndarray]:
        """For each (voxel ranks, ks), the `(len(ks), draws)` scores with the top-k blocks filled, run through
        the deletion-curve scorer once per fill draw."""
        size = resolve_batch_size(batch_size, self.x, self.model.device)
        return [
            torch.stack([_scores(self.model, target, fill, self.x, ranks, ks, size, progress, "deletion")
                         for fill in self.fills], 1).numpy()
            for ranks, ks in groups
        ]


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


def _delta(scores: np.ndarray, base: float) -> tuple[float, float]:
    """The mean change from `base` over draws and its standard error."""
    mean, se = _mean_se(scores - base)
    return float(mean), float(se)


def _mean_se(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard error over the last axis (draws); the error is 0 for one draw."""
    draws = scores.shape[-1]
    se = scores.std(-1, ddof=1) / math.sqrt(draws) if draws > 1 else np.zeros(scores.shape[:-1])
    return scores.mean(-1), se
