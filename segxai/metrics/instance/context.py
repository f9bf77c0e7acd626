"""The perilesional context experiment (METHODS §3.7): how much context around a lesion the model needs to keep
segmenting it, by blanking the input outside the lesion dilated by growing margins."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
import torch

from segxai.errors import SegxaiError
from segxai.metrics.instance.saliency import dilate, lesion_mask
from segxai.metrics.overlap import MaskLike
from segxai.model import SegModel


def context_experiment(
    model: SegModel | torch.nn.Module | Callable[[torch.Tensor], Any],
    image: torch.Tensor | np.ndarray,
    lesion: MaskLike,
    *,
    cls: int = 1,
    dilations: Sequence[int] = tuple(range(0, 11)),
    fill: float | np.ndarray | torch.Tensor = 0.0,
    threshold: float | None = None,
    connectivity: int | None = None,
    activation: Literal["softmax", "sigmoid", "none"] = "softmax",
) -> list[dict[str, Any]]:
    """How much perilesional context the model needs (METHODS §3.7.4).

    For each d in `dilations`, the input outside the lesion dilated d times is replaced by `fill` (zero, as in
    the IES code, or any value broadcastable to the `(C, *spatial)` image) and the model re-run. Each row gives
    the mean probability of `cls` over the original lesion voxels and whether the lesion is still detected:
    some lesion voxel predicted as `cls` (above `threshold` when given, e.g. 0.3 for the paper's U-Net, else
    the model's own label map). A plain network is wrapped in `SegModel(model, activation)`.
    """
    seg = model if isinstance(model, SegModel) else SegModel(model, activation)
    x, batched = seg.prepare(image)
    if batched and x.shape[0] != 1:
        raise SegxaiError("the context experiment runs on one image; pass (C, *spatial)")
    mask = lesion_mask(lesion)
    if tuple(x.shape[2:]) != mask.shape:
        raise SegxaiError(f"the lesion mask {mask.shape} does not match the image grid {tuple(x.shape[2:])}")
    filler = _filler(fill, x[0])
    inside = torch.from_numpy(mask).to(x.device)
    rows = []
    for d in dilations:
        keep = torch.from_numpy(dilate(mask, d, connectivity)).to(x.device)
        masked = torch.where(keep, x[0], filler)[None]
        with torch.no_grad():
            output = seg(masked)
            prob = output.class_prob(cls)[0]
            predicted = prob > threshold if threshold is not None else output.class_mask(cls)[0]
        rows.append({
            "dilation": int(d),
            "mean_probability": float(prob[inside].mean()),
            "detected": bool(predicted[inside].any()),
        })
    return rows


def _filler(fill: float | np.ndarray | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """`fill` broadcast to the image `like`, on its device and dtype."""
    try:
        values = torch.as_tensor(fill, dtype=like.dtype, device=like.device).expand_as(like)
    except (RuntimeError, TypeError, ValueError) as error:
        raise SegxaiError(f"fill must be a number or an array broadcastable to the image {tuple(like.shape)}") \
            from error
    if not bool(torch.isfinite(values).all()):
        raise SegxaiError("fill contains NaN or infinite values")
    return values
