"""The contract every registered method keeps, as one table: method x 2D/3D x with/without ROI x batch of 1 and 2,
each explained twice with the same seed: the map's shape, zero outside the ROI, the cost counted, typed figures
for every item and the same map both times. A newly registered method is covered by being registered; one that
needs settings (a pool, small sample counts) gets a row in `SETTINGS`."""
from __future__ import annotations

import dataclasses

import pytest
import torch

import segxai as sx
from segxai.explanation import Explanations, ItemStats
from segxai.methods import METHODS, describe_methods
from segxai.methods.instance_saliency import InstanceSaliency, InstanceStats
from segxai.methods.perturb.base import PerturbationMethod
from tests.conftest import conv_stack, cube, grid

pytestmark = pytest.mark.usefixtures("one_thread")

SIZE, CHANNELS = 8, 2


def pool(dims: int) -> torch.Tensor:
    """Three seeded images on the input grid, for the methods that draw treatments from other images."""
    return torch.randn(3, CHANNELS, *grid(dims, SIZE), generator=torch.Generator().manual_seed(7))


# Settings per method that keep every case to a few forward passes; methods without a row use their defaults.
SETTINGS = {
    "integrated_gradients": lambda dims: {"n_steps": 3},
    "smoothgrad": lambda dims: {"n_samples": 2},
    "occlusion": lambda dims: {"window": 4, "stride": 4},
    "rise": lambda dims: {"n_masks": 6, "grid": 2},
    "lime": lambda dims: {"n_samples": 6, "n_segments": 4},
    "kernel_shap": lambda dims: {"n_samples": 6, "n_segments": 4},
    "causal_blocks": lambda dims: {"block": 4, "pool": pool(dims), "screen_draws": 1, "draws": 2, "tau": 0.0},
}


def build(name: str, dims: int):
    net = conv_stack(dims, layers=2, in_channels=CHANNELS, classes=2, seed=3)  # batch-norm free, radius 2
    return METHODS[name](sx.SegModel(net), **SETTINGS.get(name, lambda dims: {})(dims))


def test_the_registry_names_and_describes_every_method():
    assert all(cls.name == name for name, cls in METHODS.items())
    descriptions = describe_methods()
    assert list(descriptions) == list(METHODS) and all(descriptions.values())
    assert set(SETTINGS) - set(METHODS) <= {"kernel_shap"}  # no row for a method that is not registered


@pytest.mark.parametrize("batch", [1, 2], ids=["single", "batch2"])
@pytest.mark.parametrize("with_roi", [False, True], ids=["no-roi", "roi"])
@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_keeps_the_contract(name, dims, with_roi, batch):
    explainer = build(name, dims)
    x = torch.randn(batch, CHANNELS, *grid(dims, SIZE), generator=torch.Generator().manual_seed(batch))
    inputs = x if batch > 1 else x[0]
    target = sx.targets.ClassRegion(1, cube(dims, 0, 3, SIZE))
    roi = cube(dims, 2, SIZE, SIZE) if with_roi else None
    first = explainer.explain(inputs, target, roi, seed=5, batch_size=4, progress=False)
    again = explainer.explain(inputs, target, roi, seed=5, batch_size=4, progress=False)

    spatial = grid(dims, SIZE)
    lead = (batch,) if batch > 1 else ()
    assert first.batched == (batch > 1) and first.attribution.shape[len(lead) + 1:] == spatial
    assert first.attribution.shape[:len(lead)] == lead and first.attribution.shape[len(lead)] in (1, CHANNELS)
    assert torch.isfinite(first.attribution).all()
    if roi is not None:
        assert first.attribution[..., ~roi].abs().sum() == 0
    assert torch.equal(first.attribution, again.attribution)

    cost = first.cost
    assert cost.forward_passes > 0 and cost.forward_calls > 0
    if not issubclass(METHODS[name], PerturbationMethod):
        assert cost.backward_passes > 0
    assert {k: first.stats[k] for k in cost.as_dict()} == cost.as_dict()

    assert len(first.items) == batch
    assert all(isinstance(item, ItemStats) and dataclasses.fields(item) for item in first.items)
    assert [type(item) for item in first.items] == [type(item) for item in again.items]
    figures = [item.as_dict() for item in first.items]
    if batch > 1:
        assert first.stats["items"] == figures
    else:
        assert figures[0].items() <= first.stats.items()
    assert first.stats["method"] == name and first.stats["seed"] == 5


@pytest.mark.parametrize("method", ["smoothgrad", "occlusion"])
def test_instance_saliency_answers_the_same_verb(dims, method):
    net = conv_stack(dims, layers=2, in_channels=1, classes=2, seed=1)
    x = -torch.ones(1, *grid(dims, 12))
    x[0][cube(dims, 1, 3, 12)] = 2.0
    x[0][cube(dims, 7, 10, 12)] = 2.0
    with torch.no_grad():  # a network predicting class 1 exactly where the input is positive
        net[-1].weight.zero_(), net[-1].bias.zero_()
        net[-1].weight[(1, slice(None), *(1,) * dims)] = 1.0
        net[0].weight.zero_(), net[0].bias.zero_()
        net[0].weight[(slice(None), 0, *(1,) * dims)] = 1.0
    if method == "smoothgrad":
        explainer = InstanceSaliency(sx.SegModel(net), "smoothgrad", n_samples=2)
    else:
        explainer = InstanceSaliency(sx.SegModel(net), sx.Occlusion(net, window=4, stride=4))
    roi = cube(dims, 0, 11, 12)
    first = explainer.explain(x, 1, roi, seed=4, progress=False)
    again = explainer.explain(x, 1, roi, seed=4, progress=False)
    assert isinstance(first, Explanations) and first.keys == (1, 2)
    assert first.cost.forward_passes > 0
    for a, b in zip(first, again):
        assert torch.equal(a.attribution, b.attribution) and a.attribution[..., ~roi].abs().sum() == 0
        assert isinstance(a.item(), InstanceStats) and a.stats["instance"] == a.item().instance
    assert [e.item().instance_voxels for e in first] == [2**dims, 3**dims]
