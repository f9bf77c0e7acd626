"""Non-circular localisation: trivial baselines on the case's own geometry, leakage, the comparison's verdict."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from segxai import metrics as M
from segxai.errors import SegxaiError
from segxai.metrics.baselines import (baseline_maps, baseline_table, centred_blob, gaussian_blur, leakage,
                                      scores_with_baselines)
from tests.conftest import cube, grid


def test_leakage_is_zero_inside_the_target_and_one_outside(dims):
    target = cube(dims, 4, 8)
    inside = torch.where(target, torch.rand(grid(dims), generator=torch.Generator().manual_seed(0)) - 0.5, 0.0)
    assert leakage(inside, target) == 0.0
    assert leakage(torch.where(target, 0.0, -1.0), target) == 1.0  # signs do not matter, |values| do
    half = torch.zeros(grid(dims))
    half[target] = 1.0
    half[(0,) * dims] = float(target.sum())  # as much mass on one voxel outside as inside
    assert leakage(half, target) == pytest.approx(0.5)
    assert np.isnan(leakage(torch.zeros(grid(dims)), target))


def test_baselines_are_built_on_the_case_geometry(dims):
    roi = cube(dims, 2, 9)
    values = torch.zeros(grid(dims), dtype=torch.float64)
    values[(3,) * dims] = 1.0
    maps = baseline_maps(values, roi, sigma=1.5)
    assert set(maps) == set(M.baselines.BASELINES)
    assert torch.equal(maps["roi"].bool(), roi)
    blob = maps["centred_blob"].bool()
    assert int(blob.sum()) == int(roi.sum())  # the ROI's area ...
    assert bool(blob[(7,) * dims]) and bool(blob[(8,) * dims]) and not bool(blob[(0,) * dims])  # ... at the centre
    assert maps["blurred_map"].sum() == pytest.approx(1.0)  # mass kept (reflected edges), spread around (3, 3)
    assert maps["blurred_map"][(3,) * dims] < 1.0 and maps["blurred_map"][(4,) * dims] > 0.0
    assert torch.allclose(maps["blurred_roi"], gaussian_blur(roi.double(), 1.5))
    assert torch.equal(centred_blob((3, 3), 1), torch.tensor([[0, 0, 0], [0, 1, 0], [0, 0, 0]]).bool())


def test_a_map_equal_to_the_roi_does_not_beat_it_and_one_on_the_mask_does(dims):
    mask, roi = cube(dims, 4, 8), cube(dims, 2, 10)
    restating = scores_with_baselines(roi.double(), mask, roi)
    assert restating["dice"] == pytest.approx(M.roi_baseline(roi, mask)["dice"])
    assert restating["baseline_roi_dice"] == pytest.approx(M.dice(roi, mask))
    assert not restating["beats_roi_baseline"]
    assert restating["leakage"] == pytest.approx(1 - int(mask.sum()) / int(roi.sum()))
    precise = scores_with_baselines(mask.double(), mask, roi)
    assert precise["dice"] == 1.0 and precise["leakage"] == 0.0 and precise["beats_roi_baseline"]
    table = baseline_table([{"method": "roi-like", **restating}, {"method": "precise", **precise}])
    verdicts = {r["method"]: r["verdict"] for r in table}
    assert verdicts == {"roi-like": "does not beat the ROI baseline", "precise": "beats the ROI"}


def test_comparison_table_marks_a_method_that_does_not_beat_its_roi():
    common = {"seconds": 1.0, "forward_passes": 10, "forward_voxels": 100, "iou": 0.5}
    rows = [{"method": "m", "variant": "unrestricted", "dice": 0.5, "roi_baseline_dice": 0.7, **common},
            {"method": "m", "variant": "roi", "dice": 0.8, "roi_baseline_dice": 0.7, **common}]
    table = M.compare_roi_guided(rows)
    assert [r["beats ROI baseline"] for r in table] == ["no: restates the ROI", "yes"]
    assert table[0]["ROI baseline Dice"] == pytest.approx(0.7)
    assert "beats ROI baseline" not in M.compare_roi_guided([{k: v for k, v in r.items() if k != "roi_baseline_dice"}
                                                           for r in rows])[0]


def test_baseline_errors():
    with pytest.raises(SegxaiError, match="sigma"):
        gaussian_blur(torch.zeros(4, 4), 0)
    with pytest.raises(SegxaiError, match="the ROI has shape"):
        baseline_maps(torch.zeros(4, 4), torch.zeros(5, 5, dtype=torch.bool))
    with pytest.raises(SegxaiError, match="does not fit"):
        centred_blob((2, 2), 5)
