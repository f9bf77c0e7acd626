"""One target's faithfulness figures beside those of a random and a blurred ranking.

ROAR/ROAD-style scores reward blurry maps, and any ranking deletes *something*: a map's deletion/insertion AUC
and block-curve area mean little alone. `curves_with_baselines` scores the map, a seeded random map and a blurred
copy of the map by the same curves (same fill, steps, blocks and seed), so a table can say whether the map beats
both.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from segxai.errors import SegxaiError
from segxai.methods.base import as_segmodel
from segxai.metrics.baselines import gaussian_blur
from segxai.metrics.faithfulness.blocks import Supportive, block_intervention_curve
from segxai.metrics.faithfulness.curves import TargetLike, deletion_curve, insertion_curve, single_image, voxel_map
from segxai.metrics.localization import MapLike
from segxai.model import ArrayLike, SegModel

RANKINGS = ("", "_random", "_blurred")  # column suffixes: the map, the random map, the blurred map


def curves_with_baselines(
    model: SegModel | nn.Module,
    inputs: ArrayLike,
    target: TargetLike,
    attribution: MapLike,
    *,
    steps: int = 10,
    fill: float = 0.0,
    sigma: float = 2.0,
    block: int | None = None,
    supportive: Supportive = "high",
    seed: int = 0,
    batch_size: int | str = "auto",
) -> dict[str, Any]:
    """Deletion and insertion AUC (and, with `block`, the block-intervention area) of the map, of a random map
    and of the map blurred by `sigma` voxels.

    Args:
        model: a `SegModel` or a network.
        inputs: one image `(C, *spatial)`.
        target: the score, bound to the clean output.
        attribution: the map (an `Explanation`, `(C, *spatial)` or `(*spatial)`).
        steps: points of the deletion/insertion curves (minus one).
        fill: what deleted voxels become.
        sigma: the blur of the blurred baseline, in voxels.
        block: the block side of the block curve (PdCR), None for none.
        supportive: which end of the map supports the score, "high" or "low" (ATE maps).
        seed: seeds the random map and the block fills.
        batch_size: inputs per forward pass.
    Returns:
        `deletion_auc`, `insertion_auc` (and `block_area`) with the suffixes `_random` and `_blurred` for the
        baselines.
    """
    if supportive not in ("high", "low"):
        raise SegxaiError(f"supportive must be 'high' or 'low', not {supportive!r}")
    model = as_segmodel(model)
    x = single_image(model, inputs, "faithfulness curves are computed")
    spatial = tuple(x.shape[2:])
    values = voxel_map(attribution, spatial)
    oriented = values if supportive == "high" else -values  # deletion ranks the highest first
    generator = torch.Generator().manual_seed(int(seed))
    rankings = {"": oriented, "_random": torch.rand(spatial, generator=generator, dtype=torch.float64),
                "_blurred": gaussian_blur(oriented, sigma)}
    row: dict[str, Any] = {}
    for suffix, ranking in rankings.items():
        row[f"deletion_auc{suffix}"] = deletion_curve(model, x[0], target, ranking, steps=steps, fill=fill,
                                                      batch_size=batch_size).auc
        row[f"insertion_auc{suffix}"] = insertion_curve(model, x[0], target, ranking, steps=steps, fill=fill,
                                                        batch_size=batch_size).auc
    if block is not None:
        for suffix, ranking in rankings.items():
            row[f"block_area{suffix}"] = block_intervention_curve(
                model, x[0], target, "random" if suffix == "_random" else ranking, block=block, fill=fill,
                seed=seed, batch_size=batch_size).area
    return row
