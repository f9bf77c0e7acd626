"""Training and localisation on files: a segmentation checkpoint (`segxai train`), a text localizer
(`segxai localize train`) and the ROI a localizer finds on an image file (`segxai localize predict`).

Training cases are read with the case loader (image + label map, grids checked), one case per image file.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from segxai.errors import SegxaiError
from segxai.grid import CANONICAL, Reoriented, canonical_grid, grid_values
from segxai.io import PathLike
from segxai.models.case import Case, load_case
from segxai.models.loop import Resumable
from segxai.pipelines.options import RunOptions


@dataclass
class Trained:
    """A written checkpoint, its validation Dice per class name (empty without validation cases) and losses."""

    path: Path
    dice: dict[str, float]
    losses: list[float] = field(default_factory=list)


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


@dataclass(frozen=True)
class TrainingPlan:
    """How file training respects the user's grid and time: resample 2D images to `size` (H, W) or volumes to
    `spacing` (mm per axis), hold out `val_fraction` of the cases (at least one when there are 3 or more) for
    Dice per class, augment ("none", "light" or "strong", `segxai.models.augment.Augmenter`), train the network
    `preset` (default by dimension, `segxai.models.presets`), and save the model and training state every
    `checkpoint_every` steps so `resume` continues an interrupted run."""

    size: tuple[int, ...] | None = None
    spacing: tuple[float, ...] | None = None
    val_fraction: float = 0.2
    augment: str = "light"
    preset: str | None = None
    checkpoint_every: int = 0
    resume: bool = False

    def resumable(self, out: PathLike) -> Resumable:
        """The training-state file beside the checkpoint (`model.pt` -> `model.pt.state`)."""
        path = Path(out)
        return Resumable(path.with_name(path.name + ".state"), self.checkpoint_every, self.resume)


def prepare_cases(cases: Sequence[Case], plan: TrainingPlan) -> tuple[list[np.ndarray], list[np.ndarray], dict[str, Any]]:
    """The cases' images and label maps on the plan's grid, and the config fields that record it."""
    from segxai.models.augment import resample, shape_for_spacing

    if plan.size is not None and plan.spacing is not None:
        raise SegxaiError("give --size (2D pictures) or --spacing (volumes), not both")
    images, labels = [], []
    for case in cases:
        image, reference, spacing = canonical_arrays(case)
        if plan.size is not None:
            image, reference = resample(image, reference, plan.size)
        elif plan.spacing is not None:
            image, reference = resample(image, reference, shape_for_spacing(image.shape[1:], spacing, plan.spacing))
        images.append(image)
        labels.append(reference)
    extra = {"input_size": list(plan.size)} if plan.size else {}
    extra |= {"orientation": CANONICAL} if any(oriented(case) for case in cases) else {}
    return images, labels, extra | ({"spacing": list(plan.spacing)} if plan.spacing else {})


def oriented(case: Case) -> bool:
    """Whether a training case has patient axes (a volume with an affine): models trained on such cases work
    in RAS+ (`segxai.grid.Reoriented`), so a scan stored mirrored or transposed reaches them the same way."""
    return case.image.spatial_dims == 3 and case.image.affine is not None


def canonical_arrays(case: Case) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    """The case's image `(C, *spatial)`, label map and voxel size, turned to RAS+ when it has patient axes."""
    grid = canonical_grid(case.image)
    spacing = case.image.spacing
    if isinstance(grid, Reoriented):
        spacing = tuple(float(v) for v in np.linalg.norm(grid.model_affine(case.image.affine)[:3, :3], axis=0))
    reference = None if case.reference is None else grid_values(grid, case.reference[None])[0]
    return grid_values(grid, case.image.array), reference, spacing


