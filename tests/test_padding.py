"""Any grid in, same grid out: SegModel pads inputs to the network's stride and crops the logits back, for
inference, gradients and perturbation methods alike (the map on an odd grid is the map on the padded input,
cropped)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import segxai as sx
from segxai import targets as T
from segxai.errors import SegxaiError
from segxai.models.presets import build_network, network_config, total_stride

ODD = {2: (37, 29), 3: (13, 11, 9)}


def unet(dims: int) -> tuple[torch.nn.Module, int]:
    config = network_config(f"unet{dims}d", in_channels=1, out_channels=2)
    torch.manual_seed(0)
    return build_network(config).eval(), total_stride(config)


def padded_by_hand(x: torch.Tensor, stride: int) -> torch.Tensor:
    widths = [w for n in reversed(x.shape[1:]) for w in (0, -n % stride)]
    return F.pad(x[None], widths)[0]


def crop(values: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    return values[(..., *(slice(0, n) for n in shape))]


@pytest.mark.parametrize("dims", [2, 3])
def test_odd_grid_goes_in_and_the_same_grid_comes_out(dims):
    net, stride = unet(dims)
    x = torch.randn(2, 1, *ODD[dims], generator=torch.Generator().manual_seed(1))
    with pytest.raises(SegxaiError, match="pad_to"):
        sx.SegModel(net)(x)
    model = sx.SegModel(net, pad_to=stride)
    out = model(x)
    assert out.spatial_shape == ODD[dims]
    with torch.no_grad():
        by_hand = net(torch.stack([padded_by_hand(item, stride) for item in x]))
    assert torch.allclose(out.logits, crop(by_hand, ODD[dims]), atol=1e-5)
    assert model.predict(x[0]).shape == ODD[dims]
    assert model.counts()["forward_voxels"] == 3 * x[0, 0].numel()  # the input's voxels, not the padding's


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("method", ["saliency", "integrated", "occlusion"])
def test_a_map_on_an_odd_grid_is_the_map_on_the_padded_input_cropped(dims, method):
    net, stride = unet(dims)
    x = torch.randn(1, *ODD[dims], generator=torch.Generator().manual_seed(2))
    position = tuple(n // 2 for n in ODD[dims])
    build = {"saliency": lambda m: sx.Saliency(m), "integrated": lambda m: sx.IntegratedGradients(m, n_steps=4),
             "occlusion": lambda m: sx.Occlusion(m, window=4, stride=4)}[method]
    odd = build(sx.SegModel(net, pad_to=stride)).explain(x, T.Voxel(1, position), progress=False)
    padded = build(sx.SegModel(net)).explain(padded_by_hand(x, stride), T.Voxel(1, position), progress=False)
    assert odd.attribution.shape == x.shape
    # occlusion places whole windows only (Captum's rule), so the padded grid also covers the odd grid's last
    # partial window: compare where both place the same windows
    covered = tuple((n - 4) // 4 * 4 + 4 if method == "occlusion" else n for n in ODD[dims])
    expected = crop(padded.attribution, covered)
    assert expected.abs().max() > 0
    assert torch.allclose(crop(odd.attribution, covered), expected, atol=1e-5 * float(expected.abs().max()) + 1e-7)


def test_gradients_flow_through_padding_into_training():
    net, stride = unet(2)
    model = sx.SegModel(net, pad_to=stride)
    x = torch.randn(1, 1, 21, 18, requires_grad=True)
    model(x).class_logit(1).sum().backward()
    assert x.grad.shape == x.shape and bool(x.grad.abs().sum() > 0)


def test_per_axis_multiples_and_bad_settings():
    net, _ = unet(3)
    model = sx.SegModel(net, pad_to=(4, 4, 4), pad_mode="replicate")
    assert model(torch.randn(1, 1, 9, 10, 11)).spatial_shape == (9, 10, 11)
    with pytest.raises(SegxaiError, match="pad_to"):
        sx.SegModel(net, pad_to=(4, 4))
    with pytest.raises(SegxaiError, match="pad_mode"):
        sx.SegModel(net, pad_to=4, pad_mode="wrap")


def test_a_segmodel_of_a_segmodel_keeps_its_settings():
    net, stride = unet(2)
    inner = sx.SegModel(net, activation="softmax", pad_to=stride)
    outer = sx.SegModel(inner)
    assert outer.net is net and outer.pad_to == inner.pad_to
    x = torch.randn(1, 1, 15, 17)
    assert torch.equal(outer.predict(x), inner.predict(x))
    assert outer.counts()["forward_calls"] == 1 and inner.counts()["forward_calls"] == 1
