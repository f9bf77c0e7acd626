"""GPU checks: they run where CUDA is available and skip cleanly elsewhere (CI has no GPU)."""
from __future__ import annotations

import pytest
import torch

import segxai as sx
from segxai import targets as T
from tests.conftest import conv_stack, grid

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@cuda
def test_saliency_on_the_gpu_matches_the_cpu_and_reports_gpu_memory(dims):
    net = conv_stack(dims, 3)
    x = torch.randn(1, *grid(dims, 16))
    target = T.ClassRegion(1, mask="prediction")
    on_cpu = sx.Saliency(sx.SegModel(net, device="cpu")).explain(x, target)
    on_gpu = sx.Saliency(sx.SegModel(conv_stack(dims, 3), device="cuda")).explain(x, target)
    assert on_gpu.attribution.device.type == "cpu"
    assert torch.allclose(on_cpu.attribution, on_gpu.attribution, atol=1e-4)
    assert on_gpu.stats["device"].startswith("cuda") and on_gpu.stats["peak_memory_bytes"] > 0


@cuda
def test_amp_runs_under_autocast_and_stays_close(dims):
    x = torch.randn(1, 1, *grid(dims, 16), device="cuda")
    exact = sx.SegModel(conv_stack(dims, 3), device="cuda")(x).logits
    mixed = sx.SegModel(conv_stack(dims, 3), device="cuda", amp=True)(x).logits
    assert mixed.dtype == torch.float16
    assert torch.allclose(exact, mixed.float(), atol=5e-2)
