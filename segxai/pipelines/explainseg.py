"""ExplainSeg on files for `segxai explainseg train | evaluate`: the ViT classifier trained on image-level
labels (or mask-labelled tiles), and Tables 1 and 2 over splits (`segment` is `segxai.explainseg.files`)."""
from __future__ import annotations

from typing import Any, Sequence

from segxai.errors import SegxaiError
from segxai.explainseg import files
from segxai.explainseg.classifier import TrainConfig
from segxai.io import PathLike


def train_files(images: Sequence[PathLike], out: PathLike, config: TrainConfig, *, labels: Sequence[int] | None = None,
                masks: Sequence[PathLike] | None = None, tiles: int = 1, backbone: PathLike | None = None,
                patch: int = 16, checkpoint_every: int = 0, resume: bool = False, progress: bool = True) -> int:
    """Train the classifier on images with one label each, or with masks (tiles labelled by mask pixels), and
    save it to `out`; `config.history` holds the loss per epoch.

    Args:
        images: training images (RGB).
        out: the classifier checkpoint to write (.pt).
        config: the training settings (size, epochs, batch size, trainable blocks, seed).
        labels: one class per image, or None with `masks`.
        masks: one mask per image, or None with `labels`.
        tiles: with masks, cut images into `tiles` x `tiles` tiles.
        backbone: a local DINO/timm/Hugging Face ViT checkpoint (None: random ViT-S/`patch`).
        patch: the patch size of a random backbone.
        checkpoint_every: write the classifier and its training state (`<out>.state`) every this many epochs.
        resume: continue from `<out>.state` (same settings: the same classifier as an uninterrupted run).
        progress: show progress bars.
    Returns:
        The number of training images (tiles).
    """
    from segxai.io import check_output_file

    check_output_file(out, [*images, *(masks or ()), backbone])
    data = files.read_dataset(images, masks, labels, tiles)
    from pathlib import Path

    from segxai.models.loop import Resumable

    saving = Resumable(Path(str(out) + ".state"), checkpoint_every, resume)
    files.train(data, files.backbone_from(backbone, patch, config.seed), config, out, progress, saving)
    return len(data.images)


def evaluate_files(model: PathLike, images: Sequence[PathLike], masks: Sequence[PathLike],
                   val_images: Sequence[PathLike] | None = None, val_masks: Sequence[PathLike] | None = None, *,
                   tiles: int = 1, progress: bool = True, **options: Any) -> tuple[str, str]:
    """Tables 1 and 2 (mIoU / Dice of every method) over the training split and, when given, the validation
    split; `options` are the segmentation settings (settings, graph, crf, seed)."""
    from segxai.explainseg.classifier import load_classifier

    splits = {"train": files.read_dataset(images, masks, tiles=tiles)}
    if val_images:
        if not val_masks:
            raise SegxaiError("--val-images needs --val-masks to score against")
        splits["val"] = files.read_dataset(val_images, val_masks, tiles=tiles)
    first, second, _ = files.evaluate_splits(load_classifier(model), splits, progress=progress, **options)
    return first, second
