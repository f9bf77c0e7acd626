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


def write_payload(path: str | Path, fmt: str, config: dict[str, Any], state: dict[str, torch.Tensor]) -> Path:
    """Write `{"format", "config", "state_dict"}` atomically (the layout every segxai checkpoint uses)."""
    from segxai.io import atomic_write

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in state.items()}
    with atomic_write(path) as tmp:
        torch.save({"format": fmt, "config": config, "state_dict": state}, tmp)
    return path


def read_weights(path: str | Path, what: str) -> Any:
    """`torch.load(path, weights_only=True)` with a clear error naming `what` (e.g. "a segxai checkpoint") when
    the file is missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise SegxaiError(f"cannot read {what} from {path}: the file does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for corrupt or unsafe files
        reason = (str(error).strip().splitlines() or ["(no details)"])[0]
        raise SegxaiError(f"cannot read {what} from {path}: {type(error).__name__}: {reason}") from None


def read_payload(path: str | Path, fmt: str, what: str, hint: str) -> dict[str, Any]:
    """Read a checkpoint written by `write_payload` with format `fmt`; `hint` says how to make a valid one."""
    payload = read_weights(path, what)
    if not isinstance(payload, dict) or payload.get("format") != fmt or not isinstance(payload.get("state_dict"), dict):
        raise SegxaiError(f"{path} is not {what} (a dict with format {fmt!r}, config and state_dict); {hint}")
    return payload


def save_checkpoint(path: str | Path, net: nn.Module, config: dict[str, Any]) -> Path:
    """Write the network's weights and configuration atomically."""
    return write_payload(path, FORMAT, config, net.state_dict())


def load_checkpoint(path: str | Path, device: str | torch.device | None = None) -> tuple[SegModel, dict[str, Any]]:
    """Read a segxai checkpoint (weights only, no pickled code) and return a ready SegModel and its config."""
    payload = read_payload(
        path, FORMAT, "a segxai checkpoint",
        "train one with `segxai train`, or wrap your own network with segxai.SegModel in Python",
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
