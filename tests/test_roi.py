"""ROIs and crop planning: margins, boxes, the receptive-field probe and exactness of cropped computation."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import segxai as sx
from segxai import roi as R
from segxai.errors import SegxaiError
from tests.conftest import conv_stack, grid, threshold_net


def test_from_mask_margin_is_euclidean(dims):
    mask = np.zeros(grid(dims, 11), dtype=bool)
    mask[(5,) * dims] = True
    grown = R.from_mask(mask, margin=2)
    assert int(grown.sum()) == (13 if dims == 2 else 33)  # lattice points within distance 2
    assert torch.equal(R.from_mask(mask), torch.from_numpy(mask))
    with pytest.raises(SegxaiError, match="empty"):
        R.from_mask(np.zeros((4, 4)))


def test_from_box(dims):
    box = R.from_box((1,) * dims, (3,) * dims, grid(dims, 8))
    assert int(box.sum()) == 3**dims and bool(box[(1,) * dims]) and not bool(box[(4,) * dims])
    with pytest.raises(SegxaiError, match="outside"):
        R.from_box((9,) * dims, (2,) * dims, grid(dims, 8))
    with pytest.raises(SegxaiError, match="positive"):
        R.from_box((0,) * dims, (0,) * dims, grid(dims, 8))


def test_from_prediction_follows_the_model(dims):
    net = threshold_net(dims)
    x = -torch.ones(1, *grid(dims, 8))
    x[(0, *(slice(2, 4),) * dims)] = 1.0
    roi = R.from_prediction(sx.SegModel(net), x, cls=1)
    assert int(roi.sum()) == 2**dims
    with pytest.raises(SegxaiError, match="predicts no voxel"):
        R.from_prediction(sx.SegModel(net), -torch.ones(1, *grid(dims, 8)), cls=1)


def test_as_roi_checks_shape_and_emptiness():
    with pytest.raises(SegxaiError, match="input grid"):
        R.as_roi(np.ones((4, 4)), (5, 5))
    with pytest.raises(SegxaiError, match="empty"):
        R.as_roi(np.zeros((4, 4)), (4, 4))


@pytest.mark.parametrize("layers", [1, 2, 4])
def test_receptive_field_probe_measures_conv_stacks(dims, layers):
    model = sx.SegModel(conv_stack(dims, layers))
    assert R.receptive_field(model, torch.randn(1, 1, *grid(dims, 24))) == (layers,) * dims


def test_receptive_field_of_instance_norm_is_global(dims):
    model = sx.SegModel(conv_stack(dims, 3, norm=True))
    assert R.receptive_field(model, torch.randn(1, 1, *grid(dims, 16))) is None
    roi = torch.zeros(grid(dims, 16), dtype=torch.bool)
    roi[(slice(6, 8),) * dims] = True
    plan = R.crop_plan(roi, model=model, sample=torch.randn(1, 1, *grid(dims, 16)))
    assert plan.full


def test_crop_plan_box_margin_and_alignment():
    roi = torch.zeros(32, 32, dtype=torch.bool)
    roi[10:13, 20:22] = True
    plan = R.crop_plan(roi, margin=(2, 3))
    assert plan.slices == (slice(8, 15), slice(17, 25))
    aligned = R.crop_plan(roi, margin=(2, 3), multiple=4)
    assert aligned.slices == (slice(8, 16), slice(16, 28))
    assert all(s.start % 4 == 0 and (s.stop - s.start) % 4 == 0 for s in aligned.slices)
    at_border = R.crop_plan(roi, margin=30, multiple=8)
    assert at_border.full
    x = torch.arange(32 * 32.0).reshape(1, 1, 32, 32)
    assert torch.equal(plan.paste(plan.crop(x))[..., 8:15, 17:25], x[..., 8:15, 17:25])
    assert plan.paste(plan.crop(x))[0, 0, 0, 0] == 0
    with pytest.raises(SegxaiError, match="margin"):
        R.crop_plan(roi)
    with pytest.raises(SegxaiError, match="multiple"):
        R.crop_plan(roi, margin=1, multiple=0)


def test_cropped_computation_is_exact_where_the_margin_covers_the_receptive_field(dims):
    torch.manual_seed(0)
    from monai.networks.nets import UNet

    net = UNet(dims, 1, 2, channels=(4, 8, 8), strides=(2, 2), num_res_units=1, norm="batch")
    model = sx.SegModel(net)
    size = 64 if dims == 2 else 48
    x = torch.randn(1, 1, *grid(dims, size))
    roi = torch.zeros(grid(dims, size), dtype=torch.bool)
    roi[(slice(size // 2 - 3, size // 2 + 2),) * dims] = True
    plan = R.crop_plan(roi, model=model, sample=x, multiple=4)
    assert not plan.full and all(c < size for c in plan.crop_shape)
    with torch.no_grad():
        full = model(x).logits[..., roi]
        cropped = plan.paste(model(plan.crop(x)).logits)[..., roi]
    assert torch.allclose(full, cropped, atol=1e-5)
    too_small = R.crop_plan(roi, margin=1, multiple=4)
    with torch.no_grad():
        wrong = too_small.paste(model(too_small.crop(x)).logits)[..., roi]
    assert not torch.allclose(full, wrong, atol=1e-5)
