"""The perturbation engine, Occlusion and RISE checked on analytic cases, in 2D and 3D."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import segxai as sx
from segxai import targets as T
from segxai.errors import SegxaiError
from segxai.methods.perturb.fills import make_fill
from segxai.methods.perturb.regions import RiseMasks, SlidingWindows
from tests.conftest import conv_stack, cube, grid


class RegionMean(nn.Module):
    """Class-1 logit everywhere = the mean input intensity inside a fixed region; class 0 = its negative."""

    def __init__(self, region: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("region", region.float())
        self.conv = nn.Conv2d(1, 1, 1) if region.ndim == 2 else nn.Conv3d(1, 1, 1)  # marks the spatial dims

    def forward(self, x):
        mean = (x[:, 0] * self.region).flatten(1).sum(1) / self.region.sum()
        value = mean.view(-1, 1, *(1,) * self.region.ndim).expand(-1, 1, *self.region.shape)
        return torch.cat([-value, value], dim=1)




def test_occlusion_of_a_region_mean_model_recovers_the_region(dims):
    region = cube(dims, 4, 8)
    model = sx.SegModel(RegionMean(region), activation="none")
    explanation = sx.Occlusion(model, window=4, stride=4).explain(
        torch.ones(1, *grid(dims, 16)), T.ClassRegion(1, reduce="mean"), progress=False)
    attribution = explanation.attribution[0]
    assert torch.equal(attribution != 0, region)
    assert torch.allclose(attribution[region], torch.full((int(region.sum()),), 4.0**dims / region.sum()))
    # the reference pass, every window, and the clean input riding in the one batch (effects within a batch)
    assert explanation.stats["regions"] == 4**dims and explanation.stats["forward_passes"] == 1 + 4**dims + 1


def test_rise_of_a_region_mean_model_ranks_the_region_first(dims):
    region = cube(dims, 4, 10)
    model = sx.SegModel(RegionMean(region), activation="none")
    explanation = sx.RISE(model, n_masks=800, grid=4).explain(
        torch.ones(1, *grid(dims, 16)), T.ClassRegion(1, reduce="mean"), seed=3, progress=False)
    top = explanation.binarize(top_k=float(region.float().mean()))
    assert (top & region).sum() / region.sum() > 0.75


def test_occluding_outside_the_receptive_field_changes_nothing(dims):
    model = sx.SegModel(conv_stack(dims, layers=2))  # receptive-field radius 2
    position = (8,) * dims
    attribution = sx.Occlusion(model, window=1, stride=1, crop="none").explain(
        torch.randn(1, *grid(dims, 16)), T.Voxel(1, position), progress=False).attribution[0]
    distance = torch.stack(torch.meshgrid(*[torch.arange(16) - 8] * dims, indexing="ij")).abs().amax(0)
    assert attribution[distance > 2].abs().max() < 1e-5  # batched and single passes round differently
    assert attribution[distance <= 2].abs().sum() > 0


@pytest.mark.parametrize("method", ["occlusion", "rise"])
def test_cropped_computation_equals_the_full_input(dims, method):
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    net = UNet(dims, 1, 2, channels=(4, 8), strides=(2,), num_res_units=1, norm="batch")
    size = 64
    x = torch.randn(1, *grid(dims, size))
    organ = cube(dims, 20, 26, size)
    roi = sx.roi.from_mask(organ, margin=2)
    target = T.ClassRegion(1, organ, score="prob", reduce="mean")
    make = (lambda crop: sx.Occlusion(net, window=4, stride=4, crop=crop)) if method == "occlusion" else \
        (lambda crop: sx.RISE(net, n_masks=40, grid=3, crop=crop))
    cropped = make("auto").explain(x, target, roi=roi, seed=1, progress=False)
    full = make("none").explain(x, target, roi=roi, seed=1, progress=False)
    assert cropped.stats["cropped"] and not full.stats["cropped"]
    assert torch.allclose(cropped.attribution, full.attribution, atol=1e-5)
    assert cropped.stats["forward_voxels"] < full.stats["forward_voxels"]
    assert torch.tensor(cropped.stats["crop_shape"]).prod() <= 0.6 * size**dims


def test_roi_restriction_runs_only_windows_touching_it_and_keeps_the_rest(dims):
    model = sx.SegModel(conv_stack(dims, layers=2))
    roi = cube(dims, 6, 10)
    x = torch.randn(1, *grid(dims, 16))
    explanation = sx.Occlusion(model, window=4, stride=4, crop="none").explain(
        x, T.ClassRegion(1, roi), roi=roi, progress=False)
    assert explanation.stats["regions"] == 2**dims  # windows starting at 4 and 8 on every axis touch 6..9
    assert explanation.attribution[0][~roi].abs().sum() == 0
    assert explanation.attribution[0][roi].abs().sum() > 0
    assert len(SlidingWindows(grid(dims, 16), 4, 4)) == 4**dims


def test_roi_parts_beyond_the_receptive_field_of_the_target_are_not_perturbed(dims):
    model = sx.SegModel(conv_stack(dims, layers=2))  # receptive-field radius 2
    target_voxels = cube(dims, 0, 4, 24)
    roi = torch.ones(grid(dims, 24), dtype=torch.bool)
    x = torch.randn(1, *grid(dims, 24))
    explanation = sx.Occlusion(model, window=4, stride=4, crop="none").explain(
        x, T.ClassRegion(1, target_voxels), roi=roi, progress=False)
    assert explanation.stats["regions"] == 2**dims  # windows at 0 and 4 reach voxels 0..5 (0..3 plus radius 2)
    unrestricted = sx.Occlusion(model, window=4, stride=4).explain(x, T.ClassRegion(1, target_voxels), progress=False)
    assert unrestricted.stats["regions"] == 6**dims
    assert torch.allclose(explanation.attribution, unrestricted.attribution, atol=1e-5)
    with pytest.raises(SegxaiError, match="receptive field"):
        sx.Occlusion(model, window=4, stride=4).explain(x, T.ClassRegion(1, target_voxels), roi=cube(dims, 12, 20, 24),
                                                        progress=False)



def test_rise_gives_no_attribution_where_the_roi_is_out_of_the_targets_reach(dims):
    """Voxels no RISE mask perturbs have no evidence: 0, not the mean score (which would rank them first)."""
    model = sx.SegModel(conv_stack(dims, layers=2))  # receptive-field radius 2
    roi = torch.ones(grid(dims, 24), dtype=torch.bool)
    explanation = sx.RISE(model, n_masks=64, grid=2, crop="none").explain(
        torch.randn(1, *grid(dims, 24)), T.ClassRegion(1, cube(dims, 0, 4, 24)), roi=roi, seed=0, progress=False)
    far = torch.ones(grid(dims, 24), dtype=torch.bool)
    far[(slice(0, 6),) * dims] = False  # voxels 0..5 are within reach (0..3 plus radius 2)
    assert explanation.attribution[0][far].abs().max() == 0
    assert explanation.attribution[0][~far].abs().max() > 0

def test_outside_zero_blanks_the_input_outside_the_roi():
    region = cube(2, 0, 8)
    model = sx.SegModel(RegionMean(region), activation="none")
    roi = cube(2, 0, 4)
    keep = sx.Occlusion(model, window=4, stride=4).explain(torch.ones(1, 16, 16), T.ClassRegion(1, reduce="mean"),
                                                            roi=roi, progress=False)
    zero = sx.Occlusion(model, window=4, stride=4, outside="zero").explain(
        torch.ones(1, 16, 16), T.ClassRegion(1, reduce="mean"), roi=roi, progress=False)
    assert torch.allclose(keep.attribution, zero.attribution)  # the drop from occluding the ROI is the same
    with pytest.raises(SegxaiError, match="outside"):
        sx.Occlusion(model, outside="blank").explain(torch.ones(1, 16, 16), T.ClassRegion(1), roi=roi, progress=False)


def test_seeds_make_rise_reproducible_and_batching_does_not_matter():
    model = sx.SegModel(conv_stack(2, layers=2))
    x = torch.randn(1, 16, 16)
    run = lambda seed, batch: sx.RISE(model, n_masks=30, grid=3, fill="noise").explain(  # noqa: E731
        x, T.ClassRegion(1), seed=seed, batch_size=batch, progress=False).attribution
    assert torch.equal(run(0, 7), run(0, 7))
    assert torch.allclose(run(0, 7), run(0, 30), atol=1e-5)
    assert not torch.allclose(run(0, 7), run(1, 7))


def test_rise_masks_follow_the_roi_box():
    roi = cube(2, 6, 10)
    regions = RiseMasks((16, 16), 5, grid=2, p=0.5, generator=torch.Generator().manual_seed(0), roi=roi)
    masks = regions.masks(0, 5)
    assert masks.shape == (5, 16, 16)
    assert masks[:, ~roi].abs().sum() == 0 and masks[:, roi].sum() > 0


@pytest.mark.parametrize("fill", ["zero", 2.5, "mean", "blur", "noise", "pool"])
def test_fills_have_the_input_shape_and_are_seeded(fill):
    x = torch.randn(1, 2, 8, 8)
    pool = torch.randn(3, 2, 8, 8)
    make = lambda: make_fill(fill, x, generator=torch.Generator().manual_seed(0), pool=pool)  # noqa: E731
    first, second = make()(0, 4), make()(0, 4)
    assert first.shape[1:] == x.shape[1:] and first.shape[0] in (1, 4)
    assert torch.equal(first, second)
    if fill == "pool":
        assert all(any(torch.equal(f, p) for p in pool) for f in first)


def test_fill_and_region_errors():
    x = torch.randn(1, 1, 8, 8)
    with pytest.raises(SegxaiError, match="unknown fill"):
        make_fill("paint", x, generator=torch.Generator())
    with pytest.raises(SegxaiError, match="pool"):
        make_fill("pool", x, generator=torch.Generator())
    with pytest.raises(SegxaiError, match="larger than the input"):
        SlidingWindows((8, 8), 9, 1)
    with pytest.raises(SegxaiError, match="window"):
        SlidingWindows((8, 8), (2, 2, 2), 1)
    with pytest.raises(SegxaiError, match="RISE"):
        RiseMasks((8, 8), 0, generator=torch.Generator())


def local_mean_net(dims: int) -> nn.Module:
    """Class-1 logit = the 3-wide local mean of the input, class 0 = 0: predicts class 1 around bright cubes."""
    net = (nn.Conv2d if dims == 2 else nn.Conv3d)(1, 2, 3, padding=1)
    with torch.no_grad():
        net.weight.zero_()
        net.bias.zero_()
        net.weight[1] = 1.0 / 3**dims
    return net


@pytest.mark.parametrize("method", ["occlusion", "lime"])
def test_batch_figures_are_per_item_and_match_each_image_alone(dims, method):
    """Two images with lesions of different size and place: each batch item's figures are its own."""
    images = -torch.ones(2, 1, *grid(dims, 16))
    images[0][(0, *cube(dims, 1, 4, 16).nonzero(as_tuple=True))] = 2.0
    images[1][(0, *cube(dims, 7, 14, 16).nonzero(as_tuple=True))] = 3.0
    model = sx.SegModel(local_mean_net(dims))
    explainer = sx.Occlusion(model, window=2, stride=2) if method == "occlusion" else \
        sx.LIME(model, n_samples=12, n_segments=6, fill=-1.0)
    roi = torch.ones(grid(dims, 16), dtype=torch.bool)
    explain = lambda x: explainer.explain(x, T.ClassRegion(1, "prediction"), roi=roi, seed=2, progress=False)
    batch = explain(images)
    alone = [explain(image) for image in images]
    assert len(batch.items) == len(batch.stats["items"]) == 2
    for item, single, figures in zip(batch.items, alone, batch.stats["items"]):
        assert figures == item.as_dict()
        assert item.score == pytest.approx(single.stats["score"], rel=1e-6)
        assert item.regions == single.stats["regions"]
    first, second = batch.items
    assert first.score != pytest.approx(second.score)
    if method == "occlusion":  # windows within the receptive field of each image's own predicted lesion
        assert first.regions < second.regions
    else:
        assert (first.superpixels, first.features) == (alone[0].stats["superpixels"], alone[0].stats["features"])
        assert (second.superpixels, second.features) == (alone[1].stats["superpixels"], alone[1].stats["features"])
        assert first.r2 == pytest.approx(alone[0].stats["r2"], rel=1e-9)  # the same draws: it is the first item
        assert first.r2 != second.r2
