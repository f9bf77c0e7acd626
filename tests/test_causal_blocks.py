"""CausalBlocks (PdCR block ATEs) on models whose dependence on the input is known, in 2D and 3D."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import segxai as sx
from segxai import targets as T
from segxai.errors import SegxaiError
from segxai.methods.perturb.causal_blocks import patch_pool
from segxai.report.causal_plots import save_causal_figures
from tests.conftest import conv_stack, cube, grid

SIZE, BLOCK = 16, 4


class BlockGate(nn.Module):
    """Class 1 everywhere while the mean input over `source` exceeds 0.75, class 0 otherwise: on an all-ones
    input, zeroing any one of two source blocks flips the whole prediction."""

    def __init__(self, source: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("source", source.float())
        self.conv = nn.Conv2d(1, 1, 1) if source.ndim == 2 else nn.Conv3d(1, 1, 1)  # marks the spatial dims

    def forward(self, x):
        mean = (x[:, 0] * self.source).flatten(1).sum(1) / self.source.sum()
        value = (mean - 0.75).view(-1, 1, *(1,) * self.source.ndim).expand(-1, 1, *self.source.shape)
        return torch.cat([torch.zeros_like(value), value], dim=1)


def blocks_at(dims: int, *corners: int) -> torch.Tensor:
    """A mask holding the blocks whose corner is (c, c, ...) for each c in `corners`."""
    mask = torch.zeros(grid(dims, SIZE), dtype=torch.bool)
    for c in corners:
        mask[(slice(c, c + BLOCK),) * len(mask.shape)] = True
    return mask


def zeros_pool(dims: int, n: int = 3) -> torch.Tensor:
    return torch.zeros(n, 1, *grid(dims, SIZE))


def prepared(net: nn.Module, x: torch.Tensor) -> sx.SegModel:
    """The model with its receptive field already probed, so forward-pass counts hold only the explanation's."""
    model = sx.SegModel(net)
    sx.roi.receptive_field(model, x[None])
    return model


def test_only_the_blocks_the_region_depends_on_get_an_effect(dims):
    source = blocks_at(dims, 0, 12)
    x = torch.ones(1, *grid(dims, SIZE))
    model = prepared(BlockGate(source), x)
    target = T.RegionDice(1, region=cube(dims, 8, 12, SIZE))
    explanation = sx.CausalBlocks(model, block=BLOCK, pool=zeros_pool(dims)).explain(x, target, progress=False)
    ate = explanation.attribution[0]
    assert torch.equal(ate != 0, source) and torch.all(ate[source] == -100.0)  # Dice 100 -> 0, in Dice points
    stats = explanation.stats
    assert stats["base_score"] == 100.0 and stats["estimated_blocks"] == 2
    candidates = 4**dims - 1
    assert stats["block_counts"] == {"positive": 0, "negative": 2, "zero": candidates - 2}
    assert sum(stats["histogram"]["counts"]) == candidates and stats["histogram"]["counts"][0] == 2
    draws = {tuple(row["corner"]): (row["draws"], row["se"]) for row in stats["blocks"]}
    assert draws[(0,) * dims] == draws[(12,) * dims] == (50, 0.0)
    assert {d for d, _ in draws.values()} == {3, 50}  # blocks under tau stop after the screen
    assert stats["forward_passes"] == 1 + 3 * candidates + 47 * 2 + 2  # + the clean input in each stage's batch


def test_blocks_beyond_the_receptive_field_cost_no_pass(dims):
    x = torch.randn(1, *grid(dims, SIZE))
    model = prepared(conv_stack(dims, layers=2), x)  # receptive-field radius 2
    target = T.RegionDice(1, region=cube(dims, 0, 4, SIZE))
    pool = torch.randn(4, 1, *grid(dims, SIZE), generator=torch.Generator().manual_seed(1))
    explanation = sx.CausalBlocks(model, block=BLOCK, pool=pool, draws=10).explain(x, target, seed=2, progress=False)
    stats = explanation.stats
    reach = 2**dims - 1  # blocks within 2 voxels of the region, the region's own block excluded
    assert stats["screened_blocks"] == reach and stats["unreachable_blocks"] == 4**dims - 1 - reach
    assert stats["estimated_blocks"] > 0
    assert stats["forward_passes"] == 1 + 3 * reach + 7 * stats["estimated_blocks"] + 2  # + clean, once per stage
    far = [row for row in stats["blocks"] if max(row["corner"]) >= 8]
    assert far and all(row["draws"] == 0 and row["ate"] == 0 for row in far)
    assert explanation.attribution[0][(slice(8, None),) * dims].abs().sum() == 0


