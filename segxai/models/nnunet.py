"""nnU-Net v2 trained-model folders, explained exactly as nnU-Net predicts.

A folder holds plans.json, dataset.json and fold_N/checkpoint_final.pth. segxai builds the network the plans
describe (deep supervision off), loads each fold's weights without running pickled code, and runs nnU-Net's own
preprocessing (`DefaultPreprocessor`: transpose, crop to non-zero, per-channel normalisation, resampling to the
plans' spacing) and export (resampling the logits back, uncropping, transposing back). Inference is nnU-Net's
Gaussian sliding window at the plans' patch size, its fold ensemble and, on request, its test-time mirroring.

Explanations are computed on nnU-Net's preprocessed grid, so maps are gradients (or effects) with respect to the
*preprocessed* intensities; `NnunetGrid` maps them back onto the input image's grid and affine. None of nnU-Net's
environment variables are needed. Needs the optional extra `segxai[nnunet]`.
"""
from __future__ import annotations

import importlib.util
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from segxai.errors import SegxaiError
from segxai.grid import GridMap
from segxai.io import Image
from segxai.model import SegModel, SegOutput
from segxai.models.case import LoadedModel
from segxai.models.ensemble import FoldEnsemble, Mirrored
from segxai.models.resample import nearest_indices, scatter_indices
from segxai.models.tiling import GaussianTiles

# Image readers whose arrays are the NIfTI voxel axes reversed (SimpleITK's z, y, x), or a 2D picture as (1, y, x).
VOLUME_READERS = ("SimpleITKIO", "NibabelIO")
PICTURE_READERS = ("NaturalImage2DIO",)
GRADIENT_NOTE = "gradients and effects are with respect to nnU-Net's preprocessed (normalised, resampled) input"


def is_nnunet_folder(path: Path) -> bool:
    return path.is_dir() and (path / "plans.json").is_file() and (path / "dataset.json").is_file()


def require_nnunet() -> None:
    if importlib.util.find_spec("nnunetv2") is None:
        raise SegxaiError("this is an nnU-Net v2 model folder, which needs the optional extra: install it beside "
                          "your torch with `pip install -c constraints.txt 'segxai[nnunet]'` (constraints.txt pins "
                          "your torch version, e.g. torch==2.13.0)")


def available_folds(folder: Path, checkpoint_name: str) -> list[str]:
    """The folds of `folder` holding `checkpoint_name` (`fold_0` -> "0", `fold_all` -> "all"), in order."""
    found = [p.name[5:] for p in folder.glob("fold_*") if (p / checkpoint_name).is_file()]
    return sorted(found, key=lambda f: (not f.isdigit(), int(f) if f.isdigit() else 0, f))


def read_nnunet_checkpoint(path: Path) -> dict[str, Any]:
    """A fold's checkpoint, read with `weights_only=True` and an allow-list of the plain numpy types nnU-Net's
    training logs hold (numpy scalars): anything else that would run pickled code is refused."""
    from segxai.models.checkpoint import read_weights

    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import scalar
    allowed = [np.dtype, scalar]
    allowed += [type(np.dtype(t)) for t in ("float64", "float32", "float16", "int64", "int32", "bool")]
    with torch.serialization.safe_globals(allowed):
        payload = read_weights(path, "an nnU-Net checkpoint")
    if not isinstance(payload, dict) or not isinstance(payload.get("network_weights"), dict):
        raise SegxaiError(f"{path} is not an nnU-Net v2 checkpoint (no network_weights)")
    return payload


def _check_importable(plans_config: Any) -> None:
    """The plans name classes nnU-Net imports by name: allow only its network library and torch.nn, so a crafted
    plans.json cannot make segxai import any other module."""
    arch = plans_config.network_arch_class_name
    if not arch.startswith("dynamic_network_architectures."):
        raise SegxaiError(f"plans.json names the network class {arch!r}; segxai builds only networks of "
                          "dynamic_network_architectures (nnU-Net's own)")
    kwargs = plans_config.network_arch_init_kwargs
    for key in plans_config.network_arch_init_kwargs_req_import:
        value = kwargs.get(key)
        if value is not None and not str(value).startswith("torch.nn."):
            raise SegxaiError(f"plans.json: {key}={value!r} is not a torch.nn class")


