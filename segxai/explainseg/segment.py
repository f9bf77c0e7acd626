"""ExplainSeg on one image: classify, explain, and turn the explanation into masks (variants and baselines).

Everything runs at the classifier's input size (the paper's 224 x 224); masks are returned on the image's own
grid (nearest upsampling), so they are scored against the original ground truth.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from segxai.errors import SegxaiError
from segxai.explainseg.baselines import baseline_mask
from segxai.explainseg.classifier import ViTClassifier, resize
from segxai.explainseg.postprocess import VARIANTS, Graph, variant_mask
from segxai.explainseg.relevance import FeatureKind, Reduction, feature_map, relevance

BASELINES = ("TokenCut", "MaskCut")
METHODS = (*VARIANTS, *BASELINES)


@dataclass
class RelevanceSettings:
    """Integrated Gradients in a noise tunnel: the paper's 5 samples; steps, noise and baseline are not given
    there (Captum's 50 steps and zero baseline; noise 0.15 in normalised units)."""

    n_steps: int = 50
    n_samples: int = 5
    noise: float = 0.15
    reduction: Reduction = "abs"
    batch_size: int | str = "auto"


@dataclass
class Segmentation:
    """The predicted class, the relevance (None when no variant was asked for) and feature maps (classifier
    grid), a mask per method (image grid), and the relevance's cost stats."""

    cls: int
    relevance: np.ndarray | None
    features: np.ndarray
    masks: dict[str, np.ndarray] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)


def rgb_image(image: torch.Tensor | np.ndarray, size: int) -> np.ndarray:
    """The raw image `(3, H, W)` (0..255) resized to `size` as an `(size, size, 3)` array for the CRF."""
    x = torch.as_tensor(np.asarray(image), dtype=torch.float32)[None]
    return resize(x, size)[0].permute(1, 2, 0).clamp(0, 255).numpy()


def segment(
    classifier: ViTClassifier,
    image: np.ndarray,
    methods: Sequence[str] = METHODS,
    *,
    settings: RelevanceSettings | None = None,
    graph: Graph = "token",
    feature: FeatureKind = "attention",
    crf: bool = False,
    seed: int = 0,
    progress: bool = False,
) -> Segmentation:
    """Segment one raw image `(C, H, W)` with each of `methods` (variants "A", "B", "C", "XNCut" and the
    baselines "TokenCut", "MaskCut"); the relevance explains the predicted class."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise SegxaiError(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    settings = settings or RelevanceSettings()
    image = np.asarray(image, dtype=np.float32)
    x = classifier.prepare(image)
    shape = tuple(x.shape[2:])
    with torch.no_grad():
        features = classifier.backbone.features(x)
        predicted = int(classifier.head(features.cls).argmax(dim=1)[0])  # the classifier's forward, reused
    keys = features.keys[0].cpu().numpy()
    rgb = rgb_image(image, classifier.size) if image.shape[0] == 3 else None
    result = Segmentation(predicted, None, feature_map(features, shape, feature))
    if any(m in VARIANTS for m in methods):
        rel = relevance(classifier, x, result.cls, n_steps=settings.n_steps, n_samples=settings.n_samples,
                        noise=settings.noise, reduction=settings.reduction, seed=seed,
                        batch_size=settings.batch_size, progress=progress)
        result.relevance, result.stats = rel.map, rel.stats
    for method in methods:
        if method in VARIANTS:
            mask = variant_mask(method, result.relevance, result.features, keys, rgb, graph=graph, crf=crf)
        else:
            mask = baseline_mask(method, keys, shape, rgb, crf=crf)
        result.masks[method] = to_grid(mask, image.shape[1:])
    return result


def to_grid(mask: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Nearest resampling of a mask to the image grid `shape`."""
    if tuple(mask.shape) == tuple(shape):
        return mask
    tensor = torch.as_tensor(mask, dtype=torch.float32)[None, None]
    return F.interpolate(tensor, size=tuple(shape), mode="nearest")[0, 0].numpy() > 0.5
