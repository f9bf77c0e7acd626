"""The model-parameter randomisation sanity check (Adebayo et al., 2018), cascading from the output layer down.

The network's layers with parameters are re-initialised cumulatively in `steps` groups, from the last layer
(in registration order, which for sequential networks and MONAI U-Nets ends at the output) towards the input,
and the method explains the same target each time. A method that depends on the model must change its map: it
passes when the fully randomised map's rank correlation to the original is at most `max_correlation`. Layers
are randomised in place and restored afterwards, so inferers and devices stay exactly as configured.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from segxai.errors import SegxaiError
from segxai.explanation import Explanation
from segxai.metrics.localization import spatial_map
from segxai.metrics.similarity import map_similarity
from segxai.model import SegModel


@dataclass
class SanityResult:
    """Similarity of each cascading step's map to the original (`layers` = how many layers are randomised).

    `passed` is None, and `steps` empty, when the original map is constant (e.g. all zero: no gradient reaches
    the ROI), since ranks then say nothing about whether the map depends on the model."""

    steps: list[dict[str, float]]
    passed: bool | None

    @property
    def final(self) -> dict[str, float | None]:
        return self.steps[-1] if self.steps else {"layers": 0, "spearman": None, "ssim": None}


def cascading_randomization(
    model: SegModel,
    explain: Callable[[], Explanation],
    original: Explanation,
    *,
    steps: int = 3,
    max_correlation: float = 0.5,
    seed: int = 0,
) -> SanityResult:
    """Re-run `explain` (a closure over the method, input and target that uses `model`) as ever more layers
    of `model.net` are randomised; compare each map with `original` by Spearman rank correlation and SSIM."""
    if not isinstance(model.net, nn.Module):
        raise SegxaiError("the randomisation check needs a torch.nn.Module network")
    layers = [m for m in model.net.modules() if any(True for _ in m.parameters(recurse=False))][::-1]
    if not layers:
        raise SegxaiError("the network has no parameters to randomise")
    if float(spatial_map(original).std()) == 0:
        return SanityResult([], None)
    bounds = np.linspace(0, len(layers), min(steps, len(layers)) + 1).round().astype(int)
    results = []
    with _restored(model.net):
        for step, (start, stop) in enumerate(zip(bounds[:-1], bounds[1:])):
            _reinitialise(layers[start:stop], seed + step)
            results.append({"layers": int(stop), **map_similarity(original, explain())})
    return SanityResult(results, results[-1]["spearman"] <= max_correlation)


@contextmanager
def _restored(net: nn.Module) -> Iterator[None]:
    state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    try:
        yield
    finally:
        net.load_state_dict(state)


def _reinitialise(layers: list[nn.Module], seed: int) -> None:
    """The layers' default initialisation (`reset_parameters`), or a normal draw with each parameter's own
    spread for layers without one; seeded, and the global generators (CPU and the layers' GPUs) are left as they
    were."""
    gpus = sorted({p.device.index or 0 for layer in layers for p in layer.parameters() if p.is_cuda})
    with torch.random.fork_rng(devices=gpus), torch.no_grad():
        torch.manual_seed(seed)
        for layer in layers:
            if hasattr(layer, "reset_parameters"):
                layer.reset_parameters()
                continue
            for p in layer.parameters(recurse=False):
                spread = float(p.std()) if p.numel() > 1 else 0.0
                p.normal_(0.0, spread if spread > 0 else 0.1)