def nnunet_axes(array: np.ndarray, picture: bool) -> np.ndarray:
    """Image axes -> the axes nnU-Net's readers give (the last three reversed; a 2D picture as (1, y, x))."""
    if picture:
        return array[..., None, :, :]
    lead = array.ndim - 3
    return array.transpose(*range(lead), lead + 2, lead + 1, lead)


def image_axes(array: np.ndarray, picture: bool) -> np.ndarray:
    """The inverse of `nnunet_axes`."""
    return array[..., 0, :, :] if picture else nnunet_axes(array, False)


@dataclass
class NnunetGrid:
    """Image grid <-> nnU-Net's preprocessed grid of one case: axis order, transpose, crop box and resampling."""

    image_shape: tuple[int, ...]
    model_shape: tuple[int, ...]
    picture: bool
    transpose_forward: tuple[int, ...]
    transpose_backward: tuple[int, ...]
    properties: dict[str, Any]
    resample_values: Any = field(repr=False)
    spacings: tuple[Any, Any] = field(repr=False)

    @property
    def _box(self) -> tuple[slice, ...]:
        return tuple(slice(int(a), int(b)) for a, b in self.properties["bbox_used_for_cropping"])

    @property
    def _cropped(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.properties["shape_after_cropping_and_before_resampling"])

    def to_nnunet_axes(self, array: np.ndarray) -> np.ndarray:
        return nnunet_axes(array, self.picture)

    def from_nnunet_axes(self, array: np.ndarray) -> np.ndarray:
        return image_axes(array, self.picture)

    def _forward(self, array: np.ndarray) -> np.ndarray:
        """Image grid -> the cropped grid before resampling (transposed as nnU-Net does)."""
        lead = array.ndim - 3
        moved = self.to_nnunet_axes(array).transpose(*range(lead), *[lead + a for a in self.transpose_forward])
        return moved[(..., *self._box)]

    def _backward(self, cropped: np.ndarray, fill: float = 0) -> np.ndarray:
        lead = cropped.ndim - 3
        full = np.full((*cropped.shape[:lead], *self.properties["shape_before_cropping"]), fill, cropped.dtype)
        full[(..., *self._box)] = cropped
        full = full.transpose(*range(lead), *[lead + a for a in self.transpose_backward])
        return self.from_nnunet_axes(full)

    def mask_to_model(self, mask: torch.Tensor) -> torch.Tensor:
        cropped = self._forward(np.asarray(mask.cpu(), dtype=bool))
        out = cropped[np.ix_(*nearest_indices(self._cropped, self.model_shape))]
        points = np.argwhere(cropped)
        if len(points):
            out[tuple(scatter_indices(points, self._cropped, self.model_shape).T)] = True
        return torch.from_numpy(np.ascontiguousarray(out))

    def index_to_model(self, index: Sequence[int]) -> tuple[int, ...]:
        from segxai.grid import check_index

        marker = np.zeros(self.image_shape, dtype=bool)
        marker[check_index(index, self.image_shape)] = True
        cropped = self._forward(marker)
        if not cropped.any():
            raise SegxaiError(f"voxel {list(index)} lies outside the non-zero region nnU-Net crops the image to")
        point = np.argwhere(cropped)
        return tuple(int(v) for v in scatter_indices(point, self._cropped, self.model_shape)[0])

    def values_to_image(self, values: torch.Tensor) -> torch.Tensor:
        lead = values.shape[:-3]
        flat = values.detach().float().cpu().reshape(-1, *self.model_shape).numpy()
        current, original = self.spacings
        resampled = np.asarray(self.resample_values(flat, self._cropped, current, original), dtype=np.float32)
        out = self._backward(resampled.reshape(*lead, *self._cropped))
        return torch.from_numpy(np.ascontiguousarray(out))

    def labels_to_image(self, labels: torch.Tensor) -> torch.Tensor:
        array = np.asarray(labels.cpu())
        cropped = array[np.ix_(*nearest_indices(self.model_shape, self._cropped))]
        return torch.from_numpy(np.ascontiguousarray(self._backward(cropped)))


