"""Training and localisation on files: a segmentation checkpoint (`segxai train`), a text localizer
(`segxai localize train`) and the ROI a localizer finds on an image file (`segxai localize predict`).

Training cases are read with the case loader (image + label map, grids checked), one case per image file.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from segxai.errors import SegxaiError
from segxai.io import PathLike
from segxai.models.case import Case, load_case
from segxai.pipelines.options import RunOptions


@dataclass
class Trained:
    """A written checkpoint and its validation Dice per class name (empty without validation cases)."""

    path: Path
    dice: dict[str, float]


def read_names(path: PathLike) -> dict[int, str]:
    """Class names from a JSON file mapping label values to names, e.g. `{"1": "liver"}`."""
    try:
        raw = json.loads(Path(path).read_text())
        return {int(k): str(v) for k, v in raw.items()}
    except (OSError, ValueError, AttributeError) as error:
        raise SegxaiError(f"cannot read class names from {path}: {error}") from None


def read_labelled(images: Sequence[PathLike], labels: Sequence[PathLike] | None) -> list[Case]:
    """One case per image file with its label map (same order; each grid checked against its image)."""
    if not labels or len(labels) != len(images):
        raise SegxaiError("--labels needs one label map per --images file, in the same order")
    return [load_case(image, reference=label) for image, label in zip(images, labels)]


def train_checkpoint(out: PathLike, *, phantom: str | None = None, shape: Sequence[int] = (64, 64, 32),
                     images: Sequence[PathLike] | None = None, labels: Sequence[PathLike] | None = None,
                     names: PathLike | None = None, intensity: dict[str, Any] | None = None, steps: int = 300,
                     options: RunOptions = RunOptions()) -> Trained:
    """Train a reference MONAI U-Net on seeded phantoms of kind `phantom`, or on image files with label maps
    and a class-names file, and save the checkpoint to `out`.

    Args:
        out: the checkpoint path (.pt).
        phantom: "abdomen" or "brain" (then `shape` is the phantom grid), or None to train on files.
        shape: the phantom grid, H,W or H,W,D (sizes multiples of 4).
        images, labels, names: training files, one label map per image, the names JSON file.
        intensity: the normalisation (e.g. `{"kind": "window", "low": -200, "high": 700}`).
        steps: optimiser steps.
        options: seed and progress.
    Returns:
        The checkpoint path and the validation Dice.
    """
    from segxai.io import check_output_file
    from segxai.models.checkpoint import save_checkpoint
    from segxai.models.train import train_on_phantoms, train_segmenter

    check_output_file(out, [*(images or ()), *(labels or ()), names])
    if phantom is not None:
        if intensity is not None:
            raise SegxaiError("--intensity applies to training on --images; phantoms have their own normalisation")
        result = train_on_phantoms(phantom, tuple(shape), steps=steps, seed=options.seed, progress=options.progress)
    else:
        if not images or not names:
            raise SegxaiError("--images needs --labels (one per image, same order) and --names")
        cases = read_labelled(images, labels)
        result = train_segmenter(
            [c.image.array for c in cases], [c.reference for c in cases], names=read_names(names),
            intensity=intensity, channel_names=cases[0].image.channel_names, steps=steps, seed=options.seed,
            progress=options.progress,
        )
    return Trained(save_checkpoint(out, result.net, result.config), dict(result.dice))


def train_localizer_files(images: Sequence[PathLike], labels: Sequence[PathLike], names: PathLike, out: PathLike, *,
                          encoder: str = "tiny", context: int = 16, intensity: dict[str, Any] | None = None,
                          steps: int = 300, options: RunOptions = RunOptions()) -> tuple[Path, float]:
    """Train a text-prompted localizer on label maps and organ names and save it to `out`.

    Args:
        images, labels, names: training files (one label map per image) and the names JSON file.
        out: the localizer checkpoint path (.pt).
        encoder: `tiny` or `sentence-transformers[:FOLDER_OR_PACKAGE]`.
        context: the number of CoOp context vectors.
        intensity: the normalisation, as for `train_checkpoint`.
        steps: optimiser steps.
        options: seed and progress.
    Returns:
        The checkpoint path and the final training loss.
    """
    from segxai.io import check_output_file
    from segxai.localize import build_encoder, save_localizer, train_localizer

    check_output_file(out, [*images, *labels, names])
    cases = read_labelled(images, labels)
    localizer = train_localizer(
        [c.image.array for c in cases], [c.reference for c in cases], read_names(names), build_encoder(encoder),
        n_context=context, intensity=intensity, steps=steps, seed=options.seed, progress=options.progress,
    )
    return save_localizer(out, localizer), float(localizer.history[-1])


def localize_file(localizer: PathLike, images: Sequence[PathLike], prompt: str, out: PathLike, *,
                  threshold: float = 0.5, margin: float = 8.0) -> tuple[Path, int]:
    """Write the ROI of the organ named by `prompt` on an image (several files = modalities) to `out`, with the
    image's geometry; returns the path and the ROI's voxel count."""
    from segxai.io import check_output_file, save_array
    from segxai.localize import load_localizer
    from segxai.roi import from_text

    check_output_file(out, [localizer, *images])
    case = load_case(images)
    mask = from_text(prompt, load_localizer(localizer), case.image.array, threshold=threshold, margin=margin)
    return save_array(mask.numpy(), out, like=case.image), int(mask.sum())
