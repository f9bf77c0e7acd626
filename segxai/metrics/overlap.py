"""Overlap of two binary masks (Dice, IoU), shared by every localisation metric and comparison table.

Codebases disagree on the score of two empty masks (1 when "nothing predicted, nothing there" is a perfect
match; 0 when an epsilon sits in the denominator), so the convention is the `empty` parameter.
"""
from __future__ import annotations

import numpy as np
import torch

from segxai.errors import SegxaiError

MaskLike = torch.Tensor | np.ndarray


def dice(a: MaskLike, b: MaskLike, empty: float = 1.0) -> float:
    """Dice `2|A∩B| / (|A|+|B|)` of two masks of the same (any) shape; `empty` when both are empty."""
    a, b = _pair(a, b)
    total = int(a.sum()) + int(b.sum())
    return 2.0 * int((a & b).sum()) / total if total else float(empty)


def iou(a: MaskLike, b: MaskLike, empty: float = 1.0) -> float:
    """IoU `|A∩B| / |A∪B|` of two masks of the same (any) shape; `empty` when both are empty."""
    a, b = _pair(a, b)
    union = int((a | b).sum())
    return int((a & b).sum()) / union if union else float(empty)


def as_mask(value: MaskLike, name: str = "mask") -> torch.Tensor:
    """A CPU bool tensor from a boolean or 0/1 array or tensor.

    Other values are refused rather than guessed: a label map or a probability map must be binarised first.
    """
    if isinstance(value, np.ndarray):
        if not (np.issubdtype(value.dtype, np.number) or value.dtype == bool):
            raise SegxaiError(f"{name} has non-numeric dtype {value.dtype}")
        tensor = torch.from_numpy(np.ascontiguousarray(value))
    elif isinstance(value, torch.Tensor):
        tensor = value.detach().cpu()
    else:
        raise SegxaiError(f"{name} must be a torch.Tensor or numpy array, not {type(value).__name__}")
    if tensor.dtype == torch.bool:
        return tensor
    if not bool(((tensor == 0) | (tensor == 1)).all()):
        raise SegxaiError(f"{name} must be boolean or 0/1; binarise it first (e.g. labels == cls)")
    return tensor != 0


def _pair(a: MaskLike, b: MaskLike) -> tuple[torch.Tensor, torch.Tensor]:
    a, b = as_mask(a, "the first mask"), as_mask(b, "the second mask")
    if a.shape != b.shape:
        raise SegxaiError(f"masks of different shapes cannot be compared: {tuple(a.shape)} and {tuple(b.shape)}")
    return a, b
