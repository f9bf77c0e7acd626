"""LIME checked analytically: on a pointwise linear network the score is additive over superpixels, so the
surrogate's coefficients are known in closed form."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import segxai as sx
from segxai import targets as T
from segxai.errors import SegxaiError
from segxai.methods import METHODS, get_method
from segxai.methods.perturb.superpixels import superpixels
from segxai.methods.perturb.surrogate import CosineKernel, UniformSampler, WeightedLinear, cosine_to_ones
from tests.conftest import conv_stack, cube, grid, pointwise_net, threshold_net


def image(dims: int, size: int = 14, seed: int = 0) -> torch.Tensor:
    """A one-channel image with some structure, so superpixels are not a plain grid."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn((1, *grid(dims, size)), generator=generator) + torch.linspace(-2, 2, size)


def segments_of(x: torch.Tensor, n_segments: int) -> torch.Tensor:
    return torch.from_numpy(superpixels(x.numpy(), "slic", n_segments))


def contributions(net: torch.nn.Module, x: torch.Tensor, segments: torch.Tensor, roi: torch.Tensor | None = None) -> torch.Tensor:
    """a_j = w * (sum of x over superpixel j, inside the ROI): the class-1 score lost when j is zeroed."""
    inside = x[0] if roi is None else x[0] * roi
    return net.weight[1, 0].item() * torch.bincount(segments.flatten(), weights=inside.flatten().double())


def overlaps(segments: torch.Tensor, roi: torch.Tensor) -> torch.Tensor:
    flat = segments.flatten()
    return torch.bincount(flat, weights=roi.flatten().double()) / torch.bincount(flat)


def box(dims: int, size: int = 14) -> torch.Tensor:
    return cube(dims, 3, 9, size)


def test_lime_recovers_the_additive_contribution_of_each_superpixel(dims):
    net = pointwise_net(dims, in_channels=1, classes=2)
    x = image(dims)
    segments = segments_of(x, 20)
    expected = contributions(net, x, segments)[segments].float()
    explanation = sx.LIME(net, n_samples=200, n_segments=20, alpha=1e-3).explain(x, T.ClassRegion(1), progress=False)
    assert explanation.attribution.shape == (1, *x.shape[1:])
    assert torch.allclose(explanation.attribution[0], expected, rtol=1e-3, atol=1e-3)
    stats = explanation.stats
    assert stats["features"] == stats["superpixels"] == int(segments.max()) + 1
    assert stats["r2"] > 0.9999 and stats["forward_passes"] == 201


class KeepFeature:
    """A sampler that never switches feature `kept` off (the others as LIME's default sampler)."""

    def __init__(self, kept: int) -> None:
        self.kept = kept

    def __call__(self, n_samples, n_features, generator):
        z = UniformSampler()(n_samples, n_features, generator)
        z[:, self.kept] = True
        return z


class IgnoreSamplesWithout:
    """A kernel that gives no weight to the samples where feature `needed` is off (LIME's weights elsewhere)."""

    def __init__(self, needed: int) -> None:
        self.needed = needed

    def __call__(self, z):
        return CosineKernel()(z) * z[:, self.needed]


@pytest.mark.parametrize("part", ["sampler", "kernel"])
def test_a_replaced_sampler_or_kernel_changes_exactly_what_it_should(part):
    """Superpixel 2 never seen off (a sampler keeping it on, or a kernel weighing only samples with it on) has
    no evidence: its coefficient is 0 (the penalty), while every other keeps its exact additive contribution."""
    net = pointwise_net(2, in_channels=1, classes=2)
    x = image(2)
    segments = segments_of(x, 20)
    expected = contributions(net, x, segments)
    expected[2] = 0
    replaced = {"sampler": KeepFeature(2)} if part == "sampler" else {"kernel": IgnoreSamplesWithout(2)}
    explanation = sx.LIME(net, n_samples=200, n_segments=20, alpha=1e-3, **replaced).explain(
        x, T.ClassRegion(1), progress=False)
    assert contributions(net, x, segments)[2].abs() > 1
    assert torch.allclose(explanation.attribution[0], expected[segments].float(), rtol=1e-3, atol=1e-3)
    assert explanation.stats["params"][part] == repr(replaced[part])