def split_cases(count: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded training and validation indices: `fraction` of the cases (at least one from 3 cases on) held out."""
    if not 0 <= fraction < 1:
        raise SegxaiError(f"the validation fraction must be in [0, 1), not {fraction}")
    held = 0 if count < 3 or fraction == 0 else max(1, int(round(count * fraction)))
    order = np.random.default_rng(seed).permutation(count).tolist()
    return sorted(order[held:]), sorted(order[:held])


def train_checkpoint(out: PathLike, *, phantom: str | None = None, shape: Sequence[int] = (64, 64, 32),
                     images: Sequence[PathLike] | None = None, labels: Sequence[PathLike] | None = None,
                     names: PathLike | None = None, intensity: dict[str, Any] | None = None, steps: int = 300,
                     batch_size: int = 4, plan: TrainingPlan = TrainingPlan(), options: RunOptions = RunOptions()) -> Trained:
    """Train a reference MONAI U-Net on seeded phantoms of kind `phantom`, or on image files with label maps
    and a class-names file, and save the checkpoint to `out`.

    Args:
        out: the checkpoint path (.pt); with `plan.checkpoint_every` it is rewritten as training goes, and the
            training state is kept beside it (`<out>.state`).
        phantom: "abdomen" or "brain" (then `shape` is the phantom grid), or None to train on files.
        shape: the phantom grid, H,W or H,W,D.
        images, labels, names: training files, one label map per image (any grids), the names JSON file (only
            the classes it names are trained).
        intensity: the normalisation (e.g. `{"kind": "window", "low": -200, "high": 700}`).
        steps, batch_size: optimiser steps and cases per step.
        plan: resampling, validation split, augmentation, network preset, checkpointing and resuming (files only).
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
        result = train_on_phantoms(phantom, tuple(shape), steps=steps, seed=options.seed, progress=options.progress,
                                   preset=plan.preset, batch_size=batch_size)
    else:
        if not images or not names:
            raise SegxaiError("--images needs --labels (one per image, same order) and --names")
        cases = read_labelled(images, labels)
        arrays, maps, extra = prepare_cases(cases, plan)
        train, val = split_cases(len(arrays), plan.val_fraction, options.seed)
        result = train_segmenter(
            [arrays[i] for i in train], [maps[i] for i in train], names=read_names(names),
            val_images=[arrays[i] for i in val], val_labels=[maps[i] for i in val], intensity=intensity,
            channel_names=cases[0].image.channel_names, steps=steps, batch_size=batch_size, seed=options.seed,
            augment=plan.augment, preset=plan.preset, saving=plan.resumable(out), extra_config=extra,
            progress=options.progress,
            on_checkpoint=lambda net, config: save_checkpoint(out, net, config),
        )
    return Trained(save_checkpoint(out, result.net, result.config), dict(result.dice), list(result.losses))


def train_localizer_files(images: Sequence[PathLike], labels: Sequence[PathLike], names: PathLike, out: PathLike, *,
                          encoder: str = "tiny", context: int = 16, intensity: dict[str, Any] | None = None,
                          steps: int = 300, slices: bool = False, augment: bool = True, any_contrast: bool = False,
                          plan: TrainingPlan = TrainingPlan(),
                          options: RunOptions = RunOptions()) -> tuple[Path, float]:
    """Train a text-prompted localizer on label maps and organ names and save it to `out`.

    Args:
        images, labels, names: training files (one label map per image) and the names JSON file.
        out: the localizer checkpoint path (.pt).
        encoder: `tiny` or `sentence-transformers[:FOLDER_OR_PACKAGE]`.
        context: the number of CoOp context vectors.
        intensity: the normalisation, as for `train_checkpoint` (with `any_contrast`, default `equalize`).
        steps: optimiser steps.
        slices: train a 2D localizer on the volumes' axial slices (in RAS+); it runs slice by slice on a volume.
        augment: seeded intensity and small affine augmentations (never flips: left and right organs differ).
        any_contrast: also remap the contrast at random and paint labelled structures with random intensities,
            so that a localizer trained on one modality (CT) finds the organs on another (MR) by shape and
            position (`segxai.models.contrast`).
        plan: the network preset, its checkpoint interval and resume flag (the state is kept in `<out>.state`).
        options: seed and progress.
    Returns:
        The checkpoint path and the final training loss.
    """
    from segxai.io import check_output_file
    from segxai.localize import build_encoder, save_localizer, train_localizer

    check_output_file(out, [*images, *labels, names])
    cases = read_labelled(images, labels)
    arrays = [canonical_arrays(case)[:2] for case in cases]
    if slices:
        if any(case.image.spatial_dims != 3 for case in cases):
            raise SegxaiError("--slices trains on the axial slices of volumes; these images are 2D already")
        arrays = [(image[..., z], labels[..., z]) for image, labels in arrays for z in range(image.shape[-1])]
    if any_contrast and intensity is None:
        intensity = {"kind": "equalize"}
    localizer = train_localizer(
        [a[0] for a in arrays], [a[1] for a in arrays], read_names(names), build_encoder(encoder),
        n_context=context, intensity=intensity, steps=steps, augment=augment, contrast=any_contrast,
        preset=plan.preset, seed=options.seed, saving=plan.resumable(out), progress=options.progress,
    )
    if any(oriented(case) for case in cases):
        localizer.config["orientation"] = CANONICAL  # predict() turns every volume to RAS+ as in training
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
    mask = from_text(prompt, load_localizer(localizer), case.image, threshold=threshold, margin=margin)
    return save_array(mask.numpy(), out, like=case.image), int(mask.sum())
