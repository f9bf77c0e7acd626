"""Reference networks (MONAI U-Net presets) and checkpoints that carry their own configuration.

A checkpoint is a plain dict `{"format", "config", "state_dict"}` saved with `torch.save` and read back with
`torch.load(..., weights_only=True)`, so loading never runs pickled code.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import nn

from segxai.errors import SegxaiError
from segxai.model import SegModel

FORMAT = "segxai-checkpoint-1"

PRESETS: dict[str, dict[str, Any]] = {
    # Small enough to train on two CPU cores in about a minute; batch norm keeps the receptive field local.
    "unet2d": {"spatial_dims": 2, "channels": [16, 32, 64], "strides": [2, 2], "num_res_units": 1, "norm": "batch"},
    "unet3d": {"spatial_dims": 3, "channels": [8, 16, 32], "strides": [2, 2], "num_res_units": 1, "norm": "batch"},
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


def save_checkpoint(path: str | Path, net: nn.Module, config: dict[str, Any]) -> Path:
    """Write the network's weights and configuration atomically."""
    from segxai.io import atomic_write

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    with atomic_write(path) as tmp:
        torch.save({"format": FORMAT, "config": config, "state_dict": state}, tmp)
    return path


def load_checkpoint(path: str | Path, device: str | torch.device | None = None) -> tuple[SegModel, dict[str, Any]]:
    """Read a segxai checkpoint (weights only, no pickled code) and return a ready SegModel and its config."""
    path = Path(path)
    if not path.is_file():
        raise SegxaiError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for corrupt or unsafe files
        reason = (str(error).strip().splitlines() or ["(no details)"])[0]
        raise SegxaiError(f"cannot read checkpoint {path}: {type(error).__name__}: {reason}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT or not isinstance(payload.get("state_dict"), dict):
        raise SegxaiError(
            f"{path} is not a segxai checkpoint (a dict with format {FORMAT!r}, config and state_dict); "
            "train one with `segxai train`, or wrap your own network with segxai.SegModel in Python"
        )
    config = payload["config"]
    net = build_network(config)
    try:
        net.load_state_dict(payload["state_dict"])
    except RuntimeError as error:
        reason = (str(error).strip().splitlines() or ["(no details)"])[0]
        raise SegxaiError(f"checkpoint {path} does not match its configuration: {reason}") from None
    model = SegModel(net, activation=config.get("activation", "softmax"), device=device)
    return model, config
