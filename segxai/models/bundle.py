"""MONAI bundles: a folder with configs/inference.json (or .yaml), models/model.pt and usually configs/metadata.json.

The bundle is read with MONAI's own `ConfigParser`: its `network_def`, its `preprocessing` transforms and its
`inferer` run exactly as the bundle defines them; the weights are read with `weights_only=True`. MONAI's
transforms record every reorientation, resampling and crop in the image's affine, so the preprocessed image's
affine against the file's says where each model voxel lies (`segxai.grid.AffineGrid`), and maps go back onto
the file's grid and affine. A bundle's configuration may hold Python expressions (`$...`), which MONAI
evaluates: load bundles you trust, as you would install a package. Maps are gradients with respect to the
preprocessed intensities.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from segxai.errors import SegxaiError
from segxai.grid import AffineGrid, GridMap
from segxai.io import Image
from segxai.model import SegModel, SegOutput
from segxai.models.case import LoadedModel

CONFIG_NAMES = ("inference.json", "inference.yaml", "inference.yml")
GRADIENT_NOTE = "gradients and effects are with respect to the bundle's preprocessed input"


def bundle_config(path: Path) -> Path | None:
    return next((path / "configs" / n for n in CONFIG_NAMES if (path / "configs" / n).is_file()), None)


def is_bundle(path: Path) -> bool:
    return path.is_dir() and bundle_config(path) is not None


class BundleReader:
    """The bundle's preprocessing (an `InputAdapter` of `LoadedModel`), keyed by the bundle's image key."""

    def __init__(self, preprocessing: Any, key: str = "image") -> None:
        self.preprocessing = preprocessing
        self.key = key

    def prepare(self, image: Image, model: SegModel) -> tuple[torch.Tensor, GridMap]:
        if not image.source or image.affine is None:
            raise SegxaiError("a MONAI bundle's preprocessing reads image files with their affine; give the "
                              "image as a NIfTI/DICOM file")
        files = [str(p) for p in image.source]
        try:
            data = self.preprocessing({self.key: files if len(files) > 1 else files[0]})
        except Exception as error:  # MONAI wraps transform failures in RuntimeError with the transform's name
            reason = (str(error).strip().splitlines() or ["(no details)"])[-1]
            raise SegxaiError(f"the bundle's preprocessing failed on {files[0]}: {reason}") from None
        x = data[self.key]
        affine = np.asarray(getattr(x, "affine", torch.eye(4)), dtype=np.float64)
        x = x.as_tensor() if hasattr(x, "as_tensor") else torch.as_tensor(x)
        grid = AffineGrid(tuple(image.spatial_shape), tuple(x.shape[1:]), image.affine, affine)
        prepared, _ = model.prepare(x.float())
        return prepared[0], grid

    def labels(self, output: SegOutput, grid: GridMap) -> torch.Tensor:
        return grid.labels_to_image(output.label_map()[0].cpu())


def load_bundle(path: str | Path, device: str | None = None) -> LoadedModel:
    """Load a MONAI bundle folder with MONAI's bundle parser.

    Args:
        path: the bundle folder.
        device: where the network runs ("cpu", "cuda", ...).
    Returns:
        The model with the bundle's preprocessing as its reader.
    """
    from monai.bundle import ConfigParser

    from segxai.models.checkpoint import read_weights

    path = Path(path)
    config = bundle_config(path)
    parser = ConfigParser()
    parser.read_config(str(config))
    metadata = path / "configs" / "metadata.json"
    if metadata.is_file():
        parser.read_meta(str(metadata))
    parser["bundle_root"] = str(path)
    parser["device"] = f"$torch.device('{device or 'cpu'}')"
    for key in ("network_def", "preprocessing"):
        if key not in parser:
            raise SegxaiError(f"the bundle config {config} has no {key!r}; segxai needs network_def and "
                              "preprocessing (and uses the bundle's inferer when it has one)")
    try:
        net = parser.get_parsed_content("network_def")
        preprocessing = parser.get_parsed_content("preprocessing")
        inferer = parser.get_parsed_content("inferer") if "inferer" in parser else None
    except Exception as error:
        reason = (str(error).strip().splitlines() or ["(no details)"])[0]
        raise SegxaiError(f"MONAI could not build the bundle {path}: {reason}") from None
    weights = read_weights(path / "models" / "model.pt", "a MONAI bundle's weights (models/model.pt)")
    if isinstance(weights, dict) and isinstance(weights.get("model"), dict):
        weights = weights["model"]
    try:
        net.load_state_dict(weights)
    except (RuntimeError, TypeError, AttributeError) as error:
        reason = (str(error).strip().splitlines() or ["(no details)"])[0]
        raise SegxaiError(f"models/model.pt does not fit the bundle's network_def: {reason}") from None
    activation = "sigmoid" if '"sigmoid": true' in json.dumps(parser.get("postprocessing", {})).lower() else "softmax"
    model = SegModel(net, activation, inferer=inferer, device=device)
    names = _channel_names(parser)
    settings = {"framework": "MONAI bundle", "activation": activation, "names": names,
                "inferer": type(inferer).__name__ if inferer is not None else None, "attribution_space": GRADIENT_NOTE}
    return LoadedModel(model, settings, path, BundleReader(preprocessing, parser.get("image_key", "image")))


def _channel_names(parser: Any) -> dict[int, str]:
    """The output classes from metadata.json's `network_data_format.outputs.pred.channel_def`, if given."""
    outputs = parser.get("_meta_", {}).get("network_data_format", {}).get("outputs", {})
    pred = next(iter(outputs.values()), {}) if outputs else {}
    channels = pred.get("channel_def", {}) if isinstance(pred, dict) else {}
    return {int(k): str(v) for k, v in channels.items() if str(k).isdigit()}
