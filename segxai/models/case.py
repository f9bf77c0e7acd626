"""A case: one subject's image(s) with their geometry, an optional reference mask on the same grid, and the model
that explains it. It is the one loader of every file pipeline (explain, evaluate, causal, ExplainSeg, runs).

The model is loaded once and may be shared by many cases (a dataset run); the normalised input and the model's
prediction are computed on first use and kept, so every ROI and output of a case reuses them.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from segxai.errors import SegxaiError
from segxai.io import Image, PathLike, load_image, load_mask
from segxai.io.image import file_stem
from segxai.model import SegModel
from segxai.preprocess import normalize_intensity


@dataclass(frozen=True)
class LoadedModel:
    """A SegModel with the configuration its checkpoint carries (classes, intensity normalisation, preset)."""

    model: SegModel
    config: dict[str, Any]
    path: Path | None = None

    def prepare(self, image: Image) -> torch.Tensor:
        """The image normalised as the model was trained, as its `(C, *spatial)` input on the model's device."""
        self.check_fits(image)
        x, _ = self.model.prepare(normalize_intensity(image.array, self.config.get("intensity")))
        return x[0]

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
        """The checkpoint's classes with their names and validation Dice (report tables)."""
        dice = self.config.get("validation_dice", {})
        names = self.config.get("names", {})
        return [{"class": k, "name": v, "validation Dice": dice.get(v, "")} for k, v in names.items()]


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
    def inputs(self) -> torch.Tensor:
        """The normalised model input `(C, *spatial)`, on the model's device."""
        if self.model is None:
            raise SegxaiError(f"case {self.name} was loaded without a model")
        return self.model.prepare(self.image)

    @cached_property
    def prediction(self) -> torch.Tensor:
        """The model's predicted label map on the image grid (CPU)."""
        return self.segmenter.predict(self.inputs).cpu()

    def reference_of(self, cls: int) -> torch.Tensor | None:
        """The reference voxels of class `cls` (boolean, on the image grid), None without a reference."""
        return None if self.reference is None else torch.from_numpy(self.reference == cls)

    @property
    def map_format(self) -> tuple[str, Image | None]:
        """The extension of label maps written for this case (NIfTI for volumes and scans, PNG for 2D pictures)
        and the grid reference that carries its geometry."""
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
        model: a checkpoint path, a `LoadedModel`, or None.
        name: the case name (default: the first image's file name without its extension).
        device: where a checkpoint path is loaded.
    Returns:
        The case; bad files raise `SegxaiError` naming them.
    """
    paths = [Path(images)] if isinstance(images, (str, Path)) else [Path(p) for p in images]
    loaded = load_model(model, device) if isinstance(model, (str, Path)) else model
    image = load_image(paths)
    labels = None if reference is None else load_mask(reference, like=image)
    return Case(name or file_stem(paths[0]), image, labels, loaded, tuple(paths),
                None if reference is None else Path(reference))
