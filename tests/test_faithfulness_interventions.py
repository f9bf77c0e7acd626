"""Faithfulness by block intervention (PdCR's protocol, arXiv 2602.20511): top-k block curves against a random
control, fills and pools, exclusion of the target region, and the sign-consistency check."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import segxai as sx
from segxai import metrics as M
from segxai import targets as T
from segxai.errors import SegxaiError
from tests.conftest import conv_stack, cube, grid, threshold_net


def known_blocks(dims: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Three 4-wide blocks the target reads, with weights 3, 2, 1, and the map that ranks them in that order."""
    weights = torch.zeros(grid(dims))
    for weight, start in zip((3.0, 2.0, 1.0), (0, 4, 8)):
        weights[(slice(start, start + 4), *(slice(0, 4),) * (dims - 1))] = weight
    return weights, weights.clone()


def weighted_target(weights: torch.Tensor) -> T.Target:
    """The class-1 logit of the threshold network (= the input) weighted by `weights`: only those blocks count."""
    return lambda output: (output.class_logit(1) * weights).flatten(1).sum(1)


def test_the_true_ranking_drops_the_score_fastest_and_random_is_slower(dims):
    weights, attribution = known_blocks(dims)
    x = torch.ones(1, *grid(dims))
    curve = M.block_intervention_curve(threshold_net(dims), x, weighted_target(weights), attribution, block=4)
    blocks = 4**dims
    assert curve.ks.tolist() == [0, *[2**i for i in range(2 * dims) if 2**i < blocks], blocks]
    per_block = 4**dims
    assert np.allclose(curve.drops[:3], [0.0, 3 * per_block, 5 * per_block])
    assert np.allclose(curve.drops[3:], 6 * per_block)
    assert curve.base == pytest.approx(6 * per_block)
    for seed in range(3):
        control = M.block_intervention_curve(threshold_net(dims), x, weighted_target(weights), "random", block=4,
                                             seed=seed)
        assert np.all(control.drops <= curve.drops + 1e-4)
        assert control.area < curve.area
    assert curve.row()["area"] == curve.area and curve.row()["blocks"] == blocks


def test_low_supportive_ranks_the_most_negative_blocks_first(dims):
    weights, attribution = known_blocks(dims)
    x = torch.ones(1, *grid(dims))
    low = M.block_intervention_curve(threshold_net(dims), x, weighted_target(weights), -attribution, block=4,
                                     supportive="low", ks=[0, 1, 2, 3])
    assert np.allclose(low.drops, np.array([0, 3, 5, 6]) * 4**dims)
    assert low.order[:3].tolist() == [0, 4**(dims - 1), 2 * 4**(dims - 1)]


def test_random_control_repeats_with_its_seed(dims):
    weights, _ = known_blocks(dims)
    x = torch.ones(1, *grid(dims))
    run = lambda seed: M.block_intervention_curve(threshold_net(dims), x, weighted_target(weights), "random",
                                                  block=4, seed=seed).order.tolist()
    assert run(5) == run(5) and run(5) != run(6)


def test_pool_patches_are_drawn_per_block_and_averaged_over_draws(dims):
    weights, attribution = known_blocks(dims)
    x = torch.ones(1, *grid(dims))
    patches = torch.arange(6.0).view(6, 1, *(1,) * dims).expand(6, 1, *(4,) * dims)  # patch i is constant i
    model = sx.SegModel(threshold_net(dims))
    args = dict(block=4, ks=[0, 1], fill="pool", pool=patches, draws=4, seed=1)
    curve = M.block_intervention_curve(model, x, weighted_target(weights), attribution, **args)
    again = M.block_intervention_curve(model, x, weighted_target(weights), attribution, **args)
    assert np.array_equal(curve.scores, again.scores)
    assert curve.draws == 4 and curve.ses[0] == 0 and curve.ses[1] > 0
    # the weight-3 block holds one whole patch per draw: score = 3 * i * 4^d + (2 + 1) * 4^d
    mean_index = (curve.scores[1] - 3 * 4**dims) / (3 * 4**dims)
    assert 0 <= mean_index <= 5 and (4 * mean_index) == pytest.approx(round(4 * mean_index), abs=1e-4)
    assert curve.cost.forward_passes == 1 + 4 * 1 + 1  # clean; k=1 per draw beside the clean input; k=0 is free


