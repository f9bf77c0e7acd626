"""Reference networks: small MONAI U-Net presets that train on two CPU cores, described by plain configurations."""
from __future__ import annotations

import copy
from typing import Any

from torch import nn

from segxai.errors import SegxaiError

PRESETS: dict[str, dict[str, Any]] = {
    # Small enough to train on two CPU cores in about a minute; batch norm keeps the receptive field local.
    "unet2d": {"spatial_dims": 2, "channels": [16, 32, 64], "strides": [2, 2], "num_res_units": 1, "norm": "batch"},
    "unet3d": {"spatial_dims": 3, "channels": [8, 16, 32], "strides": [2, 2], "num_res_units": 1, "norm": "batch"},
    # The same with MONAI's default instance norm (global receptive field unless norms are frozen).
    "unet2d-instance": {"spatial_dims": 2, "channels": [16, 32, 64], "strides": [2, 2], "num_res_units": 1,
                        "norm": "instance"},
    "unet3d-instance": {"spatial_dims": 3, "channels": [8, 16, 32], "strides": [2, 2], "num_res_units": 1,
                        "norm": "instance"},
}


def network_config(preset: str, in_channels: int, out_channels: int, **extra: Any) -> dict[str, Any]:
    """A full configuration for `preset`, with data-specific fields (`names`, `intensity`, ...) in `extra`."""
    if preset not in PRESETS:
        raise SegxaiError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    return {"preset": preset, "network": {**PRESETS[preset], "in_channels": in_channels, "out_channels": out_channels},
            "activation": "softmax", **extra}


def build_network(config: dict[str, Any]) -> nn.Module:
    """The MONAI UNet a configuration describes (random initialisation)."""
    from monai.networks.nets import UNet

    params = copy.deepcopy(config["network"])
    return UNet(**params)


def total_stride(config: dict[str, Any]) -> int:
    """The network's down-sampling factor: input sizes and crops should be multiples of it."""
    stride = 1
    for s in config["network"]["strides"]:
        stride *= int(s)
    return stride
