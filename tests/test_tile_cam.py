"""Grad-CAM under tile skipping (found by benchmarks/nnunet_cam.py): with a voxel target only the tiles covering
the voxel run; every skipped tile's CAM is exactly 0 (the target does not depend on it), so the focused map must
equal the all-tiles map, where those zeros still count in the Gaussian blend's denominator."""
from __future__ import annotations

import torch

from segxai import GradCAM, SegModel
from segxai.models.tiling import GaussianTiles
from segxai.targets import FunctionTarget, Voxel


def test_focused_grad_cam_equals_all_tiles():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.Tanh(), torch.nn.AvgPool3d(2),
                              torch.nn.Conv3d(4, 4, 3, padding=1), torch.nn.Tanh(), torch.nn.Upsample(scale_factor=2),
                              torch.nn.Conv3d(4, 2, 1))
    tiles = GaussianTiles((8, 8, 8))
    cam = GradCAM(SegModel(net, inferer=tiles), layer="3")
    x = torch.randn(1, 20, 12, 12, generator=torch.Generator().manual_seed(3))
    voxel = Voxel(1, (3, 5, 6))
    focused = cam.explain(x, voxel, progress=False).attribution
    run_focused = tiles.tiles_run
    everything = cam.explain(x, FunctionTarget(voxel), progress=False).attribution  # no support: every tile
    assert run_focused < tiles.tiles_run - run_focused  # tiles were skipped
    torch.testing.assert_close(focused, everything, rtol=1e-4, atol=1e-6)