@pytest.mark.parametrize("replaced, match", [
    ({"sampler": lambda n, m, generator: torch.ones(n, m + 1, dtype=torch.bool)}, "the sampler gave states"),
    ({"kernel": lambda z: np.zeros(len(z))}, "non-negative weight per sample"),
    ({"kernel": lambda z: np.ones(3)}, "non-negative weight per sample"),
])
def test_a_broken_part_is_a_clear_error(replaced, match):
    lime = sx.LIME(pointwise_net(2, in_channels=1, classes=2), n_samples=20, n_segments=6, **replaced)
    with pytest.raises(SegxaiError, match=match):
        lime.explain(image(2), T.ClassRegion(1), progress=False)


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_weighted_linear_surrogate_matches_scikit_learn(alpha):
    linear_model = pytest.importorskip("sklearn.linear_model")
    rng = np.random.default_rng(0)
    z = rng.integers(0, 2, size=(60, 7)).astype(float)
    y = z @ rng.normal(size=7) + 0.3 * rng.normal(size=60) + 2.0
    weights = rng.uniform(0.1, 2.0, size=60)
    fit = WeightedLinear(alpha).fit(z, y, weights)
    reference = (linear_model.Ridge(alpha=alpha) if alpha else linear_model.LinearRegression()).fit(z, y, weights)
    assert np.allclose(fit.coefficients, reference.coef_, atol=1e-10)
    assert fit.intercept == pytest.approx(reference.intercept_, abs=1e-10)
    assert fit.r2 == pytest.approx(reference.score(z, y, sample_weight=weights), abs=1e-10)


def test_roi_keeps_only_overlapping_superpixels_as_features(dims):
    net = pointwise_net(dims, in_channels=1, classes=2)
    x, roi = image(dims), box(dims)
    segments = segments_of(x, 20)
    features = overlaps(segments, roi) >= 0.1
    assert 0 < int(features.sum()) < len(features)
    explanation = sx.LIME(net, n_samples=200, n_segments=20, alpha=1e-3, min_overlap=0.1).explain(
        x, T.ClassRegion(1), roi=roi, progress=False)
    attribution = explanation.attribution[0]
    assert explanation.stats["features"] == int(features.sum())
    assert (attribution[~features[segments] | ~roi] == 0).all()
    # Only the ROI part of a feature superpixel is perturbed, so its coefficient is its contribution there.
    expected = torch.where(features, contributions(net, x, segments, roi), 0)[segments].float() * roi
    assert torch.allclose(attribution, expected, rtol=1e-3, atol=1e-3)


def test_same_seed_same_map_and_another_seed_another_map():
    net = conv_stack(2, layers=2)
    x, target = image(2), T.ClassRegion(1, score="prob")
    lime = sx.LIME(net, n_samples=30, n_segments=8)
    first, again = (lime.explain(x, target, seed=3, progress=False).attribution for _ in range(2))
    other = lime.explain(x, target, seed=4, progress=False).attribution
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_batch_items_get_their_own_superpixels_and_fit_figures():
    net = pointwise_net(2, in_channels=1, classes=2)
    x = torch.stack([image(2, seed=0), image(2, seed=1), torch.linspace(-1, 1, 14).repeat(1, 14, 1)])
    batched = sx.LIME(net, n_samples=100, n_segments=8, alpha=1e-3).explain(x, T.ClassRegion(1), progress=False)
    for item, attribution in zip(x, batched.attribution):
        segments = segments_of(item, 8)
        assert torch.allclose(attribution[0], contributions(net, item, segments)[segments].float(), rtol=1e-3, atol=1e-3)
    counts = [int(segments_of(item, 8).max()) + 1 for item in x]
    assert len(set(counts)) > 1
    assert [item.superpixels for item in batched.items] == counts
    assert [entry["superpixels"] for entry in batched.stats["items"]] == counts


