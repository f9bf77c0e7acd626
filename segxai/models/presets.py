"""Reference networks: small MONAI U-Net presets that train on two CPU cores, described by plain configurations."""
from __future__ import annotations

import copy
import inspect
from typing import Any

from torch import nn

from segxai.errors import SegxaiError

PRESETS: dict[str, dict[str, Any]] = {
    # Small enough to train on two CPU cores in about a minute; batch norm keeps the receptive field local.
    "unet2d": {"spatial_dims": 2, "channels": [16, 32, 64], "strides": [2, 2], "num_res_units": 1, "norm": "batch"},
    "unet3d": {"spatial_dims": 3, "channels": [8, 16, 32], "strides": [2, 2], "num_res_units": 1, "norm": "batch"},
    # Five levels, two residual units and dropout: a field of view of the whole 128x128 picture for objects of
    # any size (polyps), about 5 CPU minutes for 1000 steps.
    "unet2d-deep": {"spatial_dims": 2, "channels": [16, 32, 64, 128, 256], "strides": [2, 2, 2, 2],
                    "num_res_units": 2, "norm": "batch", "dropout": 0.1},
    # The same small ones with MONAI's default instance norm (global receptive field unless norms are frozen).
    "unet2d-instance": {"spatial_dims": 2, "channels": [16, 32, 64], "strides": [2, 2], "num_res_units": 1,
                        "norm": "instance"},
    "unet3d-instance": {"spatial_dims": 3, "channels": [8, 16, 32], "strides": [2, 2], "num_res_units": 1,
                        "norm": "instance"},
}


def preset_for(preset: str | None, spatial_dims: int) -> str:
    """The preset to train on images with `spatial_dims` axes: `preset`, checked, or `unet2d`/`unet3d`."""
    preset = preset or f"unet{spatial_dims}d"
    fitting = [name for name, params in PRESETS.items() if params["spatial_dims"] == spatial_dims]
    if preset not in PRESETS:
        raise SegxaiError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    if preset not in fitting:
        raise SegxaiError(f"preset {preset!r} is a {PRESETS[preset]['spatial_dims']}D network but the images are "
                          f"{spatial_dims}D; choose one of {', '.join(fitting)}")
    return preset


def network_config(preset: str, in_channels: int, out_channels: int, **extra: Any) -> dict[str, Any]:
    """A full configuration for `preset`, with data-specific fields (`names`, `intensity`, ...) in `extra`."""
    if preset not in PRESETS:
        raise SegxaiError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    return {"preset": preset, "network": {**PRESETS[preset], "in_channels": in_channels, "out_channels": out_channels},
            "activation": "softmax", **extra}


def build_network(config: dict[str, Any], device: str = "cpu") -> nn.Module:
    """The MONAI UNet a configuration describes (random initialisation) on `device`; "meta" builds it without
    memory, to check the settings and the weights' shapes before a network of unknown size is allocated."""
    import torch
    from monai.networks.nets import UNet

    params = config.get("network") if isinstance(config, dict) else None
    if not isinstance(params, dict):
        raise SegxaiError("the configuration has no `network` settings (a dict of MONAI UNet arguments)")
    known = [name for name in inspect.signature(UNet).parameters if name != "self"]
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise SegxaiError(f"network setting {unknown[0]!r} is not a MONAI UNet argument; known: {', '.join(known)}")
    try:
        with torch.device(device):
            return UNet(**copy.deepcopy(params))
    except Exception as error:  # MONAI raises TypeError, ValueError, AssertionError... for values it rejects
        reason = (str(error).strip().splitlines() or ["(no details)"])[0]
        raise SegxaiError(f"the network settings {params} do not make a MONAI UNet: {type(error).__name__}: "
                          f"{reason}") from None


def total_stride(config: dict[str, Any]) -> int:
    """The network's down-sampling factor: input sizes and crops should be multiples of it."""
    stride = 1
    for s in config["network"]["strides"]:
        stride *= int(s)
    return stride