def test_a_high_threshold_stops_every_block_after_the_screen(dims):
    x = torch.ones(1, *grid(dims, SIZE))
    model = prepared(BlockGate(blocks_at(dims, 0, 12)), x)
    explanation = sx.CausalBlocks(model, block=BLOCK, pool=zeros_pool(dims), tau=101.0).explain(
        x, T.RegionDice(1, region=cube(dims, 8, 12, SIZE)), progress=False)
    assert explanation.stats["estimated_blocks"] == 0 and not explanation.attribution.any()
    assert {row["draws"] for row in explanation.stats["blocks"]} == {3}


def test_same_seed_same_map_whatever_the_batch(dims):
    x = torch.randn(1, *grid(dims, SIZE), generator=torch.Generator().manual_seed(0))
    others = [torch.randn(1, *grid(dims, SIZE), generator=torch.Generator().manual_seed(s)) for s in (1, 2)]
    method = sx.CausalBlocks(conv_stack(dims, layers=2), block=BLOCK, pool=patch_pool(others, BLOCK, per_image=20),
                             draws=5)
    target = T.RegionDice(1, region=cube(dims, 0, 4, SIZE))
    first = method.explain(x, target, seed=5, batch_size=7, progress=False)
    again = method.explain(x, target, seed=5, batch_size=64, progress=False)
    other = method.explain(x, target, seed=6, progress=False)
    assert first.attribution.any() and torch.equal(first.attribution, again.attribution)
    assert first.stats["blocks"] == again.stats["blocks"] and first.stats["blocks"] != other.stats["blocks"]


def test_a_deterministic_fill_treats_each_block_once(dims):
    x = torch.ones(1, *grid(dims, SIZE))
    model = prepared(BlockGate(blocks_at(dims, 0, 12)), x)
    explanation = sx.CausalBlocks(model, block=BLOCK, fill="zero").explain(
        x, T.RegionDice(1, region=cube(dims, 8, 12, SIZE)), progress=False)
    assert torch.equal(explanation.attribution[0] != 0, blocks_at(dims, 0, 12))
    assert explanation.stats["forward_passes"] == 1 + 4**dims - 1 + 1  # + the clean input in the batch


@pytest.mark.parametrize("settings", [
    {"screen_draws": 5, "draws": 3}, {"screen_draws": 0}, {"tau": -1.0}, {"scale": 0.0}, {"block": 0},
    {"fill": "paint"}, {"fill": "pool"},
])
def test_bad_settings_are_refused(settings):
    options = {"fill": "zero", **settings}
    with pytest.raises(SegxaiError):
        sx.CausalBlocks(conv_stack(2), **options)


def test_a_region_covering_the_roi_leaves_nothing_to_treat(dims):
    method = sx.CausalBlocks(conv_stack(dims), block=BLOCK, fill="zero")
    region = cube(dims, 4, 8, SIZE)
    with pytest.raises(SegxaiError, match="overlaps the target's region"):
        method.explain(torch.randn(1, *grid(dims, SIZE)), T.RegionDice(1, region=region), roi=region, progress=False)


def test_patch_pool_cuts_whole_blocks():
    images = [torch.arange(3 * 16 * 12, dtype=torch.float32).reshape(3, 16, 12)]
    patches = patch_pool(images, 8, per_image=5, seed=0)
    assert patches.shape == (5, 3, 8, 8)  # only the two whole 8x8 blocks of a 16x12 image are cut
    with pytest.raises(SegxaiError):
        patch_pool([], 8)


def test_the_papers_figures_are_written(dims, tmp_path):
    x = torch.ones(1, *grid(dims, SIZE))
    model = prepared(BlockGate(blocks_at(dims, 0, 12)), x)
    explanation = sx.CausalBlocks(model, block=BLOCK, fill="zero").explain(
        x, T.RegionDice(1, region=cube(dims, 8, 12, SIZE)), progress=False)
    written = save_causal_figures(explanation, tmp_path)
    assert set(written) == {"overlay", "pie", "bar"}
    assert all(path.read_bytes().startswith(b"\x89PNG") for path in written.values())


def test_a_pool_of_the_wrong_shape_is_refused(dims):
    method = sx.CausalBlocks(conv_stack(dims), block=BLOCK, pool=torch.zeros(2, 1, *grid(dims, 5)))
    with pytest.raises(SegxaiError, match="the pool must hold"):
        method.explain(torch.randn(1, *grid(dims, SIZE)), T.RegionDice(1, region=cube(dims, 4, 8, SIZE)),
                       progress=False)
