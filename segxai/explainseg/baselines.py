"""The paper's unsupervised baselines on the same backbone: TokenCut (Wang et al. 2022) and MaskCut (CutLER).

Both cut the graph of the ViT's last-layer keys (`ncut.token_affinity`). TokenCut keeps the seed's connected
component of one bipartition; MaskCut extracts up to three masks, zeroing the features of each mask's patches
before the next cut, reversing a partition that holds 3 of the 4 corners, and dropping masks that repeat the
previous one or are tiny. Pixel masks come from nearest upsampling, or from DenseCRF when asked (MaskCut then
fills holes and drops masks the CRF changed too much, as CutLER does).
"""
from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from segxai.errors import SegxaiError
from segxai.explainseg.ncut import bipartition, token_affinity
from segxai.metrics.overlap import iou


def _keys(keys: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
    keys = np.asarray(keys, dtype=np.float64)
    if keys.ndim != 3:
        raise SegxaiError(f"token keys must be (h, w, D), got shape {keys.shape}")
    return keys.reshape(-1, keys.shape[2]), keys.shape[:2]


def seed_component(foreground: np.ndarray, seed: int) -> np.ndarray:
    """The 4-connected component of a flat token mask (on its grid) that contains token `seed`."""
    labels, _ = ndimage.label(foreground)
    return labels == labels.flat[seed]


def tokencut(keys: np.ndarray, tau: float = 0.2, eps: float = 1e-5) -> np.ndarray:
    """TokenCut's token mask `(h, w)`: the foreground side of the NCut (the side holding the eigenvector's
    largest magnitude), reduced to that seed's connected component."""
    features, grid = _keys(keys)
    foreground, y = bipartition(token_affinity(features, tau, eps))
    seed = int(np.argmax(np.abs(y)))
    if not foreground[seed]:
        foreground = ~foreground
    return seed_component(foreground.reshape(grid), seed)


def corners(mask: np.ndarray) -> int:
    """How many of the four corner tokens are foreground."""
    return int(mask[0, 0]) + int(mask[0, -1]) + int(mask[-1, 0]) + int(mask[-1, -1])


def maskcut(keys: np.ndarray, n_masks: int = 3, tau: float = 0.15, eps: float = 1e-5, min_fraction: float = 0.01,
            max_iou: float = 0.5) -> list[np.ndarray]:
    """MaskCut's token masks `(h, w)`: up to `n_masks` iterative cuts, each after zeroing the features of the
    patches already taken. A partition holding >= 3 corners, or not holding the seed, is reversed; a mask
    whose IoU with the previous kept mask exceeds `max_iou`, or covering <= `min_fraction` of the tokens, is
    dropped (its patches are still removed from later cuts)."""
    features, grid = _keys(keys)
    features = features.copy()
    taken = np.zeros(len(features), dtype=bool)
    masks: list[np.ndarray] = []
    for _ in range(n_masks):
        if taken.all():
            break
        foreground, y = bipartition(token_affinity(features, tau, eps))
        seed = int(np.argmax(np.abs(y)))
        if corners(foreground.reshape(grid)) >= 3 or not foreground[seed]:
            foreground, y = ~foreground, -y
        mask = seed_component(foreground.reshape(grid), int(np.argmax(y)))
        taken |= mask.ravel()
        features[taken] = 0.0
        repeated = bool(masks) and iou(mask, masks[-1]) > max_iou
        if not repeated and mask.mean() > min_fraction:
            masks.append(mask)
    return masks


def to_pixels(token_mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest upsampling of a token mask `(h, w)` to pixels `shape` (multiples of the grid)."""
    block = (shape[0] // token_mask.shape[0], shape[1] // token_mask.shape[1])
    return np.kron(token_mask, np.ones(block, dtype=bool)).astype(bool)


def crf_from_tokens(image: np.ndarray, token_mask: np.ndarray) -> np.ndarray:
    """CutLER's refinement: unary = softmax of the hard mask's logits {0, 1} upsampled bilinearly, then holes
    filled."""
    from segxai.explainseg.crf import refine

    soft = torch.nn.functional.interpolate(torch.as_tensor(token_mask, dtype=torch.float32)[None, None],
                                           size=image.shape[:2], mode="bilinear", align_corners=False)[0, 0]
    return ndimage.binary_fill_holes(refine(image, torch.sigmoid(2 * soft - 1).numpy()))


def baseline_mask(name: str, keys: np.ndarray, shape: tuple[int, int], image: np.ndarray | None = None,
                  *, crf: bool = False) -> np.ndarray:
    """The pixel mask `shape` of "TokenCut" or "MaskCut" (the union of its masks) from one image's last-layer
    keys `(h, w, D)`; `image` is the RGB `(H, W, 3)` on that grid that the CRF needs."""
    if name not in ("TokenCut", "MaskCut"):
        raise SegxaiError(f"unknown baseline {name!r}; choose TokenCut or MaskCut")
    if crf and image is None:
        raise SegxaiError("CRF refinement needs the RGB image")
    token_masks = [tokencut(keys)] if name == "TokenCut" else maskcut(keys)
    union = np.zeros(shape, dtype=bool)
    for token_mask in token_masks:
        raw = to_pixels(token_mask, shape)
        if not crf:
            union |= raw
            continue
        refined = crf_from_tokens(image, token_mask)
        if name == "TokenCut" or iou(refined, raw) >= 0.5:
            union |= refined
    return union
