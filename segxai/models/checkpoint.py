"""Checkpoints that carry their own configuration (network preset, activation, intensity window, names).

A checkpoint is a plain dict `{"format", "config", "state_dict"}` saved with `torch.save` and read back with
`torch.load(..., weights_only=True)`, so loading never runs pickled code.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from segxai.errors import SegxaiError
from segxai.model import SegModel
from segxai.models.presets import build_network, total_stride

FORMAT = "segxai-checkpoint-1"

def write_payload(path: str | Path, fmt: str, config: dict[str, Any], state: dict[str, torch.Tensor]) -> Path:
    """Write `{"format", "config", "state_dict"}` atomically (the layout every segxai checkpoint uses)."""
    from segxai.io import atomic_write

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in state.items()}
    with atomic_write(path, durable=True) as tmp:
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


def check_weights(skeleton: nn.Module, state: dict[str, Any], ignore: str | None = None) -> None:
    """Check a state dict against a network built on the meta device (no memory), before the real one is built:
    the same names and shapes, and a size that fits in memory. Names starting with `ignore` (parts the
    checkpoint does not store) are left out."""
    from segxai.measure import check_fits

    expected = {k: v for k, v in skeleton.state_dict().items() if ignore is None or not k.startswith(ignore)}
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise SegxaiError(f"the state dict does not match its configuration (missing {missing[:3]}, unexpected "
                          f"{unexpected[:3]})")
    for name, tensor in expected.items():
        given = state[name]
        if not isinstance(given, torch.Tensor) or tuple(given.shape) != tuple(tensor.shape):
            shape = tuple(given.shape) if isinstance(given, torch.Tensor) else type(given).__name__
            raise SegxaiError(f"the state dict does not match its configuration: {name} is {shape}, the configuration "
                              f"makes {tuple(tensor.shape)}")
    check_fits(4.0 * sum(t.numel() for t in expected.values()), "the network of this configuration",
               "check its `network` settings")


def save_checkpoint(path: str | Path, net: nn.Module, config: dict[str, Any]) -> Path:
    """Write the network's weights and configuration atomically."""
    return write_payload(path, FORMAT, config, net.state_dict())


def load_checkpoint(path: str | Path, device: str | torch.device | None = None) -> tuple[SegModel, dict[str, Any]]:
    """Read a segxai checkpoint (weights only, no pickled code) and return a ready SegModel and its config.

    The SegModel pads any input grid to the preset's total stride and crops its outputs back."""
    payload = read_payload(
        path, FORMAT, "a segxai checkpoint",
        "train one with `segxai train`, or wrap your own network with segxai.SegModel in Python",
    )
    config = payload["config"]
    try:
        check_weights(build_network(config, device="meta"), payload["state_dict"])
        net = build_network(config)
    except SegxaiError as error:
        raise SegxaiError(f"checkpoint {path}: {error}") from None
    net.load_state_dict(payload["state_dict"])
    model = SegModel(net, activation=config.get("activation", "softmax"), device=device, pad_to=total_stride(config))
    return model, config
