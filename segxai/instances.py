"""Binary masks and their instances, in 2D and 3D: validation, connected components numbered as SciPy numbers
them, instance label maps kept as given (touching objects stay apart), and the typing of predicted instances
against a reference (TP / FP / FN)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from scipy import ndimage

from segxai.errors import SegxaiError

MaskLike = torch.Tensor | np.ndarray
LesionType = Literal["TP", "FP", "FN"]


def label_instances(mask: np.ndarray, connectivity: int | None = None, min_size: int = 1) -> np.ndarray:
    """Label the connected components of `mask` 1..N in scan order, dropping those under `min_size` voxels.

    `connectivity` is SciPy's rank (1 = faces only, ndim = full); the default `ndim - 1` gives 4-connectivity
    in 2D and 18-connectivity in 3D. Numbers stay in scan order after small components are dropped.
    """
    mask = np.asarray(mask, dtype=bool)
    rank = mask.ndim - 1 if connectivity is None else int(connectivity)
    if not 1 <= rank <= max(mask.ndim, 1):
        raise SegxaiError(f"connectivity must be between 1 and {mask.ndim} for a {mask.ndim}D mask, not {connectivity}")
    labels, count = ndimage.label(mask, structure=ndimage.generate_binary_structure(mask.ndim, rank))
    if min_size > 1 and count:
        sizes = np.bincount(labels.ravel(), minlength=count + 1)
        keep = sizes >= min_size
        keep[0] = False
        renumber = np.zeros(count + 1, dtype=labels.dtype)
        renumber[keep] = np.arange(1, int(keep.sum()) + 1)
        labels = renumber[labels]
    return labels


def as_instances(value: MaskLike, connectivity: int | None = None, min_size: int = 1) -> np.ndarray:
    """Instances numbered 1..N from a binary mask (its connected components) or an instance label map.

    A map holding more than one non-zero value is an instance label map: each value is one instance, kept as
    given (touching instances are never merged), renumbered 1..N in ascending order of the given ids; instances
    under `min_size` voxels are dropped. A boolean or 0/1 mask is split into connected components
    (`label_instances`).
    """
    array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
    if array.dtype == bool or not np.issubdtype(array.dtype, np.number):
        return label_instances(as_mask(array).numpy(), connectivity=connectivity, min_size=min_size)
    if array.dtype.kind == "f" and not np.array_equal(array, np.rint(array)):
        raise SegxaiError("an instance label map holds integer ids; binarise a probability map first")
    ids = np.unique(array[array != 0])
    if len(ids) <= 1:
        return label_instances(array != 0, connectivity=connectivity, min_size=min_size)
    if ids.min() < 0:
        raise SegxaiError(f"instance ids must be positive, found {ids.min()}")
    dense = np.searchsorted(ids, array) + 1
    numbered = np.where(array != 0, dense, 0)
    if min_size > 1:
        sizes = np.bincount(numbered.ravel(), minlength=len(ids) + 1)
        keep = sizes >= min_size
        keep[0] = False
        renumber = np.zeros(len(ids) + 1, dtype=np.int64)
        renumber[keep] = np.arange(1, int(keep.sum()) + 1)
        numbered = renumber[numbered]
    return numbered.astype(np.int64)


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


@dataclass(frozen=True)
class Lesion:
    """One typed instance: `id` (its row in tables), `type`, and its `label` in the `source` label map."""

    id: int
    type: LesionType
    source: Literal["prediction", "reference"]
    label: int


@dataclass
class LesionTypes:
    """Instances of a prediction typed against a reference (Spagnolo et al., instance-level quantitative saliency).

    `predicted` and `reference` are the instance label maps. `lesions` lists the predicted instances (TP or FP)
    with their label as id, then the missed reference instances (FN) numbered on after them; FN lesions are
    judged on their reference footprint.
    """

    predicted: np.ndarray
    reference: np.ndarray
    lesions: list[Lesion] = field(default_factory=list)

    def mask(self, lesion: Lesion) -> np.ndarray:
        """The lesion's voxels, from the label map it comes from."""
        labels = self.predicted if lesion.source == "prediction" else self.reference
        return labels == lesion.label

    def counts(self) -> dict[str, int]:
        return {kind: sum(lesion.type == kind for lesion in self.lesions) for kind in ("TP", "FP", "FN")}

    def rates(self) -> dict[str, float]:
        """Lesion-wise TPR = TP/(TP+FN), FDR = FP/(FP+TP), FNR = FN/(TP+FN); NaN for a zero denominator."""
        n = self.counts()
        return {
            "TPR": _ratio(n["TP"], n["TP"] + n["FN"]),
            "FDR": _ratio(n["FP"], n["FP"] + n["TP"]),
            "FNR": _ratio(n["FN"], n["TP"] + n["FN"]),
        }


def _ratio(part: int, whole: int) -> float:
    return part / whole if whole else float("nan")


def lesion_types(
    prediction: MaskLike, reference: MaskLike, *, connectivity: int | None = None, min_size: int = 1
) -> LesionTypes:
    """Type the instances of a prediction against the instances of a reference.

    Each side is a binary mask (split into connected components, 18-connected in 3D by default) or an instance
    label map (its instances kept as given, see `as_instances`: touching nuclei stay apart). A predicted
    instance overlapping the reference at all is TP, otherwise FP; a reference instance that no kept predicted
    instance touches is FN. `min_size` drops predicted instances below that many voxels (the IES code keeps
    those of more than 5, i.e. min_size=6).
    """
    predicted = as_instances(prediction, connectivity=connectivity, min_size=min_size)
    references = as_instances(reference, connectivity=connectivity)
    if predicted.shape != references.shape:
        raise SegxaiError(f"prediction {predicted.shape} and reference {references.shape} must have the same shape")
    hit_predicted = set(np.unique(predicted[references > 0]).tolist()) - {0}
    hit_reference = set(np.unique(references[predicted > 0]).tolist()) - {0}
    lesions = [
        Lesion(label, "TP" if label in hit_predicted else "FP", "prediction", label)
        for label in range(1, int(predicted.max(initial=0)) + 1)
    ]
    missed = [label for label in range(1, int(references.max(initial=0)) + 1) if label not in hit_reference]
    lesions += [Lesion(len(lesions) + i, "FN", "reference", label) for i, label in enumerate(missed, start=1)]
    return LesionTypes(predicted, references, lesions)
