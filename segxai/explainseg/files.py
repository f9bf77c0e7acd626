"""ExplainSeg on image files, for `segxai explainseg train | segment | evaluate` and the benchmark.

Datasets come as image files with either image-level labels or masks; with masks and `tiles` > 1 every image
is cut into tiles labelled by whether they hold a mask pixel (the paper's treatment of all-positive datasets
such as Kvasir-SEG). Masks never train anything: they label tiles and score the segmentations.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from segxai.errors import SegxaiError
from segxai.explainseg.backbone import VisionTransformer, load_backbone, vit_small
from segxai.explainseg.classifier import TrainConfig, ViTClassifier, load_classifier, save_classifier, tile, train_classifier
from segxai.explainseg.evaluate import score_split, table1, table2
from segxai.explainseg.segment import METHODS, segment
from segxai.models.loop import Resumable


@dataclass
class Dataset:
    """Images `(C, H, W)`, their image-level labels, and masks (None when only labels are known)."""

    images: list[np.ndarray]
    labels: list[int]
    masks: list[np.ndarray] | None


def tiled(images: Sequence[np.ndarray], masks: Sequence[np.ndarray], tiles: int) -> Dataset:
    """Cut every image and mask into `tiles` x `tiles` tiles labelled 1 when they hold a mask pixel
    (`tiles` = 1 labels whole images the same way)."""
    if tiles < 1:
        raise SegxaiError(f"tiles must be >= 1, got {tiles}")
    data = Dataset([], [], [])
    for image, mask in zip(images, masks):
        parts, part_masks, labels = tile(image, mask, tiles)
        data.images += parts
        data.masks += part_masks
        data.labels += labels
    return data


def read_dataset(images: Sequence[str | Path], masks: Sequence[str | Path] | None = None,
                 labels: Sequence[int] | None = None, tiles: int = 1) -> Dataset:
    """Read image files with masks (tiled and labelled by them) or with one label per image."""
    from segxai.models.case import load_case

    if masks is not None:
        if len(masks) != len(images):
            raise SegxaiError(f"got {len(images)} images and {len(masks)} masks")
        cases = [load_case(p, reference=m) for p, m in zip(images, masks)]
        return tiled([c.image.array for c in cases], [c.reference > 0 for c in cases], tiles)
    if labels is None or len(labels) != len(images):
        raise SegxaiError("give one label per image, or masks to label tiles by")
    return Dataset([load_case(p).image.array for p in images], [int(v) for v in labels], None)


def backbone_from(path: str | Path | None, patch_size: int = 16, seed: int = 0) -> VisionTransformer:
    """The user's local ViT checkpoint, or a randomly initialised ViT-S/`patch_size` (seeded) when None."""
    if path is not None:
        return load_backbone(path)
    torch.manual_seed(seed)
    return vit_small(patch_size)


def train(data: Dataset, backbone: VisionTransformer, config: TrainConfig, out: str | Path | None = None,
          progress: bool = True, saving: Resumable = Resumable()) -> ViTClassifier:
    """Train the classifier on a dataset; save it to `out` when given (also at each of `saving`'s checkpoints)."""
    keep = None if out is None else (lambda net: save_classifier(out, net))
    net = train_classifier(data.images, data.labels, backbone, config, saving=saving, on_checkpoint=keep,
                           progress=progress)
    if out is not None:
        save_classifier(out, net)
    return net


def segment_file(model: str | Path, image: str | Path, out: str | Path, method: str = "XNCut",
                 **options) -> tuple[int, Path]:
    """Segment one image file with a saved classifier and write the mask (PNG, NumPy or NIfTI by extension);
    returns the predicted class and the path."""
    from segxai.io import check_output_file, save_array
    from segxai.models.case import load_case

    check_output_file(out, [model, image])
    source = load_case(image).image
    result = segment(load_classifier(model), source.array, [method], **options)
    return result.cls, save_array(result.masks[method], out, like=source)


def evaluate_splits(net: ViTClassifier, splits: dict[str, Dataset], methods: Sequence[str] = METHODS,
                    progress: bool = True, **options) -> tuple[str, str, dict]:
    """Tables 1 and 2 over the positive images (those with a mask pixel) of each split."""
    means = {}
    for name, data in splits.items():
        if data.masks is None:
            raise SegxaiError(f"split {name} has no masks to score against")
        chosen = [i for i, m in enumerate(data.masks) if m.any()]
        if not chosen:
            raise SegxaiError(f"split {name} has no image with a mask pixel")
        means[name], _ = score_split(net, [data.images[i] for i in chosen], [data.masks[i] for i in chosen], methods,
                                     progress=progress, **options)
    return table1(means), table2(means), means