@dataclass(frozen=True)
class NnunetReader:
    """nnU-Net's preprocessing and export for one trained model (an `InputAdapter` of `LoadedModel`)."""

    plans: Any
    configuration: Any
    dataset_json: dict[str, Any]

    @property
    def channel_names(self) -> list[str]:
        channels = self.dataset_json.get("channel_names", self.dataset_json.get("modality", {}))
        return [channels[k] for k in sorted(channels, key=int)]

    def prepare(self, image: Image, model: SegModel) -> tuple[torch.Tensor, GridMap]:
        names = self.channel_names
        if image.array.shape[0] != len(names):
            raise SegxaiError(f"the model reads {len(names)} channel(s) {names} (dataset.json channel_names, files "
                              f"_0000 .. _{len(names) - 1:04d}); got {image.array.shape[0]} image channel(s)")
        reader = self.plans.plans["image_reader_writer"]
        picture = image.spatial_dims == 2
        if reader not in (PICTURE_READERS if picture else VOLUME_READERS):
            raise SegxaiError(f"this nnU-Net model reads images with {reader}; segxai reproduces "
                              f"{', '.join(VOLUME_READERS + PICTURE_READERS)} (volumes with the first two, 2D "
                              "pictures with the last)")
        spacing = (999.0, 1.0, 1.0) if picture else tuple(reversed(image.spacing))
        if len(image.source) > 1:
            order_channel_files(image.source, len(names))
        data = nnunet_axes(np.asarray(image.array, dtype=np.float32), picture)
        preprocessor = self.configuration.preprocessor_class(verbose=False)
        processed, _, properties = preprocessor.run_case_npy(data, None, {"spacing": list(spacing)}, self.plans,
                                                             self.configuration, self.dataset_json)
        grid = NnunetGrid(tuple(image.spatial_shape), tuple(processed.shape[1:]), picture,
                          tuple(self.plans.transpose_forward), tuple(self.plans.transpose_backward), properties,
                          self.configuration.resampling_fn_probabilities, self._spacings(properties))
        return torch.from_numpy(np.ascontiguousarray(processed)).float().to(model.device), grid

    def _spacings(self, properties: dict[str, Any]) -> tuple[list[float], list[float]]:
        """(the preprocessed grid's spacing, the cropped original's), both in transposed axis order."""
        original = [properties["spacing"][i] for i in self.plans.transpose_forward]
        current = list(self.configuration.spacing)
        if len(current) < len(original):
            current = [original[0], *current]
        return current, original

    def labels(self, output: SegOutput, grid: GridMap) -> torch.Tensor:
        from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape

        manager = self.plans.get_label_manager(self.dataset_json)
        segmentation = convert_predicted_logits_to_segmentation_with_correct_shape(
            output.logits[0].detach().float().cpu(), self.plans, self.configuration, manager,
            grid.properties, num_threads_torch=torch.get_num_threads())
        return torch.from_numpy(np.ascontiguousarray(grid.from_nnunet_axes(np.asarray(segmentation)))).long()