def test_pool_patches_land_on_their_blocks_unchanged(dims):
    weights, attribution = known_blocks(dims)
    patch = torch.rand(1, 1, *(4,) * dims, generator=torch.Generator().manual_seed(0))
    seen = []

    def record(output):
        seen.append(output.class_logit(1).detach().clone())
        return output.class_logit(1).flatten(1).sum(1)

    x = torch.full((1, *grid(dims)), -1.0)
    M.block_intervention_curve(threshold_net(dims), x, record, attribution, block=4, ks=[2], fill="pool", pool=patch)
    treated = seen[-1][-1]  # the last batch: the clean input, then the treated one
    rest = (slice(0, 4),) * (dims - 1)
    assert torch.equal(treated[(slice(0, 4), *rest)], patch[0, 0])
    assert torch.equal(treated[(slice(4, 8), *rest)], patch[0, 0])
    assert bool((treated[8:] == -1).all())


def test_pool_images_on_the_input_grid_and_deterministic_fills(dims):
    weights, attribution = known_blocks(dims)
    x = torch.ones(1, *grid(dims))
    images = torch.zeros(3, 1, *grid(dims))
    curve = M.block_intervention_curve(threshold_net(dims), x, weighted_target(weights), attribution, block=4,
                                       ks=[0, 3], fill="pool", pool=images, draws=2)
    assert np.allclose(curve.drops, [0, 6 * 4**dims]) and curve.draws == 2
    zero = M.block_intervention_curve(threshold_net(dims), x, weighted_target(weights), attribution, block=4,
                                      ks=[0, 3], draws=5)
    assert zero.draws == 1 and np.allclose(zero.drops, curve.drops)


def test_excluded_blocks_are_never_treated(dims):
    weights, attribution = known_blocks(dims)
    x = torch.ones(1, *grid(dims))
    region = cube(dims, 0, 2)  # touches the first (weight 3) block only
    curve = M.block_intervention_curve(threshold_net(dims), x, weighted_target(weights), attribution, block=4,
                                       exclude=region)
    assert curve.order.size == 4**dims - 1 and 0 not in curve.order.tolist()
    assert np.allclose(curve.drops[-1], 3 * 4**dims)


def test_sign_consistency_on_a_linear_model(dims):
    x = torch.randn(1, *grid(dims), generator=torch.Generator().manual_seed(0))
    ate = -x  # zeroing a voxel changes the class-1 logit sum by -x
    net, target = threshold_net(dims), T.ClassRegion(1)
    check = M.sign_consistency(net, x, target, ate, block=4)
    assert check.consistent and check.positive_delta > 0 and check.negative_delta < 0
    pool = torch.nn.functional.avg_pool2d if dims == 2 else torch.nn.functional.avg_pool3d
    means = pool(ate[None], 4)
    assert (check.positive_blocks, check.negative_blocks) == (int((means > 0).sum()), int((means < 0).sum()))
    positive = torch.nn.functional.interpolate((means > 0).float(), scale_factor=4, mode="nearest")[0]
    assert check.positive_delta == pytest.approx(-float((x * positive).sum()), abs=1e-4)
    assert check.negative_delta == pytest.approx(-float((x * (1 - positive)).sum()), abs=1e-4)
    assert not M.sign_consistency(net, x, target, -ate, block=4).consistent
    assert M.sign_consistency(net, x, target, -ate, block=4, supportive="high").consistent


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"attribution": "best"}, "a map or 'random'"),
        ({"attribution": torch.rand(5, 5)}, "expected \\(C, \\*spatial\\)"),
        ({"ks": [0]}, "at least one positive"),
        ({"ks": [1, 999]}, "block counts in"),
        ({"supportive": "up"}, "supportive must be"),
        ({"draws": 0}, "draws must be a positive int"),
        ({"fill": "pool"}, "fill='pool' needs pool images"),
        ({"fill": "pool", "pool": torch.rand(4, 2, 4, 4)}, "pool patches have 2 channels"),
        ({"exclude": torch.ones(16, 16, dtype=torch.bool)}, "touches every block"),
        ({"exclude": torch.ones(8, 8, dtype=torch.bool)}, "exclude has shape"),
        ({"block": 0}, "block must be a positive whole number"),
    ],
)
def test_curve_errors(kwargs, message):
    args = {"attribution": torch.rand(16, 16), **kwargs}
    with pytest.raises(SegxaiError, match=message):
        M.block_intervention_curve(threshold_net(2), torch.ones(1, 16, 16), T.ClassRegion(1), args.pop("attribution"),
                                   **{"block": 4, **args})


