"""SegModel: class conventions, output selection, inferers, input checks and exact pass counting."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import segxai as sx
from segxai.errors import SegxaiError
from segxai.model import SegOutput, check_input
from tests.conftest import grid, pointwise_net


def output(activation: str, channels: int, seed: int = 0) -> SegOutput:
    torch.manual_seed(seed)
    return SegOutput(torch.randn(2, channels, 5, 6), activation)


@pytest.mark.parametrize(
    "activation, channels, classes",
    [("softmax", 3, [0, 1, 2]), ("sigmoid", 1, [0, 1]), ("sigmoid", 3, [0, 1, 2, 3]), ("none", 1, [0, 1]), ("none", 3, [0, 1, 2])],
)
def test_class_conventions(activation, channels, classes):
    out = output(activation, channels)
    assert out.classes == classes
    labels = out.label_map()
    assert labels.shape == (2, 5, 6)
    assert set(labels.unique().tolist()) <= set(classes)
    with pytest.raises(SegxaiError, match="out of range"):
        out.class_prob(max(classes) + 1)


def test_softmax_class_is_channel():
    out = output("softmax", 3)
    assert torch.equal(out.class_logit(2), out.logits[:, 2])
    assert torch.allclose(out.class_prob(1), torch.softmax(out.logits, 1)[:, 1])
    assert torch.equal(out.class_mask(1), out.logits.argmax(1) == 1)


def test_one_channel_sigmoid_foreground_and_complement():
    out = output("sigmoid", 1)
    p = torch.sigmoid(out.logits[:, 0])
    assert torch.allclose(out.class_prob(1), p)
    assert torch.allclose(out.class_prob(0), 1 - p)
    assert torch.equal(out.class_logit(0), -out.logits[:, 0])
    assert torch.equal(out.label_map(), (p > 0.5).long())


def test_multilabel_sigmoid_class_is_channel_plus_one():
    out = output("sigmoid", 3)
    p = torch.sigmoid(out.logits)
    assert torch.allclose(out.class_prob(3), p[:, 2])
    assert torch.equal(out.class_mask(2), p[:, 1] > 0.5)
    best, index = p.max(1)
    assert torch.equal(out.label_map(), torch.where(best > 0.5, index + 1, 0))
    with pytest.raises(SegxaiError, match="no logit"):
        out.class_logit(0)


def test_none_activation_thresholds_raw_values():
    out = SegOutput(torch.tensor([[[[0.2, 0.7]]]]), "none", threshold=0.5)
    assert out.label_map().tolist() == [[[0, 1]]]
    assert torch.allclose(out.class_prob(1), torch.tensor([[[0.2, 0.7]]]))


def test_forward_and_backward_passes_are_counted_exactly(dims):
    model = sx.SegModel(pointwise_net(dims))
    x2 = torch.randn(2, 2, *grid(dims, 8), requires_grad=True)
    x3 = torch.randn(3, 2, *grid(dims, 8))
    out = model(x2)
    with torch.no_grad():
        model(x3)
    voxels = 5 * 8**dims
    assert model.counts() == {"forward_passes": 5, "forward_voxels": voxels, "backward_passes": 0, "forward_calls": 2,
                              "backward_calls": 0}
    score = out.logits.sum()
    with model.measure() as cost:
        score.backward(retain_graph=True)
        score.backward()
    assert model.counts() == {"forward_passes": 5, "forward_voxels": voxels, "backward_passes": 4, "forward_calls": 2,
                              "backward_calls": 2}
    assert (cost.forward_passes, cost.backward_passes, cost.counts["backward_calls"]) == (0, 4, 2)
    assert cost.seconds > 0 and cost.peak_memory_bytes >= 0
    model.reset_counts()
    assert set(model.counts().values()) == {0}


class DeepSupervision(nn.Module):
    def __init__(self, dims: int, stacked: bool) -> None:
        super().__init__()
        self.head = pointwise_net(dims)
        self.stacked = stacked

    def forward(self, x):
        full = self.head(x)
        if self.stacked:
            return torch.stack([full, full * 0 + 7], dim=1)
        return [full, full[..., ::2]]


@pytest.mark.parametrize("stacked", [False, True])
def test_deep_supervision_takes_full_resolution_head(dims, stacked):
    net = DeepSupervision(dims, stacked)
    x = torch.randn(1, 2, *grid(dims, 8))
    out = sx.SegModel(net)(x)
    assert torch.allclose(out.logits, net.head(x))


def test_output_on_another_grid_is_a_clear_error(dims):
    net = nn.Sequential(pointwise_net(dims), (nn.MaxPool2d if dims == 2 else nn.MaxPool3d)(2))
    with pytest.raises(SegxaiError, match="input grid"):
        sx.SegModel(net)(torch.randn(1, 2, *grid(dims, 8)))


def test_sliding_window_matches_direct_for_a_pointwise_net_and_keeps_gradients(dims):
    net = pointwise_net(dims)
    x = torch.randn(1, 2, *grid(dims, 12), requires_grad=True)
    windowed = sx.SegModel(net, inferer="sliding_window", roi_size=8, blend_mode="constant")
    out = windowed(x)
    assert torch.allclose(out.logits, net(x), atol=1e-5)
    (grad,) = torch.autograd.grad(out.logits[:, 1].sum(), x)
    assert torch.allclose(grad[0, 0], torch.full(grid(dims, 12), net.weight[1, 0].flatten()[0].item()), atol=1e-5)
    assert windowed.counts()["forward_passes"] == 1


def test_sliding_window_needs_roi_size():
    with pytest.raises(SegxaiError, match="roi_size"):
        sx.SegModel(pointwise_net(2), inferer="sliding_window")


@pytest.mark.parametrize(
    "data, message",
    [
        (np.zeros((2, 8)), "expected"),
        (np.zeros((1, 1, 1, 2, 8, 8)), "expected"),
        (np.zeros((3, 8, 8)), "channel"),
        (np.full((2, 8, 8), np.nan), "NaN"),
        (np.array([[[np.inf]], [[0.0]]]), "NaN or infinite"),
        (np.array([["a"]], dtype=object), "dtype"),
        ("image.png", "torch.Tensor or numpy"),
    ],
)
def test_bad_inputs_are_clear_errors(data, message):
    model = sx.SegModel(pointwise_net(2))
    with pytest.raises(SegxaiError, match=message):
        model.prepare(data)


def test_prepare_infers_batch_and_spatial_dims(dims):
    model = sx.SegModel(pointwise_net(dims))
    assert model.spatial_dims == dims and model.in_channels == 2
    x, batched = model.prepare(np.zeros((2, *grid(dims, 4))))
    assert x.shape == (1, 2, *grid(dims, 4)) and not batched
    x, batched = model.prepare(torch.zeros(3, 2, *grid(dims, 4)))
    assert x.shape[0] == 3 and batched


def test_predict_unbatched_returns_spatial_label_map(dims):
    net = pointwise_net(dims)
    x = torch.randn(2, *grid(dims, 6))
    labels = sx.SegModel(net).predict(x)
    assert labels.shape == grid(dims, 6)
    assert torch.equal(labels, net(x[None]).argmax(1)[0])


def test_check_input_without_model_information():
    x, batched = check_input(np.zeros((1, 4, 4)))
    assert x.shape == (1, 1, 4, 4) and not batched


def test_bad_constructor_arguments():
    with pytest.raises(SegxaiError, match="activation"):
        sx.SegModel(pointwise_net(2), activation="relu")
    with pytest.raises(SegxaiError, match="callable"):
        sx.SegModel(42)


def test_a_failure_inside_the_network_is_reported_with_the_input_shape():
    from monai.networks.nets import UNet

    model = sx.SegModel(UNet(2, 1, 2, channels=(4, 8), strides=(2,), num_res_units=0))
    with pytest.raises(SegxaiError, match=r"\(1, 1, 7, 9\).*multiples of\s+its stride.*pad_to"):
        model(torch.randn(1, 1, 7, 9))
    with pytest.raises(SegxaiError, match=r"failed on an input of shape \(1, 2, 8, 8\)"):
        model(torch.randn(1, 2, 8, 8))
