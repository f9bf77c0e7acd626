"""KernelSHAP checked against Shapley values known in closed form (an additive model) or computed exactly by
enumerating every coalition (a model with interactions)."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

import segxai as sx
from segxai import targets as T
from segxai.methods import METHODS
from segxai.methods.perturb.kernel_shap import ShapleyKernel, ShapleySampler
from segxai.methods.perturb.superpixels import superpixels
from tests.conftest import cube, grid, pointwise_net


def image(dims: int, size: int = 14, seed: int = 0) -> torch.Tensor:
    """A one-channel image with some structure, so superpixels are not a plain grid."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn((1, *grid(dims, size)), generator=generator) + torch.linspace(-2, 2, size)


def segments_of(x: torch.Tensor, n_segments: int) -> torch.Tensor:
    return torch.from_numpy(superpixels(x.numpy(), "slic", n_segments))


def per_superpixel(values: torch.Tensor, segments: torch.Tensor) -> torch.Tensor:
    """The sum of `values` over each superpixel."""
    return torch.bincount(segments.flatten(), weights=values.flatten().double())


def exact_shapley(score, m: int) -> np.ndarray:
    """phi_i = sum over coalitions S without i of |S|! (M-|S|-1)! / M! (score(S + i) - score(S))."""
    phi = np.zeros(m)
    for i in range(m):
        others = [j for j in range(m) if j != i]
        for size in range(m):
            weight = math.factorial(size) * math.factorial(m - size - 1) / math.factorial(m)
            for coalition in itertools.combinations(others, size):
                phi[i] += weight * (score({*coalition, i}) - score(set(coalition)))
    return phi


@pytest.mark.parametrize("with_roi", [False, True], ids=["full", "roi"])
def test_recovers_the_shapley_values_of_an_additive_model(dims, with_roi):
    """The class-1 logit summed over the image is a sum of per-superpixel terms w * sum(x over superpixel i), so
    superpixel i's Shapley value is its term's change from the input to the fill (here the image mean), counted
    on the part of it that is perturbed (inside the ROI)."""
    net = pointwise_net(dims, in_channels=1, classes=2)
    x = image(dims)
    roi = cube(dims, 3, 9, 14) if with_roi else torch.ones(x.shape[1:], dtype=torch.bool)
    segments = segments_of(x, 20)
    features = per_superpixel(roi, segments) / per_superpixel(torch.ones_like(roi), segments) >= 0.1
    change = net.weight[1, 0].item() * per_superpixel((x[0] - x.mean()) * roi, segments)
    expected = torch.where(features, change, 0)[segments] * roi
    explanation = sx.KernelSHAP(net, n_samples=300, n_segments=20, fill="mean").explain(
        x, T.ClassRegion(1), roi=roi if with_roi else None, seed=1, progress=False)
    attribution = explanation.attribution[0].double()
    # The fit is exact; the scores are float32 sums, so a few float32 roundings of their size bound the error
    # (measured: ~1e-8 of it, the tolerance ~1e-6).
    tolerance = 8 * torch.finfo(torch.float32).eps * float(abs(explanation.stats["score"]) + change.abs().sum())
    assert (attribution - expected).abs().max() <= tolerance, (attribution - expected).abs().max()
    assert explanation.stats["features"] == int(features.sum()) and explanation.stats["r2"] > 1 - 1e-9


def test_approaches_exact_shapley_values_with_interactions_where_lime_does_not():
    """A saturating score of the summed logits, tanh(sum_i a_i z_i / s), couples every superpixel with every
    other; its Shapley values come from enumerating all 2^M coalitions. KernelSHAP's estimate is within 2 % of
    the largest value (measured: 0.5 %) and adds up exactly to score(all on) - score(all off); LIME's cosine
    kernel estimates another quantity (measured: 4 % off)."""
    net = pointwise_net(2, in_channels=1, classes=2)
    x = image(2)
    segments = segments_of(x, 10)
    m = int(segments.max()) + 1
    terms = (net.weight[1, 0].item() * per_superpixel(x[0], segments)).numpy()
    scale = np.abs(terms).sum() / 3
    bias = net.bias[1].item() * x[0].numel()
    phi = exact_shapley(lambda coalition: math.tanh(sum(terms[i] for i in coalition) / scale), m)

    def target(output):
        return torch.tanh((output.logits[:, 1].flatten(1).sum(1) - bias) / scale)

    def estimate(method):
        attribution = method.explain(x, target, seed=0, progress=False).attribution[0]
        return (per_superpixel(attribution, segments) / per_superpixel(torch.ones_like(attribution), segments)).numpy()

    shap = estimate(sx.KernelSHAP(net, n_samples=3000, n_segments=10))
    assert m >= 6 and np.abs(shap - phi).max() <= 0.02 * np.abs(phi).max(), (shap, phi)
    assert shap.sum() == pytest.approx(phi.sum(), abs=1e-4)
    lime = estimate(sx.LIME(net, n_samples=3000, n_segments=10, alpha=0.0))
    assert np.abs(lime - phi).max() > 0.02 * np.abs(phi).max()


def test_sampler_draws_coalitions_in_proportion_to_the_shapley_kernel():
    m, n = 6, 40000
    z = ShapleySampler()(n, m, torch.Generator().manual_seed(0))
    assert z.shape == (n, m) and z.dtype == torch.bool
    assert bool(z[0].all()) and not bool(z[1].any())
    sizes = z[2:].sum(1)
    mass = np.array([(m - 1) / (s * (m - s)) for s in range(1, m)])
    frequency = np.bincount(sizes.numpy(), minlength=m + 1)[1:m] / len(sizes)
    assert np.abs(frequency - mass / mass.sum()).max() < 0.01
    for size in range(1, m):   # given its size, a coalition is a uniform subset: each feature in it s/M of the time
        assert np.allclose(z[2:][sizes == size].double().mean(0), size / m, atol=0.03)
    assert ShapleySampler()(5, 1, torch.Generator()).tolist() == [[True], [False], [False], [False], [False]]


def test_kernel_weighs_the_full_and_empty_coalitions_as_constraints():
    z = np.array([[1, 1, 1], [0, 0, 0], [1, 0, 0], [1, 1, 0]], dtype=float)
    assert ShapleyKernel(anchor=1e6)(z).tolist() == [1e6, 1e6, 1.0, 1.0]


def test_registered_seeded_and_recorded_per_item():
    assert METHODS["kernel_shap"] is sx.KernelSHAP
    net = pointwise_net(2, in_channels=1, classes=2)
    x = torch.stack([image(2, seed=0), image(2, seed=1)])
    shap = sx.KernelSHAP(net, n_samples=40, n_segments=8)
    first, again = (shap.explain(x, T.ClassRegion(1, score="prob"), seed=2, progress=False) for _ in range(2))
    assert torch.equal(first.attribution, again.attribution)
    assert first.stats["method"] == "kernel_shap" and first.stats["params"]["surrogate"] == "WeightedLinear(alpha=0.0)"
    assert [item.superpixels for item in first.items] == [int(segments_of(i, 8).max()) + 1 for i in x]
