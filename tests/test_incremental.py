"""Incremental inference: recomputing each layer on the changed box equals whole passes (batch-norm MONAI UNet,
DynUNet with residual blocks, nnU-Net's PlainConvUNet and ResidualEncoderUNet with frozen instance norm; 2D and
3D), and unsupported
networks fall back and say why."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import segxai as sx
from segxai.methods.perturb import incremental
from segxai.targets import ClassRegion

pytestmark = pytest.mark.usefixtures("one_thread")


def _randomise_batch_norm(net: nn.Module) -> nn.Module:
    """Non-trivial running statistics, so batch norm is not an identity."""
    generator = torch.Generator().manual_seed(1)
    for module in net.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=generator))
            module.running_var.copy_(torch.rand(module.running_var.shape, generator=generator) + 0.5)
    return net.eval()


def monai_unet(dims: int) -> nn.Module:
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    return _randomise_batch_norm(UNet(dims, 1, 3, (4, 8, 16), (2, 2), num_res_units=1, norm="batch"))


def dyn_unet(dims: int) -> nn.Module:
    from monai.networks.nets import DynUNet

    torch.manual_seed(0)
    return _randomise_batch_norm(DynUNet(dims, 1, 3, [3, 3, 3], [1, 2, 2], [2, 2], norm_name="batch",
                                         res_block=True))


def nnunet(kind: str, dims: int) -> nn.Module:
    """nnU-Net's `PlainConvUNet` or `ResidualEncoderUNet` (instance norm, leaky ReLU in place), tiny."""
    architectures = pytest.importorskip("dynamic_network_architectures.architectures.unet")
    conv, norm = (nn.Conv2d, nn.InstanceNorm2d) if dims == 2 else (nn.Conv3d, nn.InstanceNorm3d)
    torch.manual_seed(0)
    return getattr(architectures, kind)(1, 3, (4, 8, 16), conv, 3, (1, 2, 2), (1, 1, 1), 3, (1, 1), False, norm,
                                        {"eps": 1e-5, "affine": True}, None, None, nn.LeakyReLU,
                                        {"inplace": True}).eval()


SHAPES = {2: (32, 24), 3: (16, 16, 8)}
NETS = {"monai-unet": monai_unet, "dynunet": dyn_unet,
        "plain-conv-unet": lambda dims: nnunet("PlainConvUNet", dims),
        "residual-encoder-unet": lambda dims: nnunet("ResidualEncoderUNet", dims)}


def perturbed(x: torch.Tensor, window: int = 4) -> torch.Tensor:
    """Zero boxes at the corners, the centre and the far border (each exercises a different padding case)."""
    spatial = x.shape[2:]
    corners = [[0] * len(spatial), [n // 2 - 1 for n in spatial], [n - window for n in spatial],
               [n - window + 2 for n in spatial]]
    batch = x.repeat(len(corners), *(1,) * (x.ndim - 1))
    for i, corner in enumerate(corners):
        batch[(i, slice(None), *(slice(c, c + window) for c in corner))] = 0.0
    return batch


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("name", list(NETS))
def test_incremental_logits_equal_whole_passes(name, dims):
    net = NETS[name](dims)
    model = sx.SegModel(net)
    x = torch.randn(1, 1, *SHAPES[dims], generator=torch.Generator().manual_seed(2))
    norm = "frozen" if name in ("plain-conv-unet", "residual-encoder-unet") else "exact"
    plan = engine_plan(model, x, norm)
    assert plan.incremental == "on"
    batch = perturbed(x)
    with torch.no_grad(), plan.active():
        network, _ = incremental.build(model, plan.ref)
        fast = network.run(batch)
        whole = net(batch)
    scale = float(whole.abs().max())
    assert float((fast - whole).abs().max()) <= 1e-5 * scale
    clean = plan.ref.output.logits
    assert float((fast - clean).abs().amax(dim=tuple(range(1, fast.ndim))).min()) > 1e-3 * scale  # it changed
    assert model.forward_voxels < len(batch) * x[0, 0].numel()  # only boxes were recomputed


def engine_plan(model, x, norm):
    from segxai.methods.perturb.plan import prepare

    return prepare(model, x, ClassRegion(1), None, outside="keep", crop="none", norm=norm, incremental_mode="auto")


@pytest.mark.parametrize("dims", [2, 3])
def test_incremental_occlusion_map_equals_whole_passes(dims):
    net = monai_unet(dims)
    shape = SHAPES[dims]
    x = torch.randn(1, *shape, generator=torch.Generator().manual_seed(3))
    mask = torch.zeros(shape, dtype=torch.bool)
    mask[tuple(slice(n // 4, n // 2) for n in shape)] = True
    target = ClassRegion(1, mask)
    maps = {}
    for mode in ("off", "auto"):
        explanation = sx.Occlusion(net, window=4, stride=4, incremental=mode).explain(x, target, seed=0,
                                                                                      batch_size=6)
        maps[mode] = explanation
    assert maps["auto"].stats["incremental"] == "on" and maps["off"].stats["incremental"] == "off"
    score = abs(maps["off"].stats["score"])
    difference = (maps["auto"].attribution - maps["off"].attribution).abs().max()
    assert float(difference) <= 1e-5 * score
    assert float(maps["off"].attribution.abs().max()) > 1e-3 * score


class Attention(nn.Module):
    """A self-attention block over the voxels: every output voxel reads every input voxel."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.attention = nn.MultiheadAttention(channels, 1, batch_first=True)

    def forward(self, x):
        tokens = x.flatten(2).transpose(1, 2)
        mixed, _ = self.attention(tokens, tokens, tokens)
        return mixed.transpose(1, 2).reshape(x.shape)


def test_auto_falls_back_on_an_attention_block_and_says_so():
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), Attention(4), nn.Conv2d(4, 2, 1)).eval()
    x = torch.randn(1, 16, 16, generator=torch.Generator().manual_seed(4))
    target = ClassRegion(1)
    fallback = sx.Occlusion(net, window=4, stride=4, incremental="auto").explain(x, target, seed=0)
    whole = sx.Occlusion(net, window=4, stride=4).explain(x, target, seed=0)
    assert fallback.stats["incremental"].startswith("off: unsupported")
    assert "MultiheadAttention" in fallback.stats["incremental"] or "transpose" in fallback.stats["incremental"]
    assert torch.equal(fallback.attribution, whole.attribution)


def test_input_boxes_share_one_size_inside_the_grid():
    changed = torch.zeros(2, 10, 10, dtype=torch.bool)
    changed[0, 1:3, 2:5] = True
    changed[1, 8:10, 0:2] = True
    lo, size = incremental.input_boxes(changed)
    assert size == (2, 3)
    assert lo.tolist() == [[1, 2], [8, 0]]


def test_bad_incremental_setting_is_a_clear_error():
    with pytest.raises(sx.SegxaiError, match="incremental"):
        sx.Occlusion(nn.Conv2d(1, 2, 1), incremental="yes")