def test_sign_consistency_needs_blocks_beyond_tau():
    with pytest.raises(SegxaiError, match="no candidate block"):
        M.sign_consistency(threshold_net(2), torch.ones(1, 16, 16), T.ClassRegion(1), torch.zeros(16, 16), block=4)


class BatchSensitive(torch.nn.Module):
    """The threshold network with its output scaled by 1 + 1e-6 (batch size - 1), as float kernels chosen by
    batch size differ: the same input scores differently in batches of different sizes."""

    def __init__(self, dims: int) -> None:
        super().__init__()
        self.net = threshold_net(dims)

    def forward(self, x):
        return self.net(x) * (1.0 + 1e-6 * (x.shape[0] - 1))


def test_a_block_the_target_does_not_read_drops_the_score_by_exactly_zero(dims):
    weights, _ = known_blocks(dims)
    attribution = torch.zeros(grid(dims))
    attribution[(slice(12, 16),) * dims] = 1.0  # ranks an unread block first
    x = torch.ones(1, *grid(dims))
    for batch_size in ("auto", 1, 2):
        curve = M.block_intervention_curve(BatchSensitive(dims), x, weighted_target(weights), attribution, block=4,
                                           ks=[0, 1, 2], batch_size=batch_size)
        assert curve.drops[0] == 0.0 and curve.drops[1] == 0.0 and curve.drops[2] > 0


def test_block_curves_equal_a_hand_written_reference(dims):
    net = conv_stack(dims, layers=2)
    x = torch.randn(1, *grid(dims), generator=torch.Generator().manual_seed(0))
    attribution = torch.rand(grid(dims), generator=torch.Generator().manual_seed(1))
    score = lambda image: float(net(image[None])[0, 1].double().sum())
    blocks = [tuple(slice(4 * i, 4 * i + 4) for i in corner) for corner in np.ndindex(*(4,) * dims)]
    order = sorted(range(len(blocks)), key=lambda b: -float(attribution[blocks[b]].mean()))
    ks = [0, 1, 3, 8]
    for fill in (0.0, 0.5):
        curve = M.block_intervention_curve(net, x, T.ClassRegion(1), attribution, block=4, ks=ks, fill=fill,
                                           batch_size=3)
        with torch.no_grad():
            base = score(x)
            expected = []
            for k in ks:
                treated = x.clone()
                for b in order[:k]:
                    treated[(slice(None), *blocks[b])] = fill
                expected.append(base - score(treated))
        assert curve.order[:8].tolist() == order[:8]
        assert curve.base == pytest.approx(base, rel=1e-5)
        assert np.allclose(curve.drops, expected, rtol=1e-4, atol=1e-4)
        assert np.allclose(curve.scores, base - np.array(expected), rtol=1e-4, atol=1e-4)