def load_nnunet(folder: str | Path, *, folds: Sequence[str | int] | None = None,
                checkpoint_name: str = "checkpoint_final.pth", mirror: bool = False, tile_step: float = 0.5,
                device: str | None = None) -> LoadedModel:
    """Load an nnU-Net v2 trained-model folder as nnU-Net's predictor would run it.

    Args:
        folder: the folder with plans.json, dataset.json and fold_N/ subfolders.
        folds: the folds to ensemble (default: every fold holding `checkpoint_name`).
        checkpoint_name: the checkpoint file in each fold folder.
        mirror: nnU-Net's test-time mirroring (off by default: it multiplies the cost by up to 8).
        tile_step: the sliding window's step as a fraction of the patch (nnU-Net's default 0.5).
        device: "cpu", "cuda", ...
    Returns:
        The model with nnU-Net's preprocessing and export as its reader.
    """
    require_nnunet()
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    folder = Path(folder)
    if not is_nnunet_folder(folder):
        raise SegxaiError(f"{folder} is not an nnU-Net v2 model folder (it needs plans.json and dataset.json)")
    present = available_folds(folder, checkpoint_name)
    chosen = [str(f) for f in folds] if folds is not None else present
    missing = [f for f in chosen if f not in present]
    if missing or not chosen:
        raise SegxaiError(f"{folder}: no {checkpoint_name} for fold(s) {missing or chosen or '(none)'}; folds with "
                          f"one: {present or 'none'}")
    plans = PlansManager(_read_json(folder / "plans.json"))
    dataset_json = _read_json(folder / "dataset.json")
    checkpoints = [read_nnunet_checkpoint(folder / f"fold_{f}" / checkpoint_name) for f in chosen]
    configuration_name = checkpoints[0].get("init_args", {}).get("configuration")
    if configuration_name not in plans.available_configurations:
        raise SegxaiError(f"the checkpoint's configuration {configuration_name!r} is not in plans.json "
                          f"({plans.available_configurations})")
    configuration = plans.get_configuration(configuration_name)
    if configuration.previous_stage_name is not None:
        raise SegxaiError(f"configuration {configuration_name} is a cascade stage; segxai explains single-stage "
                          "nnU-Net models")
    label_manager = plans.get_label_manager(dataset_json)
    if label_manager.has_regions:
        raise SegxaiError("region-based nnU-Net models (sigmoid outputs over label regions) are not supported yet")
    _check_importable(configuration)
    channels = determine_num_input_channels(plans, configuration, dataset_json)
    members = []
    for fold, checkpoint in zip(chosen, checkpoints):
        net = get_network_from_plans(configuration.network_arch_class_name, configuration.network_arch_init_kwargs,
                                     configuration.network_arch_init_kwargs_req_import, channels,
                                     label_manager.num_segmentation_heads, allow_init=False,
                                     deep_supervision=False)
        try:
            net.load_state_dict(checkpoint["network_weights"])
        except RuntimeError as error:
            raise SegxaiError(f"fold {fold}'s weights do not fit the network plans.json describes: "
                              f"{str(error).splitlines()[0]}") from None
        members.append(net)
    net: nn.Module = members[0] if len(members) == 1 else FoldEnsemble(members)
    axes = checkpoints[0].get("inference_allowed_mirroring_axes")
    if mirror and axes:
        net = Mirrored(net, axes)
    model = SegModel(net, "softmax", inferer=GaussianTiles(configuration.patch_size, tile_step),
                     in_channels=channels, spatial_dims=3, device=device)
    names = {int(v): k for k, v in dataset_json["labels"].items() if isinstance(v, int)}
    config = {"framework": "nnU-Net v2", "configuration": configuration_name, "folds": chosen,
              "checkpoint_name": checkpoint_name, "mirror": bool(mirror and axes), "tile_step": tile_step,
              "trainer": checkpoints[0].get("trainer_name"), "patch_size": list(configuration.patch_size),
              "names": dict(sorted(names.items())), "channels": NnunetReader(plans, configuration, dataset_json)
              .channel_names, "attribution_space": GRADIENT_NOTE}
    return LoadedModel(model, config, folder, NnunetReader(plans, configuration, dataset_json))


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise SegxaiError(f"cannot read {path}: {error}") from None


def order_channel_files(files: Sequence[Path], channels: int) -> list[Path]:
    """Check that image files named CASE_0000, CASE_0001, ... (nnU-Net's channel suffixes) come in channel order
    and number `channels`; files without such suffixes are taken in the order given."""
    if len(files) != channels:
        raise SegxaiError(f"the model reads {channels} channel(s) (dataset.json); got {len(files)} image file(s)")
    suffixes = [re.search(r"_(\d{4})(?:\.[^.]+)+$", f.name) for f in files]
    if all(suffixes):
        numbers = [int(s.group(1)) for s in suffixes]
        if numbers != list(range(channels)):
            raise SegxaiError(f"image files carry channel suffixes {['_%04d' % n for n in numbers]}; nnU-Net "
                              f"reads them as _0000 .. _{channels - 1:04d}, in that order")
    return list(files)
