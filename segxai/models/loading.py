"""`segxai.models.load(path)`: one entry for every model users have, recognised by what the path holds.

| path holds | loaded as |
|---|---|
| plans.json + dataset.json + fold_N/ | an nnU-Net v2 trained-model folder (`segxai.models.nnunet`) |
| configs/inference.json or .yaml + models/ | a MONAI bundle (`segxai.models.bundle`) |
| a zip with compiled code/ | a TorchScript export (`segxai.models.torchscript`) |
| any other file | a segxai checkpoint (`segxai train`) |
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from segxai.errors import SegxaiError
from segxai.io import PathLike
from segxai.models.case import LoadedModel


def model_kind(path: Path) -> str:
    """"nnunet", "bundle", "torchscript" or "checkpoint" by content; a clear error for anything else."""
    from segxai.models.bundle import is_bundle
    from segxai.models.nnunet import is_nnunet_folder
    from segxai.models.torchscript import is_torchscript

    if not path.exists():
        raise SegxaiError(f"cannot read a model from {path}: it does not exist")
    if path.is_dir():
        if is_nnunet_folder(path):
            return "nnunet"
        if is_bundle(path):
            return "bundle"
        raise SegxaiError(f"{path} is a folder but neither an nnU-Net v2 model folder (plans.json, dataset.json, "
                          "fold_N/) nor a MONAI bundle (configs/inference.json or .yaml, models/model.pt)")
    return "torchscript" if is_torchscript(path) else "checkpoint"


def load(path: PathLike, *, device: str | None = None, folds: Sequence[str | int] | None = None,
         checkpoint_name: str = "checkpoint_final.pth", mirror: bool = False, activation: str | None = None,
         intensity: Any = None) -> LoadedModel:
    """Load a segmentation model from `path`, whatever it is (see the table above).

    Args:
        path: a segxai checkpoint, an nnU-Net v2 folder, a MONAI bundle folder or a TorchScript file.
        device: "cpu", "cuda", ...
        folds, checkpoint_name, mirror: nnU-Net's fold selection, checkpoint file and test-time mirroring.
        activation, intensity: for TorchScript exports (and to override a segxai checkpoint's activation).
    Returns:
        The model, its configuration and the way it reads images.
    """
    path = Path(path).expanduser()
    kind = model_kind(path)
    if kind != "nnunet" and (folds is not None or mirror):
        raise SegxaiError(f"--folds and --mirror apply to nnU-Net model folders; {path} is a {kind}")
    if kind == "nnunet":
        from segxai.models.nnunet import load_nnunet

        return load_nnunet(path, folds=folds, checkpoint_name=checkpoint_name, mirror=mirror, device=device)
    if kind == "bundle":
        from segxai.models.bundle import load_bundle

        return load_bundle(path, device=device)
    if kind == "torchscript":
        from segxai.models.torchscript import load_torchscript

        return load_torchscript(path, activation=activation or "softmax", intensity=intensity, device=device)
    from segxai.models.case import load_model

    loaded = load_model(path, device)
    if activation is not None and activation != loaded.model.activation:
        loaded.model.activation = activation
        loaded.config["activation"] = activation
    return loaded
