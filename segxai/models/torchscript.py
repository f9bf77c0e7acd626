"""TorchScript exports (`torch.jit.save`): raw channel-first intensities in, logits out.

Recognised by content (such files are often named .pt, like checkpoints): a TorchScript archive is a zip holding
compiled `code/`. Loading interprets TorchScript, never pickled Python. The activation and the intensity window
the network expects are the user's to give (as for segxai checkpoints, the defaults are softmax and none).
"""
from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import torch

from segxai.errors import SegxaiError
from segxai.model import Activation, SegModel
from segxai.models.case import LoadedModel


def is_torchscript(path: Path) -> bool:
    """Whether `path` is a TorchScript archive (a zip with a `code/` folder), whatever its name."""
    if not path.is_file() or not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any("/code/" in f"/{name}" for name in archive.namelist())


def first_conv_shape(net: Any) -> tuple[int | None, int | None]:
    """(input channels, spatial dims) of a scripted network's first convolution, (None, None) if it has none."""
    for module in net.modules():
        kind = getattr(module, "original_name", "")
        weight = getattr(module, "weight", None)
        if kind in ("Conv2d", "Conv3d") and isinstance(weight, torch.Tensor):
            return int(weight.shape[1]), weight.ndim - 2
        if kind in ("ConvTranspose2d", "ConvTranspose3d") and isinstance(weight, torch.Tensor):
            return int(weight.shape[0]), weight.ndim - 2
    return None, None


def load_torchscript(path: str | Path, *, activation: Activation = "softmax", intensity: Any = None,
                     device: str | None = None) -> LoadedModel:
    """Load a TorchScript export as a model.

    Args:
        path: the archive.
        activation: the output activation ("softmax", "sigmoid" or "none").
        intensity: the intensity normalisation the network expects (`segxai.preprocess.normalize_intensity`).
        device: where it runs.
    Returns:
        The model; its configuration records the activation and intensity.
    """
    path = Path(path)
    try:
        net = torch.jit.load(str(path), map_location=device or "cpu")
    except (RuntimeError, ValueError) as error:
        reason = (str(error).strip().splitlines() or ["(no details)"])[0]
        raise SegxaiError(f"cannot read the TorchScript archive {path}: {reason}") from None
    channels, dims = first_conv_shape(net)
    model = SegModel(net, activation, in_channels=channels, spatial_dims=dims, device=device)
    config = {"framework": "TorchScript", "activation": activation, "intensity": intensity}
    return LoadedModel(model, config, path)
