"""Lesion-wise detection scores: TPR/FDR/FNR over typed instances and the normalised Dice (Raina et al.; as in Spagnolo et al.)."""
from __future__ import annotations

from segxai.errors import SegxaiError
from segxai.instances import (
    lesion_types,
)
from segxai.metrics.overlap import MaskLike, as_mask

REFERENCE_RATE = 0.001  # r of the normalised Dice (Raina et al., as in the IES code)


def lesion_rates(
    prediction: MaskLike, reference: MaskLike, *, connectivity: int | None = None, min_size: int = 1
) -> dict[str, float]:
    """Lesion-wise TPR, FDR and FNR of a binary prediction against a reference (see `lesion_types`)."""
    return lesion_types(prediction, reference, connectivity=connectivity, min_size=min_size).rates()


def ndsc(prediction: MaskLike, reference: MaskLike, *, r: float = REFERENCE_RATE) -> float:
    """Normalised Dice `2TP / (2TP + k·FP + FN)` with `k = (1 - r)|G| / (r (N - |G|))` (Raina et al.; as in Spagnolo et al.).

    It rescales false positives as if the reference filled a fraction `r` of the grid, so scores compare across
    lesion loads; it equals Dice when |G|/N = r. Both masks empty score 1; k = 1 when the reference is empty.
    """
    pred = as_mask(prediction, "prediction").numpy()
    ref = as_mask(reference, "reference").numpy()
    if pred.shape != ref.shape:
        raise SegxaiError(f"prediction {pred.shape} and reference {ref.shape} must have the same shape")
    if not 0 < r < 1:
        raise SegxaiError(f"the reference positive rate r must be in (0, 1), got {r}")
    tp, fp, fn = int((pred & ref).sum()), int((pred & ~ref).sum()), int((~pred & ref).sum())
    positives, voxels = int(ref.sum()), ref.size
    if tp + fp + fn == 0:
        return 1.0
    k = (1 - r) * positives / (r * (voxels - positives)) if 0 < positives < voxels else 1.0
    return 2 * tp / (2 * tp + k * fp + fn)
