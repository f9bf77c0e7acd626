"""A case: one subject's image(s) with their geometry, an optional reference mask on the same grid, and the model
that explains it. It is the one loader of every file pipeline (explain, evaluate, causal, ExplainSeg, runs).

The model is loaded once and may be shared by many cases (a dataset run); the normalised input and the model's
prediction are computed on first use and kept, so every ROI and output of a case reuses them.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np
import torch

from segxai.errors import SegxaiError
from segxai.explanation import Explanation
from segxai.grid import CANONICAL, GridMap, SameGrid, canonical_grid, explanation_on_image, grid_values
from segxai.io import Image, PathLike, load_image, load_mask
from segxai.io.image import file_stem
from segxai.model import SegModel, SegOutput
from segxai.preprocess import normalize_intensity
from segxai.targets import Target, Voxel


class InputAdapter(Protocol):
    """How a model reads an image: its own preprocessing (to the model's input and grid) and how its output
    becomes a label map on the image grid. nnU-Net and MONAI bundles bring their own (`segxai.models`)."""

    def prepare(self, image: Image, model: SegModel) -> tuple[torch.Tensor, GridMap]:
        """The model's `(C, *model_grid)` input on its device, and the map between the two grids."""

    def labels(self, output: SegOutput, grid: GridMap) -> torch.Tensor:
        """The predicted label map on the image grid (CPU) from the model's output `(1, K, *model_grid)`."""


@dataclass(frozen=True)
class IntensityWindow:
    """The preprocessing of segxai checkpoints and plain networks: the intensity normalisation they were trained
    with (`segxai.preprocess.normalize_intensity`), on the image's own grid, or, for a model trained in the
    canonical `orientation` ("RAS", what `segxai train` on volumes records), on the volume turned to RAS+."""

    intensity: Any = None
    orientation: str | None = None

    def prepare(self, image: Image, model: SegModel) -> tuple[torch.Tensor, GridMap]:
        grid = canonical_grid(image) if self.orientation == CANONICAL else SameGrid(tuple(image.spatial_shape))
        x, _ = model.prepare(normalize_intensity(grid_values(grid, image.array), self.intensity))
        return x[0], grid

    def labels(self, output: SegOutput, grid: GridMap) -> torch.Tensor:
        return grid.labels_to_image(output.label_map()[0].cpu())


@dataclass(frozen=True)
class LoadedModel:
    """A SegModel with the configuration it came with (classes, intensity normalisation, preset) and the way it
    reads images (`adapter`; by default the configuration's intensity window on the image's grid)."""

    model: SegModel
    config: dict[str, Any]
    path: Path | None = None
    adapter: InputAdapter | None = None

    @property
    def reader(self) -> InputAdapter:
        if self.adapter is not None:
            return self.adapter
        return IntensityWindow(self.config.get("intensity"), self.config.get("orientation"))

    def prepare(self, image: Image) -> tuple[torch.Tensor, GridMap]:
        """The image preprocessed as the model reads it: its `(C, *model_grid)` input on the model's device,
        and the map between the image's grid and the model's."""
        if self.adapter is None:
            self.check_fits(image)
        return self.reader.prepare(image, self.model)

    def check_fits(self, image: Image) -> None:
        """Refuse an image whose spatial axes or channels differ from the network's (from its configuration)."""
        network = self.config.get("network", {})
        dims, channels = network.get("spatial_dims"), network.get("in_channels")
        if dims is None or channels is None:
            return
        grid = "x".join(str(n) for n in image.spatial_shape)
        if image.spatial_dims != dims or image.array.shape[0] != channels:
            raise SegxaiError(f"the image is {image.spatial_dims}D ({grid}) with {image.array.shape[0]} channel(s); "
                              f"the model takes {dims}D images with {channels} channel(s)")

    def class_rows(self) -> list[dict[str, Any]]:
        """The model's classes with their names and, where the checkpoint stores it, validation Dice."""
        dice = self.config.get("validation_dice", {})
        names = self.config.get("names", {})
        return [{"class": k, "name": v, **({"validation Dice": dice[v]} if v in dice else {})}
                for k, v in names.items()]


def load_model(checkpoint: PathLike, device: str | None = None) -> LoadedModel:
    """Read a segxai checkpoint (`segxai train`) onto `device` (default: cpu).

    Args:
        checkpoint: the checkpoint file.
        device: "cpu", "cuda", "cuda:1", ...
    Returns:
        The model with its configuration and path.
    """
    from segxai.models.checkpoint import load_checkpoint

    model, config = load_checkpoint(checkpoint, device=device)
    return LoadedModel(model, config, Path(checkpoint))


@dataclass(eq=False)
class Case:
    """One subject: its name, image (`(C, *spatial)` with geometry; several files are modalities), the reference
    label map on the image grid (None without one), the model (None where none is needed) and the files read."""

    name: str
    image: Image
    reference: np.ndarray | None = None
    model: LoadedModel | None = None
    image_files: tuple[Path, ...] = ()
    reference_file: Path | None = None

    @property
    def files(self) -> tuple[Path, ...]:
        """Every file the case was read from (images, reference, checkpoint): outputs must never replace them."""
        model = () if self.model is None or self.model.path is None else (self.model.path,)
        return (*self.image_files, *(() if self.reference_file is None else (self.reference_file,)), *model)

    @property
    def channel_names(self) -> list[str]:
        return list(self.image.channel_names)

    @property
    def segmenter(self) -> SegModel:
        """The SegModel (an error for a case loaded without one)."""
        if self.model is None:
            raise SegxaiError(f"case {self.name} was loaded without a model")
        return self.model.model

    @cached_property
    def _prepared(self) -> tuple[torch.Tensor, GridMap]:
        if self.model is None:
            raise SegxaiError(f"case {self.name} was loaded without a model")
        return self.model.prepare(self.image)

    @property
    def inputs(self) -> torch.Tensor:
        """The model's input `(C, *model_grid)`, preprocessed as the model reads images, on its device."""
        return self._prepared[0]

    @property
    def grid(self) -> GridMap:
        """The map between the image's grid and the model's (the identity for models that read images as
        they are, and for a case loaded without a model): command-line positions and masks go forwards with it,
        maps come back."""
        return SameGrid(tuple(self.image.spatial_shape)) if self.model is None else self._prepared[1]

    @cached_property
    def _output(self) -> SegOutput:
        with torch.no_grad():
            return self.segmenter(self.inputs[None])

    @cached_property
    def model_prediction(self) -> torch.Tensor:
        """The model's predicted label map on the model's grid (CPU): what ROIs and targets are built from."""
        return self._output.label_map()[0].cpu()

    @cached_property
    def prediction(self) -> torch.Tensor:
        """The model's predicted label map on the image grid (CPU), as the model's own pipeline writes it."""
        return self.model.reader.labels(self._output, self.grid)

    def to_model(self, mask: torch.Tensor | np.ndarray) -> torch.Tensor:
        """A boolean mask on the image grid, on the model's grid."""
        mask = torch.as_tensor(np.asarray(mask) if isinstance(mask, np.ndarray) else mask).bool()
        return self.grid.mask_to_model(mask)

    def target_to_model(self, target: Target) -> Target:
        """A target given on the image's grid (a `Voxel` position), on the model's grid."""
        if isinstance(target, Voxel) and not isinstance(self.grid, SameGrid):
            return Voxel(target.cls, self.grid.index_to_model(target.position), target.score)
        return target

    def to_image(self, explanation: Explanation) -> Explanation:
        """An explanation computed on the model's grid, with its maps on the image grid (what is written)."""
        shown = torch.as_tensor(np.asarray(self.image.array, dtype=np.float32))
        return explanation_on_image(explanation, self.grid, shown)

    def reference_of(self, cls: int) -> torch.Tensor | None:
        """The reference voxels of class `cls` (boolean, on the image grid), None without a reference."""
        return None if self.reference is None else torch.from_numpy(self.reference == cls)

    @property
    def map_format(self) -> tuple[str, Image | None]:
        """The extension of label maps written for this case (NIfTI for volumes and scans, PNG for 2D pictures)
        and the grid reference that carries its geometry; TIFF in, TIFF out (with its pixel size)."""
        if self.image.kind == "tiff":
            return ".tif", self.image
        volume = self.image.kind in ("nifti", "dicom") or self.image.spatial_dims == 3
        return (".nii.gz", self.image) if volume else (".png", None)


def load_case(images: PathLike | Sequence[PathLike], reference: PathLike | None = None,
              model: PathLike | LoadedModel | None = None, *, name: str | None = None,
              device: str | None = None) -> Case:
    """Read a case: the image file(s), the reference mask (grid and geometry checked against the image) and
    the model (a checkpoint path, or a model already loaded to share between cases).

    Args:
        images: one image file or DICOM folder, or several single-modality files stacked as channels.
        reference: a label map on the image grid (ground truth, lesion mask), or None.
        model: a model path (`segxai.models.load`: checkpoint, nnU-Net folder, MONAI bundle, TorchScript), a
            `LoadedModel` (to share one between cases, or loaded with options), or None.
        name: the case name (default: the first image's file name without its extension).
        device: where a checkpoint path is loaded.
    Returns:
        The case; bad files raise `SegxaiError` naming them.
    """
    from segxai.models.loading import load

    paths = [Path(images)] if isinstance(images, (str, Path)) else [Path(p) for p in images]
    loaded = load(model, device=device) if isinstance(model, (str, Path)) else model
    image = load_image(paths)
    labels = None if reference is None else load_mask(reference, like=image)
    return Case(name or file_stem(paths[0]), image, labels, loaded, tuple(paths),
                None if reference is None else Path(reference))
