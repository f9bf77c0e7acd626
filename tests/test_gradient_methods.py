"""Integrated Gradients, SmoothGrad, Grad-CAM and Grad-CAM++: analytic cases, and cross-checks against Captum
and MONAI (test extras) on the same scalar targets."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import segxai as sx
from segxai import targets as T
from segxai.errors import SegxaiError
from segxai.methods import METHODS, get_method
from segxai.methods.integrated import integration_rule
from segxai.model import SegOutput
from tests.conftest import conv, conv_stack, cube, grid, pointwise_net

RULES = ["gausslegendre", "riemann_trapezoid", "riemann_left", "riemann_right", "riemann_middle"]


def small_unet(dims: int) -> nn.Module:
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    return UNet(dims, 2, 3, channels=(4, 8, 16), strides=(2, 2), num_res_units=0, norm="batch").eval()


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(np.corrcoef(a.flatten().double().numpy(), b.flatten().double().numpy())[0, 1])


def minmax(a: torch.Tensor) -> torch.Tensor:
    return (a - a.min()) / (a.max() - a.min())


# ----------------------------------------------------------------------------------- Integrated Gradients
@pytest.mark.parametrize("method", RULES)
def test_integration_rules_integrate_polynomials(method):
    alphas, weights = integration_rule(method, 8)
    assert weights.sum() == pytest.approx(1.0, abs=1e-12)
    assert ((alphas >= 0) & (alphas <= 1)).all()
    tolerance = 1e-12 if method in ("gausslegendre", "riemann_trapezoid", "riemann_middle") else 0.2
    assert (weights * alphas).sum() == pytest.approx(0.5, abs=tolerance)


@pytest.mark.parametrize("method", ["gausslegendre", "riemann_trapezoid"])
def test_ig_on_a_linear_model_is_input_times_weight_and_complete(dims, method):
    net = pointwise_net(dims, in_channels=2, classes=3)
    mask = cube(dims, 1, 4, 6)
    x = torch.randn(2, *grid(dims, 6))
    baseline = torch.randn(2, *grid(dims, 6))
    ig = sx.IntegratedGradients(sx.SegModel(net), baselines=baseline, n_steps=7, method=method)
    explanation = ig.explain(x, T.ClassRegion(2, mask), batch_size=3)
    expected = (x - baseline) * net.weight[2].detach().view(2, *(1,) * dims) * mask
    assert torch.allclose(explanation.attribution, expected, rtol=1e-5, atol=1e-6)
    assert abs(explanation.stats["convergence_delta"]) < 1e-4 and explanation.item().convergence_delta == \
        explanation.stats["convergence_delta"]
    assert explanation.stats["backward_passes"] == 7 and explanation.stats["forward_passes"] == 9


def test_ig_completeness_on_a_nonlinear_net_and_batch_independence(dims):
    net = conv_stack(dims, layers=3, in_channels=1, classes=2)
    x = torch.randn(2, 1, *grid(dims, 6))
    target = T.ClassRegion(1, cube(dims, 2, 4, 6), score="prob", reduce="mean")
    ig = sx.IntegratedGradients(sx.SegModel(net), n_steps=32)
    batched = ig.explain(x, target, batch_size=5)
    single = ig.explain(x[1], target, batch_size=64)
    assert max(abs(item["convergence_delta"]) for item in batched.stats["items"]) < 1e-4
    deltas = [item["convergence_delta"] for item in batched.stats["items"]]
    assert [item.convergence_delta for item in batched.items] == deltas
    assert torch.allclose(batched.attribution[1], single.attribution, atol=1e-6)


def test_ig_binds_the_target_on_the_unperturbed_input_and_zeroes_outside_the_roi(dims):
    net = pointwise_net(dims, in_channels=1, classes=2)
    with torch.no_grad():
        net.weight.zero_()
        net.bias.zero_()
        net.weight[1, 0] = 1.0
    x = -torch.ones(1, *grid(dims, 8))
    x[(0, *(slice(1, 3),) * dims)] = 1.0
    x[(0, *(slice(5, 7),) * dims)] = 2.0
    roi = cube(dims, 0, 6, 8)
    explanation = sx.IntegratedGradients(net, n_steps=4).explain(x, T.Instance(1, 2), roi=roi)
    footprint = cube(dims, 5, 7, 8)
    assert torch.equal(explanation.target_mask, footprint)  # the baseline 0 predicts nothing: bound on x
    assert torch.equal(explanation.attribution[0] != 0, footprint & roi)


def test_ig_bad_settings_are_clear_errors():
    net = pointwise_net(2)
    with pytest.raises(SegxaiError, match="method must be one of"):
        sx.IntegratedGradients(net, method="simpson")
    with pytest.raises(SegxaiError, match="n_steps"):
        sx.IntegratedGradients(net, n_steps=1, method="riemann_trapezoid")
    with pytest.raises(SegxaiError, match="do not broadcast"):
        sx.IntegratedGradients(net, baselines=torch.zeros(3, 5, 5)).explain(torch.randn(2, 6, 6), T.ClassRegion(1))
    with pytest.raises(SegxaiError, match="baselines must be"):
        sx.IntegratedGradients(net, baselines="zeros")


@pytest.mark.parametrize("method", ["riemann_trapezoid", "gausslegendre"])
def test_ig_matches_captum_for_the_same_scalar_target(dims, method):
    captum_attr = pytest.importorskip("captum.attr")
    net = small_unet(dims)
    x = torch.randn(1, 2, *grid(dims, 8))
    target = T.ClassRegion(2, cube(dims, 2, 6, 8), score="prob", reduce="mean")
    ours = sx.IntegratedGradients(net, baselines=0.5, n_steps=20, method=method).explain(x, target).attribution

    def forward(inputs: torch.Tensor) -> torch.Tensor:
        return target(SegOutput(net(inputs), "softmax"))

    reference = captum_attr.IntegratedGradients(forward).attribute(x, baselines=0.5, n_steps=20, method=method)[0]
    if method == "riemann_trapezoid":  # Captum's trapezoid weights sum to (n - 1)/n, ours to 1
        reference = reference * 20 / 19
    relative = (ours - reference).abs().max() / reference.abs().max()
    assert relative < 1e-4


# ------------------------------------------------------------------------------------------ SmoothGrad
@pytest.mark.parametrize("base", ["saliency", "integrated_gradients", "gradcampp"])
def test_smoothgrad_without_noise_is_the_base_map_exactly(dims, base):
    net = conv_stack(dims, layers=3, in_channels=2, classes=2)
    x = torch.randn(2, 2, *grid(dims, 6))
    target = T.ClassRegion(1, cube(dims, 1, 4, 6))
    model = sx.SegModel(net)
    method = get_method(base, model, **({"n_steps": 6} if base == "integrated_gradients" else {}))
    plain = method.explain(x, target).attribution
    smooth = sx.SmoothGrad(model, base=method, n_samples=3, noise=0.0).explain(x, target, batch_size=4)
    assert torch.equal(smooth.attribution, plain)
    if base == "saliency":
        assert (smooth.stats["forward_passes"], smooth.stats["backward_passes"]) == (2 + 3 * 2, 3 * 2)


def test_smoothgrad_is_seeded_and_independent_of_the_batch_size(dims):
    net = conv_stack(dims, layers=2, in_channels=2, classes=2)
    x = torch.randn(2, *grid(dims, 6))
    target = T.ClassRegion(1, score="prob")
    method = sx.SmoothGrad(sx.SegModel(net), n_samples=5, noise=0.2, variant="smoothgrad_sq")
    a = method.explain(x, target, seed=3, batch_size=1).attribution
    b = method.explain(x, target, seed=3, batch_size=4).attribution
    c = method.explain(x, target, seed=4, batch_size=4).attribution
    assert torch.allclose(a, b, atol=1e-7) and not torch.allclose(a, c)
    assert (a >= 0).all()


def test_smoothgrad_on_a_linear_model_has_no_variance_and_noise_follows_the_reference_channel(dims):
    net = pointwise_net(dims, in_channels=2, classes=3)
    x = torch.randn(2, *grid(dims, 6))
    x[1] *= 10
    target = T.ClassRegion(0)
    model = sx.SegModel(net)
    plain = sx.Saliency(model).explain(x, target).attribution
    smooth = sx.SmoothGrad(model, n_samples=4, noise=0.1, reference_channel=1).explain(x, target)
    assert torch.allclose(smooth.attribution, plain, atol=1e-6)
    spread = float(x[1].max() - x[1].min())
    assert smooth.stats["noise_sigma"] == [pytest.approx(0.1 * spread)] * 2
    variance = sx.SmoothGrad(model, n_samples=4, noise=0.5, variant="vargrad").explain(x, target).attribution
    assert variance.abs().max() < 1e-10


def test_smoothgrad_reduces_the_noise_of_a_nonlinear_gradient_and_keeps_the_footprint(dims):
    net = conv_stack(dims, layers=3, in_channels=1, classes=2)
    x = torch.randn(1, *grid(dims, 8))
    roi = cube(dims, 1, 7, 8)
    target = T.ClassRegion(1, cube(dims, 3, 5, 8))
    smooth = sx.SmoothGrad(net, base=sx.Saliency(net), n_samples=4, noise=0.1).explain(x, target, roi=roi)
    assert smooth.attribution[:, ~roi].abs().sum() == 0 and smooth.attribution[:, roi].abs().sum() > 0
    assert torch.equal(smooth.target_mask, cube(dims, 3, 5, 8))
    assert smooth.stats["params"]["base"] == "saliency" and smooth.stats["params"]["n_samples"] == 4


def test_smoothgrad_bad_settings_are_clear_errors():
    net = pointwise_net(2)
    with pytest.raises(SegxaiError, match="unknown base"):
        sx.SmoothGrad(net, base="occlusion")
    with pytest.raises(SegxaiError, match="gradient method"):
        sx.SmoothGrad(net, base=sx.Occlusion(net))
    with pytest.raises(SegxaiError, match="different network"):
        sx.SmoothGrad(net, base=sx.Saliency(pointwise_net(2, seed=1)))
    with pytest.raises(SegxaiError, match="variant"):
        sx.SmoothGrad(net, variant="median")
    with pytest.raises(SegxaiError, match="noise"):
        sx.SmoothGrad(net, noise=-1)
    with pytest.raises(SegxaiError, match="n_samples"):
        sx.SmoothGrad(net, n_samples=0)


# ------------------------------------------------------------------------------------- Grad-CAM family
def hand_gradcampp(net: nn.Sequential, x: torch.Tensor, cls: int, mask: torch.Tensor) -> torch.Tensor:
    """Grad-CAM++ of `sum_M z_cls` at layer "0" of conv -> tanh -> 1x1 conv, written out without autograd:
    dT/dA_k(u) = W[cls, k] (1 - tanh(A_k(u))^2) M(u)."""
    with torch.no_grad():
        a = net[0](x)[0]
        w = net[2].weight[cls].flatten()
        g = w.view(-1, *(1,) * mask.dim()) * (1 - torch.tanh(a) ** 2) * mask
        out = torch.zeros(mask.shape)
        for k in range(a.shape[0]):
            denominator = 2 * g[k] ** 2 + (a[k] * g[k] ** 3).sum()
            alpha = torch.where(denominator != 0, g[k] ** 2 / denominator, torch.zeros_like(denominator))
            out += (alpha * g[k].clamp_min(0)).sum() * a[k]
    return out


def test_gradcampp_matches_a_hand_computed_case(dims):
    torch.manual_seed(2)
    net = nn.Sequential(conv(dims, 1, 3, kernel_size=3, padding=1), nn.Tanh(), conv(dims, 3, 2, kernel_size=1))
    x = torch.randn(1, 1, *grid(dims, 5))
    mask = cube(dims, 1, 3, 5)
    explanation = sx.GradCAMpp(net, layer="0").explain(x[0], T.ClassRegion(1, mask))
    assert explanation.attribution.shape == (1, *grid(dims, 5))
    assert torch.allclose(explanation.attribution[0], hand_gradcampp(net, x, 1, mask), atol=1e-6)
    assert explanation.stats["layer"] == "0" and explanation.stats["layer_shape"] == [3, *grid(dims, 5)]


def test_gradcam_on_the_logit_layer_is_the_scaled_logit_map(dims):
    net = pointwise_net(dims, in_channels=2, classes=3)
    x = torch.randn(2, *grid(dims, 4))
    explanation = sx.GradCAM(nn.Sequential(net), layer="0").explain(x, T.ClassRegion(1))
    assert torch.allclose(explanation.attribution[0], net(x[None])[0, 1].detach(), atol=1e-6)


class SummedLogits(nn.Module):
    """A segmentation net seen as a classifier: class logits summed over the grid, `(B, K)` (MONAI's CAMs
    backpropagate `logits[:, class_idx]`, so this makes their score the whole-class ClassRegion target)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).flatten(2).sum(2)


