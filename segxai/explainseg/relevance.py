"""Relevance of a classifier's decision on the input pixels, and the ViT feature map it is fused with.

The relevance is segxai's Integrated Gradients inside a SmoothGrad noise tunnel (5 samples, as the paper uses
Captum's NoiseTunnel), reduced over colour channels to one grey map in [0, 1]. The classifier is presented to
the segxai explainers as a "segmentation" network whose output is its class logits repeated over the image
grid, and the target is `targets.Voxel(cls, (0, 0))`, the class logit read once per item, so every pass and seed
is accounted for the same way as for a segmenter.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from segxai.errors import SegxaiError
from segxai.explainseg.backbone import ViTFeatures
from segxai.methods.integrated import IntegratedGradients
from segxai.methods.smoothgrad import SmoothGrad
from segxai.model import SegModel
from segxai.targets import Voxel

Reduction = Literal["abs", "positive"]
FeatureKind = Literal["attention", "keynorm"]


class ClassScores(nn.Module):
    """A classifier as a segmentation network: its `(B, K)` logits broadcast to `(B, K, H, W)`."""

    def __init__(self, classifier: nn.Module) -> None:
        super().__init__()
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(x)[:, :, None, None].expand(-1, -1, *x.shape[2:])


@dataclass
class Relevance:
    """A grey relevance map `(H, W)` in [0, 1], the class it explains, and the explanation's stats."""

    map: np.ndarray
    cls: int
    stats: dict[str, Any]


def predict(classifier: nn.Module, x: torch.Tensor) -> int:
    """The predicted class of one normalised image `(1, C, H, W)`."""
    with torch.no_grad():
        return int(classifier(x).argmax(dim=1)[0])


def relevance(
    classifier: nn.Module,
    x: torch.Tensor,
    cls: int | None = None,
    *,
    n_steps: int = 50,
    n_samples: int = 5,
    noise: float = 0.15,
    reduction: Reduction = "abs",
    seed: int = 0,
    batch_size: int | str = "auto",
    progress: bool = False,
) -> Relevance:
    """IG (zero baseline in normalised space, Gauss-Legendre steps) in a noise tunnel of `n_samples` draws with
    standard deviation `noise` in normalised units, for class `cls` (default: the predicted class) of one
    normalised image `(1, C, H, W)`. Channels are reduced by summing |IG| ("abs") or keeping the positive part
    of the channel sum ("positive"), then min-max normalised."""
    if x.ndim != 4 or x.shape[0] != 1:
        raise SegxaiError(f"relevance explains one normalised image (1, C, H, W), got {tuple(x.shape)}")
    if reduction not in ("abs", "positive"):
        raise SegxaiError(f"reduction must be 'abs' or 'positive', not {reduction!r}")
    cls = predict(classifier, x) if cls is None else int(cls)
    model = SegModel(ClassScores(classifier), activation="softmax")
    tunnel = SmoothGrad(model, base=IntegratedGradients(model, baselines=0.0, n_steps=n_steps),
                        n_samples=n_samples, noise=noise, relative=False)
    explanation = tunnel.explain(x, Voxel(cls, (0, 0)), seed=seed, batch_size=batch_size, progress=progress)
    attribution = explanation.attribution[0]
    grey = attribution.abs().sum(0) if reduction == "abs" else attribution.sum(0).clamp(min=0)
    return Relevance(normalize(grey.numpy()), cls, explanation.stats)


def feature_map(features: ViTFeatures, size: tuple[int, int], kind: FeatureKind = "attention") -> np.ndarray:
    """The ViT map fused with the relevance, from one image's features, upsampled bilinearly to `size` and
    min-max normalised: "attention" is the last layer's CLS-to-patch attention averaged over heads, "keynorm"
    the norm of the last-layer keys of each patch."""
    if kind == "attention":
        coarse = features.attention[0, :, 0, 1:].mean(0).reshape(features.grid)
    elif kind == "keynorm":
        coarse = features.keys[0].norm(dim=-1)
    else:
        raise SegxaiError(f"feature map kind must be 'attention' or 'keynorm', not {kind!r}")
    fine = F.interpolate(coarse[None, None].float(), size=tuple(size), mode="bilinear", align_corners=False)
    return normalize(fine[0, 0].detach().cpu().numpy())


def fuse(relevance_map: np.ndarray, features: np.ndarray) -> np.ndarray:
    """Pixel-wise product of relevance and feature map (the features act as a denoising weight), in [0, 1]."""
    if relevance_map.shape != features.shape:
        raise SegxaiError(f"relevance {relevance_map.shape} and feature map {features.shape} grids differ")
    return normalize(relevance_map * features)


def normalize(values: np.ndarray) -> np.ndarray:
    """Min-max normalise to [0, 1] (all zeros for a constant map)."""
    values = np.asarray(values, dtype=np.float64)
    low, high = float(values.min()), float(values.max())
    return (values - low) / (high - low) if high > low else np.zeros_like(values)
