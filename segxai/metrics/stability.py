"""Stability under input noise: how alike the maps of slightly noisy copies of an input are to its map.

Each copy adds Gaussian noise (sd = `noise` x the input's sd) drawn from one generator seeded with `seed`, and
is explained by its own call of `explain`, with the method's own seed: the maps then differ by the input noise
alone, not by the method's random draws (a batched call would give every copy other masks or samples).
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from segxai.errors import SegxaiError
from segxai.explanation import Explanation
from segxai.metrics.similarity import map_similarity


def map_stability(explain: Callable[[torch.Tensor], Explanation], x: torch.Tensor, original: Explanation, *,
                  noise: float = 0.05, samples: int = 1, seed: int = 0) -> dict[str, float]:
    """The mean similarity of the maps of `samples` noisy copies of `x` to `original`.

    Args:
        explain: re-runs the method, target and ROI of `original` on another `(C, *spatial)` input.
        x: the explained input `(C, *spatial)`.
        original: its explanation.
        noise: the noise's sd as a fraction of the input's sd.
        samples: the number of noisy copies.
        seed: seeds the noise.
    Returns:
        `{"spearman", "ssim"}` averaged over the copies (see `map_similarity`).
    """
    if isinstance(samples, bool) or not isinstance(samples, (int, np.integer)) or samples < 1:
        raise SegxaiError(f"samples must be a positive int, not {samples!r}")
    if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not noise >= 0:
        raise SegxaiError(f"noise must be a non-negative number, not {noise!r}")
    generator = torch.Generator().manual_seed(int(seed))
    scale = noise * float(x.float().std())
    found = [map_similarity(original, explain(x + scale * torch.randn(x.shape, generator=generator).to(x)))
             for _ in range(samples)]
    return {key: sum(f[key] for f in found) / samples for key in ("spearman", "ssim")}