@pytest.mark.parametrize("method", ["gradcam", "gradcampp"])
def test_cams_match_monai_on_a_whole_class_target(dims, method):
    from monai.visualize import GradCAM as MonaiGradCAM, GradCAMpp as MonaiGradCAMpp

    net = small_unet(dims)
    x = torch.randn(1, 2, *grid(dims, 16))
    layer, cls = "model.1.submodule.2.conv", 1
    with torch.no_grad():  # centre the class's summed logit so that MONAI's exp(score) stays finite
        net.model[2].conv.bias[cls] -= net(x)[0, cls].mean()
    ours = METHODS[method](net, layer=layer, relu=True).explain(x, T.ClassRegion(cls)).attribution
    reference_class = MonaiGradCAM if method == "gradcam" else MonaiGradCAMpp
    reference = reference_class(SummedLogits(net), f"net.{layer}", postprocessing=lambda m: m)(x, class_idx=cls)
    assert pearson(minmax(ours), minmax(reference[0].detach())) > 0.99
    if method == "gradcam":
        assert torch.allclose(ours, reference[0].detach(), rtol=1e-4, atol=1e-6)


def test_cam_keeps_the_signed_map_upsampled_and_zero_outside_the_roi(dims):
    net = small_unet(dims)
    x = torch.randn(2, *grid(dims, 8))
    roi = cube(dims, 0, 5, 8)
    explanation = sx.GradCAM(net, layer="model.1.submodule.1.submodule.conv").explain(x, T.ClassRegion(2), roi=roi)
    assert explanation.attribution.shape == (1, *grid(dims, 8))
    assert explanation.stats["layer_shape"][1:] == list(grid(dims, 2))
    assert explanation.attribution[:, ~roi].abs().sum() == 0
    assert (explanation.attribution < 0).any() and (explanation.attribution > 0).any()


