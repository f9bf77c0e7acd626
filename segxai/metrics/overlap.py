"""Overlap of two binary masks (Dice, IoU), shared by every localisation metric and comparison table.

Codebases disagree on the score of two empty masks (1 when "nothing predicted, nothing there" is a perfect
match; 0 when an epsilon sits in the denominator), so the convention is the `empty` parameter.
"""
from __future__ import annotations

import numpy as np
import torch

from segxai.errors import SegxaiError
from segxai.instances import as_mask

MaskLike = torch.Tensor | np.ndarray
__all__ = ["MaskLike", "as_mask", "dice", "iou"]


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


def _pair(a: MaskLike, b: MaskLike) -> tuple[torch.Tensor, torch.Tensor]:
    a, b = as_mask(a, "the first mask"), as_mask(b, "the second mask")
    if a.shape != b.shape:
        raise SegxaiError(f"masks of different shapes cannot be compared: {tuple(a.shape)} and {tuple(b.shape)}")
    return a, b