def test_each_batch_item_keeps_its_own_fit_quality():
    """A saturating score, tanh(sum of x / 10): an item of small intensities stays in its linear range and is
    fitted perfectly, one of large intensities saturates and is not. Each item's figures say so."""
    x = torch.stack([image(2, seed=0) * 0.01, image(2, seed=1) * 10])
    lime = sx.LIME(threshold_net(2), n_samples=100, n_segments=8, alpha=1e-3)
    explanation = lime.explain(x, lambda output: torch.tanh(output.logits[:, 1].flatten(1).sum(1) / 10),
                               progress=False)
    linear, saturated = explanation.items
    assert linear.r2 > 0.999 and saturated.r2 < 0.9, (linear.r2, saturated.r2)
    assert [entry["r2"] for entry in explanation.stats["items"]] == [linear.r2, saturated.r2]
    assert linear.score == pytest.approx(np.tanh(float(x[0].sum()) / 10), rel=1e-4)


@pytest.mark.parametrize("method", ["slic", "felzenszwalb", "quickshift"])
@pytest.mark.parametrize("channels", [1, 2, 3])
def test_2d_superpixels_are_consecutive_labels_covering_the_image(method, channels):
    x = np.random.default_rng(0).normal(size=(channels, 24, 24)) * 100 + np.linspace(0, 400, 24)
    labels = superpixels(x, method, n_segments=12)
    assert labels.shape == (24, 24) and np.issubdtype(labels.dtype, np.integer)
    assert np.array_equal(np.unique(labels), np.arange(labels.max() + 1))


def test_3d_supervoxels_use_slic_only():
    x = image(3, 10).numpy()
    labels = superpixels(x, "slic", n_segments=8)
    assert labels.shape == (10, 10, 10) and np.array_equal(np.unique(labels), np.arange(labels.max() + 1))
    with pytest.raises(SegxaiError, match="3D supervoxels support slic"):
        superpixels(x, "felzenszwalb")


def test_sample_weights_use_the_cosine_distance_to_the_clean_input():
    metrics = pytest.importorskip("sklearn.metrics")
    z = np.random.default_rng(0).integers(0, 2, size=(20, 6)).astype(float)
    z[3] = 0
    reference = metrics.pairwise_distances(z, np.ones((1, 6)), metric="cosine").ravel()
    assert np.allclose(cosine_to_ones(z), reference)


def test_registered_and_stats_record_the_settings():
    assert METHODS["lime"] is sx.LIME
    lime = get_method("lime", pointwise_net(2, in_channels=1, classes=2), n_samples=20, n_segments=6)
    stats = lime.explain(image(2), T.ClassRegion(1), progress=False).stats
    assert stats["method"] == "lime" and stats["params"]["n_samples"] == 20
    assert stats["params"]["superpixels"] == "slic" and stats["params"]["fill"] == "zero"
    assert stats["regions"] == 20 and "r2" in stats


@pytest.mark.parametrize("make, match", [
    (lambda net: sx.LIME(net, n_samples=1), "n_samples >= 2"),
    (lambda net: sx.LIME(net, superpixels="watershed"), "unknown superpixel method"),
])
def test_bad_settings_are_clear_errors(make, match):
    with pytest.raises(SegxaiError, match=match):
        make(pointwise_net(2, in_channels=1, classes=2)).explain(image(2), T.ClassRegion(1), progress=False)


def test_roi_overlapping_no_superpixel_enough_is_a_clear_error():
    roi = torch.zeros(12, 12, dtype=torch.bool)
    roi[5, 5] = True
    lime = sx.LIME(pointwise_net(2, in_channels=1, classes=2), n_samples=10, n_segments=4)
    with pytest.raises(SegxaiError, match="no superpixel"):
        lime.explain(torch.zeros(1, 12, 12), T.ClassRegion(1), roi=roi, progress=False)