def test_default_layer_is_the_second_to_last_convolution_to_run(dims):
    net = conv_stack(dims, layers=3)
    explanation = sx.GradCAM(net).explain(torch.randn(1, *grid(dims, 6)), T.ClassRegion(1))
    assert explanation.stats["layer"] == "2" and explanation.stats["params"]["layer"] is None


def test_unknown_or_unusable_layers_are_clear_errors():
    net = conv_stack(2, layers=3)
    with pytest.raises(SegxaiError, match=r"no layer 'body\.conv'; candidate layers: 0, 2, 4"):
        sx.GradCAM(net, layer="body.conv")
    inplace = nn.Sequential(conv(2, 1, 2, kernel_size=3, padding=1), nn.ReLU(inplace=True), conv(2, 2, 2, 1))
    with pytest.raises(SegxaiError, match="modified in place"):
        sx.GradCAM(inplace, layer="0").explain(torch.randn(1, 6, 6), T.ClassRegion(1))
    with pytest.raises(SegxaiError, match="not differentiable"):
        sx.GradCAM(net, layer="2").explain(torch.randn(1, 6, 6), T.RegionDice(1))


def test_gradcam_runs_once_per_batch_and_is_registered():
    net = conv_stack(2, layers=3)
    explanation = get_method("gradcampp", net, layer="2").explain(torch.randn(3, 1, 6, 6), T.ClassRegion(1))
    assert explanation.attribution.shape == (3, 1, 6, 6)
    assert (explanation.stats["forward_passes"], explanation.stats["backward_passes"]) == (3, 3)
    assert {"integrated_gradients", "smoothgrad", "gradcam", "gradcampp"} <= set(METHODS)
