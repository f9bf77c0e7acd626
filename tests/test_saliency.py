"""Saliency checked analytically: on linear networks the input gradient is known in closed form."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import segxai as sx
from segxai import targets as T
from segxai.errors import SegxaiError
from tests.conftest import conv, cube, grid, pointwise_net, threshold_net


def region(dims: int, size: int = 8) -> torch.Tensor:
    return cube(dims, 2, 5, size)


def test_pointwise_linear_net_saliency_is_the_weight_on_the_target_region(dims):
    net = pointwise_net(dims, in_channels=2, classes=3)
    mask = region(dims)
    explanation = sx.Saliency(sx.SegModel(net)).explain(torch.randn(2, *grid(dims, 8)), T.ClassRegion(2, mask))
    weights = net.weight[2].flatten().detach()
    expected = weights.view(2, *(1,) * dims) * mask.float()
    assert explanation.attribution.shape == (2, *grid(dims, 8))
    assert torch.allclose(explanation.attribution, expected, atol=1e-6)


def test_conv_net_voxel_saliency_is_the_kernel_around_the_voxel(dims):
    torch.manual_seed(1)
    net = conv(dims, 1, 2, kernel_size=3, padding=1)
    position = (4,) * dims
    explanation = sx.Saliency(sx.SegModel(net)).explain(torch.randn(1, *grid(dims, 9)), T.Voxel(1, position))
    expected = torch.zeros(1, *grid(dims, 9))
    expected[(0, *(slice(3, 6),) * dims)] = net.weight[1, 0].detach()
    assert torch.allclose(explanation.attribution, expected, atol=1e-6)


def test_sigmoid_one_channel_model_and_probability_target():
    net = pointwise_net(2, in_channels=1, classes=1)
    model = sx.SegModel(net, activation="sigmoid")
    x = torch.randn(1, 6, 6)
    explanation = sx.Saliency(model).explain(x, T.Voxel(1, (2, 3), score="prob"))
    p = torch.sigmoid(net(x[None]))[0, 0, 2, 3]
    assert torch.allclose(explanation.attribution[0, 2, 3], (p * (1 - p) * net.weight.flatten()[0]).detach(), atol=1e-6)
    assert explanation.attribution.abs().sum() == explanation.attribution[0, 2, 3].abs()


def test_batch_items_are_explained_independently_and_passes_counted(dims):
    net = pointwise_net(dims)
    x = torch.randn(3, 2, *grid(dims, 6))
    batched = sx.Saliency(sx.SegModel(net)).explain(x, T.ClassRegion(1, score="prob"))
    assert batched.batched and batched.attribution.shape == x.shape
    single = sx.Saliency(sx.SegModel(net)).explain(x[1], T.ClassRegion(1, score="prob"))
    assert torch.allclose(batched.attribution[1], single.attribution, atol=1e-6)
    assert (batched.stats["forward_passes"], batched.stats["backward_passes"]) == (3, 3)
    assert (single.stats["forward_passes"], single.stats["backward_passes"]) == (1, 1)


def test_roi_zeroes_the_map_outside(dims):
    net = pointwise_net(dims)
    roi = region(dims)
    explanation = sx.Saliency(sx.SegModel(net)).explain(torch.randn(2, *grid(dims, 8)), T.ClassRegion(1), roi=roi)
    assert explanation.attribution[:, ~roi].abs().sum() == 0
    assert explanation.attribution[:, roi].abs().sum() > 0
    assert explanation.stats["roi_voxels"] == int(roi.sum())


def test_instance_target_keeps_its_footprint_for_overlays(dims):
    net = threshold_net(dims)
    x = -torch.ones(1, *grid(dims, 10))
    x[(0, *(slice(1, 3),) * dims)] = 1.0
    x[(0, *(slice(6, 9),) * dims)] = 1.0
    explanation = sx.Saliency(sx.SegModel(net)).explain(x, T.Instance(1, 2))
    assert int(explanation.target_mask.sum()) == 3**dims
    assert torch.equal(explanation.attribution[0] != 0, explanation.target_mask)


def test_non_differentiable_target_is_a_clear_error():
    with pytest.raises(SegxaiError, match="not differentiable"):
        sx.Saliency(sx.SegModel(pointwise_net(2))).explain(torch.randn(2, 6, 6), T.RegionDice(1))


def test_absolute_option_and_stats_are_recorded():
    net = pointwise_net(2)
    explanation = sx.Saliency(sx.SegModel(net), absolute=True).explain(np.random.default_rng(0).normal(size=(2, 6, 6)), T.ClassRegion(0))
    assert (explanation.attribution >= 0).all()
    stats = explanation.stats
    assert stats["method"] == "saliency" and stats["params"] == {"absolute": True}
    assert stats["seconds"] > 0 and stats["peak_memory_bytes"] >= 0 and stats["seed"] == 0
    assert stats["target"]["target"] == "ClassRegion"


def test_a_bare_module_is_wrapped_with_softmax():
    explanation = sx.Saliency(pointwise_net(2)).explain(torch.randn(2, 6, 6), T.ClassRegion(1))
    assert explanation.attribution.shape == (2, 6, 6)


def test_matches_captum_saliency_on_a_unet_for_the_same_scalar_target(dims):
    """Reference check: Captum's Saliency (abs=False) on a forward function that applies the same target."""
    captum_attr = pytest.importorskip("captum.attr")
    from monai.networks.nets import UNet

    from segxai.model import SegOutput

    torch.manual_seed(0)
    net = UNet(dims, 2, 3, channels=(4, 8), strides=(2,), num_res_units=1, norm="batch").eval()
    x = torch.randn(1, 2, *grid(dims, 8))
    mask = region(dims)
    target = T.ClassRegion(2, mask, score="prob", reduce="mean")
    ours = sx.Saliency(sx.SegModel(net)).explain(x, target).attribution

    def forward(inputs: torch.Tensor) -> torch.Tensor:
        return target(SegOutput(net(inputs), "softmax"))

    reference = captum_attr.Saliency(forward).attribute(x.clone().requires_grad_(True), abs=False)[0]
    assert torch.allclose(ours, reference, rtol=1e-5, atol=1e-8)
