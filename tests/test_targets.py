"""Targets checked analytically against hand computations, in 2D and 3D."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from segxai import targets as T
from segxai.errors import SegxaiError
from segxai.model import SegOutput
from tests.conftest import grid


def random_output(dims: int, batch: int = 1, channels: int = 3, size: int = 8, seed: int = 0) -> SegOutput:
    generator = torch.Generator().manual_seed(seed)
    return SegOutput(torch.randn(batch, channels, *grid(dims, size), generator=generator), "softmax")


def blobs(dims: int, size: int = 12) -> np.ndarray:
    """Three separate cubes in scan order: at the start, the middle and the end of the grid."""
    mask = np.zeros(grid(dims, size), dtype=bool)
    for start, width in [(0, 2), (5, 3), (10, 2)]:
        mask[(slice(start, start + width),) * dims] = True
    return mask


@pytest.mark.parametrize("score", ["logit", "prob"])
@pytest.mark.parametrize("reduce", ["sum", "mean"])
def test_class_region_matches_hand_computation(dims, score, reduce):
    out = random_output(dims, batch=2)
    mask = torch.zeros(grid(dims, 8), dtype=torch.bool)
    mask[(slice(2, 5),) * dims] = True
    values = out.logits[:, 1] if score == "logit" else torch.softmax(out.logits, 1)[:, 1]
    expected = values[:, mask].sum(1)
    if reduce == "mean":
        expected = expected / mask.sum()
    got = T.ClassRegion(1, mask, score=score, reduce=reduce)(out)
    assert torch.allclose(got, expected, atol=1e-5)
    whole = T.ClassRegion(1, score=score, reduce=reduce)(out)
    assert torch.allclose(whole, values.flatten(1).sum(1) if reduce == "sum" else values.flatten(1).mean(1), atol=1e-5)


def test_class_region_over_the_predicted_region(dims):
    out = instance_output(dims)
    target = T.ClassRegion(1, mask="prediction")
    predicted = torch.from_numpy(blobs(dims))
    assert torch.allclose(target.bind(out)(out), out.logits[0, 1][predicted].sum()[None])
    assert torch.allclose(target(out), target.bind(out)(out))
    nothing = SegOutput(torch.stack([torch.ones(grid(dims, 4)), -torch.ones(grid(dims, 4))])[None], "softmax")
    with pytest.raises(SegxaiError, match="predicts no voxel of class 1"):
        target.bind(nothing)
    with pytest.raises(SegxaiError, match="mask"):
        T.ClassRegion(1, mask="truth")


def test_class_region_errors():
    out = random_output(2)
    with pytest.raises(SegxaiError, match="empty"):
        T.ClassRegion(1, np.zeros((8, 8)))
    with pytest.raises(SegxaiError, match="output grid"):
        T.ClassRegion(1, np.ones((7, 8)))(out)
    with pytest.raises(SegxaiError, match="out of range"):
        T.ClassRegion(5)(out)
    with pytest.raises(SegxaiError, match="score"):
        T.ClassRegion(1, score="logits")


def instance_output(dims: int) -> SegOutput:
    """A 2-class output whose prediction of class 1 is exactly `blobs`."""
    mask = torch.from_numpy(blobs(dims))
    logits = torch.stack([(~mask).float(), mask.float()])[None] * 4 - 2
    return SegOutput(logits, "softmax")


@pytest.mark.parametrize("index, start", [(1, 0), (2, 5), (3, 10)])
def test_instances_are_numbered_in_scan_order(dims, index, start):
    out = instance_output(dims)
    footprint = T.Instance(1, index).footprint(out)
    assert bool(footprint[(start,) * dims])
    assert int(footprint.sum()) == (2 if start != 5 else 3) ** dims
    bound = T.Instance(1, index).bind(out)
    assert torch.allclose(bound(out), out.logits[0, 1][footprint].sum()[None])


def test_instance_by_point_and_by_given_labels(dims):
    out = instance_output(dims)
    by_point = T.Instance(1, point=(6,) * dims).footprint(out)
    assert torch.equal(by_point, T.Instance(1, 2).footprint(out))
    labels = np.zeros(grid(dims, 12), dtype=np.int64)
    labels[(slice(3, 5),) * dims] = 1  # a "ground truth" lesion the prediction lacks
    footprint = T.Instance(1, 1, labels=labels).footprint(out)
    assert int(footprint.sum()) == 2**dims and bool(footprint[(3,) * dims])


def test_min_size_drops_small_instances_and_renumbers(dims):
    out = instance_output(dims)
    footprint = T.Instance(1, 1, min_size=3**dims).footprint(out)
    assert bool(footprint[(5,) * dims])
    with pytest.raises(SegxaiError, match=r"instance 2 does not exist: the prediction has 1 instance"):
        T.Instance(1, 2, min_size=3**dims).footprint(out)


def test_connectivity_18_joins_edge_neighbours_but_6_does_not():
    mask = np.zeros((4, 4, 4), dtype=bool)
    mask[1, 1, 1] = mask[1, 2, 2] = True  # share an edge, not a face
    labels = mask.astype(np.int64)
    out = SegOutput(torch.zeros(1, 2, 4, 4, 4), "softmax")
    assert int(T.Instance(1, 1, labels=labels).footprint(out).sum()) == 2
    assert int(T.Instance(1, 1, labels=labels, connectivity=1).footprint(out).sum()) == 1


def test_instance_errors(dims):
    out = instance_output(dims)
    with pytest.raises(SegxaiError, match="exactly one"):
        T.Instance(1)
    with pytest.raises(SegxaiError, match="starts at 1"):
        T.Instance(1, 0)
    with pytest.raises(SegxaiError, match="not inside any instance"):
        T.Instance(1, point=(4,) * dims).footprint(out)
    with pytest.raises(SegxaiError, match="outside the grid"):
        T.Instance(1, point=(40,) * dims).footprint(out)
    with pytest.raises(SegxaiError, match="does not match"):
        T.Instance(1, 1, labels=np.ones((3, 3))).footprint(out)


def test_voxel_target(dims):
    out = random_output(dims, batch=2)
    position = (1, 2, 3)[:dims]
    assert torch.equal(T.Voxel(2, position)(out), out.logits[(slice(None), 2, *position)])
    with pytest.raises(SegxaiError, match="outside"):
        T.Voxel(2, (9,) * dims)(out)


def test_region_dice_against_prediction_and_mask(dims):
    clean = instance_output(dims)
    target = T.RegionDice(1).bind(clean)
    assert torch.allclose(target(clean), torch.ones(1))
    damaged = SegOutput(clean.logits.clone(), "softmax")
    damaged.logits[(0, 1, *(slice(5, 8),) * dims)] = -5  # remove the middle blob (3^d of 2*2^d + 3^d voxels)
    size_small, size_mid = 2**dims, 3**dims
    expected = 2 * (2 * size_small) / (2 * size_small + 2 * size_small + size_mid)
    assert torch.allclose(target(damaged), torch.tensor([expected]))
    region = torch.zeros(grid(dims, 12), dtype=torch.bool)
    region[(slice(4, 9),) * dims] = True
    assert torch.allclose(T.RegionDice(1, region=region).bind(clean)(damaged), torch.zeros(1))
    truth = torch.from_numpy(blobs(dims))
    assert torch.allclose(T.RegionDice(1, reference=truth)(damaged), torch.tensor([expected]))
    assert not T.RegionDice(1).differentiable


def test_soft_region_dice_is_differentiable_and_empty_score(dims):
    logits = torch.randn(1, 2, *grid(dims, 6), requires_grad=True)
    out = SegOutput(logits, "softmax")
    truth = torch.zeros(grid(dims, 6), dtype=torch.bool)
    truth[(slice(1, 3),) * dims] = True
    target = T.RegionDice(1, reference=truth, soft=True)
    assert target.differentiable
    (grad,) = torch.autograd.grad(target(out).sum(), logits)
    assert grad.abs().sum() > 0
    empty = SegOutput(torch.stack([torch.ones(grid(dims, 6)), -torch.ones(grid(dims, 6))])[None], "softmax")
    assert T.RegionDice(1, reference=torch.zeros(grid(dims, 6)), empty_score=0.25)(empty).item() == 0.25


def test_contrast_and_plain_callables(dims):
    out = random_output(dims)
    a, b = T.ClassRegion(1), T.ClassRegion(2)
    assert torch.allclose(T.Contrast(a, b)(out), a(out) - b(out))
    plain = T.as_target(lambda o: o.logits[:, 0].flatten(1).max(1).values)
    assert torch.equal(T.evaluate(plain, out), out.logits[:, 0].flatten(1).max(1).values)
    with pytest.raises(SegxaiError, match="expected"):
        T.evaluate(T.as_target(lambda o: o.logits), out)
    with pytest.raises(SegxaiError, match="callable"):
        T.as_target(3)


@pytest.mark.parametrize(
    "spec, kind, fields",
    [
        ("class:2", T.ClassRegion, {"cls": 2, "from_prediction": True}),
        ("instance:3", T.Instance, {"cls": 1, "index": 3}),
        ("instance:2:4", T.Instance, {"cls": 2, "index": 4}),
        ("voxel:1,2,3", T.Voxel, {"cls": 1, "position": (1, 2, 3)}),
        ("voxel:2:4,5", T.Voxel, {"cls": 2, "position": (4, 5)}),
    ],
)
def test_parse_target(spec, kind, fields):
    target = T.parse_target(spec)
    assert isinstance(target, kind)
    assert {k: getattr(target, k) for k in fields} == fields


@pytest.mark.parametrize("spec", ["class", "class:x", "lesion:1", "voxel:a,b"])
def test_parse_target_errors(spec):
    with pytest.raises(SegxaiError):
        T.parse_target(spec)


def test_support_names_the_voxels_a_bound_target_reads(dims):
    out = instance_output(dims)
    shape = grid(dims, 12)
    footprint = T.Instance(1, 2).bind(out).support(shape)
    assert torch.equal(footprint, T.Instance(1, 2).footprint(out).cpu())
    assert T.ClassRegion(1).support(shape) is None and T.RegionDice(1).bind(out).support(shape) is None
    voxel = T.Voxel(1, (3,) * dims).support(shape)
    assert int(voxel.sum()) == 1 and bool(voxel[(3,) * dims])
    region = torch.from_numpy(blobs(dims))
    contrast = T.Contrast(T.ClassRegion(1, region), T.Voxel(1, (4,) * dims)).support(shape)
    assert int(contrast.sum()) == int(region.sum()) + 1
    assert T.Contrast(T.ClassRegion(1, region), T.ClassRegion(1)).support(shape) is None
