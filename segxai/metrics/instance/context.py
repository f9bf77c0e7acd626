"""The perilesional context experiment (Spagnolo et al., instance-level quantitative saliency): how much context
around a lesion the model needs to keep segmenting it, by blanking the input outside the lesion dilated by
growing margins."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
import torch

from segxai.errors import SegxaiError
from segxai.methods.perturb import engine
from segxai.metrics.instance.saliency import dilate, lesion_mask
from segxai.metrics.overlap import MaskLike
from segxai.model import SegModel, SegOutput


def context_experiment(
    model: SegModel | torch.nn.Module | Callable[[torch.Tensor], Any],
    image: torch.Tensor | np.ndarray,
    lesion: MaskLike,
    *,
    cls: int = 1,
    dilations: Sequence[int] = tuple(range(11)),
    fill: float | np.ndarray | torch.Tensor = 0.0,
    threshold: float | None = None,
    connectivity: int | None = None,
    activation: Literal["softmax", "sigmoid", "none"] = "softmax",
    batch_size: int | str = "auto",
    progress: bool = False,
) -> list[dict[str, Any]]:
    """How much perilesional context the model needs (Spagnolo et al., instance-level quantitative saliency).

    For each d in `dilations`, the input outside the lesion dilated d times is replaced by `fill` and the
    model re-run (the masked inputs are scored in batches by the perturbation engine).

    Args:
        model: a `SegModel`; a plain network is wrapped in `SegModel(model, activation)`.
        image: one image `(C, *spatial)`.
        lesion: the lesion's `(*spatial)` mask.
        cls: the lesion's class.
        dilations: the margins, in dilation steps of the `connectivity` neighbourhood.
        fill: zero, as in the IES code, or any value broadcastable to the `(C, *spatial)` image.
        threshold: detection threshold on the class probability (e.g. 0.3 for the paper's U-Net); None uses
            the model's own label map.
        connectivity: the dilation's neighbourhood (default 18-connected in 3D).
        activation: for a plain network.
        batch_size: inputs per forward pass, a positive int or "auto" (a memory budget).
        progress: show a progress bar.
    Returns:
        One row per dilation: `dilation`, `mean_probability` of `cls` over the original lesion voxels, and
        `detected` (some lesion voxel predicted as `cls`).
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
    kept = [torch.from_numpy(dilate(mask, d, connectivity)).to(x.device) for d in dilations]

    def lesion_figures(inputs: torch.Tensor) -> torch.Tensor:
        """Per input: the lesion's mean probability of `cls` and whether any lesion voxel is predicted."""
        output: SegOutput = seg(inputs)
        prob = output.class_prob(cls)
        predicted = prob > threshold if threshold is not None else output.class_mask(cls)
        return torch.stack([prob[:, inside].mean(1), predicted[:, inside].any(1).to(prob.dtype)], 1)

    masked = engine.Inputs(len(kept), lambda i: torch.where(kept[i], x[0], filler))
    context = engine.context(seg, x, batch_size=batch_size, progress=progress)
    figures = engine.score_all(seg, masked, lesion_figures, context, desc="context experiment")
    return [{"dilation": int(d), "mean_probability": float(row[0]), "detected": bool(row[1])}
            for d, row in zip(dilations, figures)]


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
