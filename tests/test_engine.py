"""The perturbation engine's batched loop: effects against the clean input of the same batch (exactly zero
without effect, whatever float kernels a batch size selects), interventions inside the network, batching and
pass counting."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import segxai as sx
from segxai import targets as T
from segxai.methods.perturb import engine
from tests.conftest import cube, grid


class RegionMean(nn.Module):
    """Two-class logits `(-m, m)` everywhere, m the mean input over `region`, scaled by 1 + 1e-6 (batch size
    - 1) as float kernels chosen by batch size differ: equal inputs score unequally in batches of other sizes."""

    def __init__(self, region: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("region", region.float())
        self.gain = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = self.gain((x[:, 0] * self.region).flatten(1).sum(1) / self.region.sum())
        value = mean.view(-1, 1, *(1,) * self.region.ndim).expand(-1, 1, *self.region.shape)
        return torch.cat([-value, value], dim=1) * (1.0 + 1e-6 * (x.shape[0] - 1))


@pytest.mark.parametrize("batch_size", ["auto", 1, 3])
def test_occlusion_off_the_region_is_exactly_zero_whatever_the_batch(dims, batch_size):
    region = cube(dims, 4, 8)
    model = sx.SegModel(RegionMean(region), activation="none")
    explanation = sx.Occlusion(model, window=4, stride=4).explain(
        torch.ones(1, *grid(dims, 16)), T.ClassRegion(1, reduce="mean"), batch_size=batch_size, progress=False)
    attribution = explanation.attribution[0]
    assert torch.equal(attribution != 0, region)
    assert torch.allclose(attribution[region], torch.full((int(region.sum()),), 4.0**dims / region.sum()), rtol=1e-4)


def test_edits_change_the_perturbed_items_only_and_batching_keeps_the_effects(dims):
    region = cube(dims, 0, 16)
    model = sx.SegModel(RegionMean(region), activation="none")
    x = torch.full((1, 1, *grid(dims, 16)), 2.0)
    gains = [0.0, 1.0, 3.0, -1.0, 5.0]

    class Gains:
        def __len__(self):
            return len(gains)

        def batch(self, start, stop):
            factor = torch.tensor(gains[start:stop])
            return engine.Batch(x.expand(stop - start, *x.shape[1:]), {"gain": lambda mean: mean * factor})

    target = T.ClassRegion(1, reduce="mean")
    found = {}
    for batch_size in (1, 2, 64):
        context = engine.context(model, x, batch_size=batch_size)
        model.reset_counts()
        found[batch_size] = engine.score_all(model, Gains(), engine.target_scorer(model, target), context, clean=x)
        batches = len(gains) if batch_size == 1 else -(-len(gains) // (batch_size - 1))
        assert model.forward_calls == batches + (batch_size == 1)  # alone, the clean input runs once first
        assert model.forward_passes == len(gains) + (1 if batch_size == 1 else batches)
    for effects in found.values():  # the mean is 2: the edit scales it, the clean input is left as it was
        assert torch.allclose(effects, 2.0 * torch.tensor(gains, dtype=torch.float64) - 2.0, atol=1e-4)
        assert effects[1] == 0.0  # a gain of 1 changes nothing: exactly zero, in any batch
    plain = engine.score_all(model, engine.Inputs(3, lambda i: x[0] * i), engine.target_scorer(model, target),
                             engine.context(model, x, batch_size=2))
    assert torch.allclose(plain, torch.tensor([0.0, 2.0, 4.0], dtype=torch.float64), atol=1e-4)


def test_an_edit_of_an_unknown_layer_or_a_plain_function_is_a_clear_error():
    x = torch.ones(1, 1, 8, 8)
    edit = engine.Batch(x, {"nope": lambda out: out})
    perturbations = type("One", (), {"__len__": lambda self: 1, "batch": lambda self, a, b: edit})()
    for net, message in ((nn.Conv2d(1, 2, 1), "no layer 'nope'"), (lambda t: torch.cat([t, t], 1), "nn.Module")):
        model = sx.SegModel(net)
        with pytest.raises(sx.errors.SegxaiError, match=message):
            engine.score_all(model, perturbations, engine.target_scorer(model, T.ClassRegion(1)),
                             engine.context(model, x))
    with pytest.raises(sx.errors.SegxaiError, match="seed must be an int"):
        engine.context(model, x, seed=1.5)
