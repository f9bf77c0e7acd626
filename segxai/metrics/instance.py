"""Quantitative instance-level saliency statistics (METHODS §3.7, §0.4): which modality a lesion's explanation
uses, how saliency falls off across the lesion border, how its peak differs between TP, FP and FN lesions, and
how much perilesional context the model needs to keep segmenting a lesion.

Everything works on one image's arrays (numpy, or torch tensors read on the CPU) in 2D and 3D. A saliency map
is `(*spatial)` or `(C, *spatial)` on the lesion mask's grid; a leading channel axis is kept in the results.
Neighbourhoods (dilation margins, rings, context) use the instances' connectivity: SciPy rank `ndim - 1` by
default, i.e. 18-connectivity in 3D as in the instance-saliency code.
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from scipy import ndimage, stats

from segxai.errors import SegxaiError
from segxai.explanation import Explanation
from segxai.instances import label_instances
from segxai.metrics.overlap import MaskLike, as_mask
from segxai.model import SegModel

SaliencyLike = Explanation | torch.Tensor | np.ndarray
LesionType = Literal["TP", "FP", "FN"]
REFERENCE_RATE = 0.001  # r of the normalised Dice (Raina et al., as in the IES code)


# ------------------------------------------------------------------------------------------- inputs
def _mask(value: MaskLike, name: str = "lesion mask", *, nonempty: bool = True) -> np.ndarray:
    """A boolean numpy mask (via `as_mask`, so label or probability maps are refused), non-empty if asked."""
    mask = as_mask(value, name).numpy()
    if nonempty and not mask.any():
        raise SegxaiError(f"the {name} is empty: it selects no voxel")
    return mask


def _saliency(value: SaliencyLike, shape: tuple[int, ...]) -> tuple[np.ndarray, bool]:
    """The map as finite float64 `(C, *shape)`, and whether it came with a channel axis."""
    if isinstance(value, Explanation):
        if value.batched:
            raise SegxaiError("instance statistics judge one image's explanation; pass one item of the batch")
        value = value.attribution
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if not isinstance(value, np.ndarray):
        raise SegxaiError(f"the saliency must be an array, tensor or Explanation, not {type(value).__name__}")
    if not (np.issubdtype(value.dtype, np.number) or value.dtype == bool):
        raise SegxaiError(f"the saliency has non-numeric dtype {value.dtype}")
    values = value.astype(np.float64)
    if values.shape == shape:
        values, channels = values[None], False
    elif values.shape[1:] == shape:
        channels = True
    else:
        raise SegxaiError(f"the saliency has shape {values.shape}; expected {shape} or (C, *{shape}) to match the mask")
    if not np.isfinite(values).all():
        raise SegxaiError("the saliency contains NaN or infinite values")
    return values, channels


def _structure(ndim: int, connectivity: int | None) -> np.ndarray:
    """The neighbourhood of one dilation step, of the same SciPy rank as `label_instances` uses."""
    rank = ndim - 1 if connectivity is None else int(connectivity)
    if not 1 <= rank <= max(ndim, 1):
        raise SegxaiError(f"connectivity must be between 1 and {ndim} for a {ndim}D mask, not {connectivity}")
    return ndimage.generate_binary_structure(ndim, rank)


def dilate(mask: MaskLike, steps: int, connectivity: int | None = None) -> np.ndarray:
    """`mask` dilated `steps` times by the connectivity neighbourhood (18-connected in 3D by default).

    Zero steps return the mask itself (SciPy would read `iterations=0` as "until nothing changes").
    """
    region = _mask(mask, "mask", nonempty=False)
    if int(steps) != steps or steps < 0:
        raise SegxaiError(f"dilation steps must be a whole number >= 0, got {steps}")
    if steps == 0:
        return region.copy()
    return ndimage.binary_dilation(region, _structure(region.ndim, connectivity), iterations=int(steps))


def _select(values: np.ndarray, region: np.ndarray, channels: bool, reduce: Callable[..., np.ndarray]) -> Any:
    """`reduce` of each channel over `region`; NaN when the region is empty; a float without channels."""
    result = reduce(values[:, region], axis=1) if region.any() else np.full(len(values), np.nan)
    return result if channels else float(result[0])


# ------------------------------------------------------------------------------------------- modality share
def modality_share(saliency: SaliencyLike, region: MaskLike) -> np.ndarray:
    """Each channel's share of the total |saliency| inside `region`, `(C,)` summing to 1 (NaN if all zero).

    This is the FLAIR / (FLAIR + MPRAGE) ratio of the instance-saliency paper, for any number of modalities.
    """
    mask = _mask(region, "region")
    values, _ = _saliency(saliency, mask.shape)
    totals = np.abs(values[:, mask]).sum(axis=1)
    total = totals.sum()
    return totals / total if total > 0 else np.full(len(totals), np.nan)


# ------------------------------------------------------------------------------------------- radial profile
def signed_distance(lesion: MaskLike, spacing: Sequence[float] | None = None) -> np.ndarray:
    """Signed Euclidean distance to the lesion border: minus the distance to the nearest outside voxel inside
    the lesion (so border voxels are at -1), the distance to the nearest lesion voxel outside it (+1 next to
    it), in the units of `spacing` (voxels by default)."""
    mask = _mask(lesion)
    if mask.all():
        raise SegxaiError("the lesion fills the whole grid: it has no border to measure distances from")
    sampling = None if spacing is None else _spacing(spacing, mask.ndim)
    outside = ndimage.distance_transform_edt(~mask, sampling=sampling)
    inside = ndimage.distance_transform_edt(mask, sampling=sampling)
    return np.where(mask, -inside, outside)


def _spacing(spacing: Sequence[float], ndim: int) -> tuple[float, ...]:
    values = tuple(float(s) for s in spacing)
    if len(values) != ndim or not all(math.isfinite(s) and s > 0 for s in values):
        raise SegxaiError(f"spacing must be {ndim} positive numbers, one per axis, not {tuple(spacing)}")
    return values


@dataclass
class RadialProfile:
    """Mean saliency per signed-distance bin: `distance` (bin centres), `mean` (`(bins,)` or `(C, bins)`),
    `count` (voxels per bin). Only bins holding voxels are listed."""

    distance: np.ndarray
    mean: np.ndarray
    count: np.ndarray

    def rows(self) -> list[dict[str, Any]]:
        """One row per bin (one mean column per channel), ready for `write_csv` or a plot."""
        means = self.mean if self.mean.ndim == 2 else self.mean[None]
        names = ["mean"] if self.mean.ndim == 1 else [f"mean_c{c}" for c in range(len(means))]
        return [
            {"distance": float(d), "voxels": int(n), **{name: float(m[i]) for name, m in zip(names, means)}}
            for i, (d, n) in enumerate(zip(self.distance, self.count))
        ]


def radial_profile(
    saliency: SaliencyLike,
    lesion: MaskLike,
    *,
    max_distance: float = 10.0,
    max_depth: float | None = None,
    step: float = 1.0,
    spacing: Sequence[float] | None = None,
) -> RadialProfile:
    """Mean saliency in shells of signed distance to the lesion border (METHODS §3.7.2).

    Bin j holds the voxels with signed distance in [(j - 1/2) step, (j + 1/2) step) and is centred at j·step:
    negative inside, positive outside. Voxels farther out than `max_distance` or deeper than `max_depth`
    (None: the whole lesion) are left out. The sign pattern the paper reports shows up as positive means at
    negative distances and negative means just outside.
    """
    if not (math.isfinite(step) and step > 0) or max_distance < 0 or (max_depth is not None and max_depth < 0):
        raise SegxaiError(f"step must be > 0 and the distance limits >= 0 (step={step}, max_distance="
                          f"{max_distance}, max_depth={max_depth})")
    distance = signed_distance(lesion, spacing)
    values, channels = _saliency(saliency, distance.shape)
    keep = distance <= max_distance
    if max_depth is not None:
        keep &= distance >= -max_depth
    if not keep.any():
        raise SegxaiError(f"no voxel lies within max_distance={max_distance} and max_depth={max_depth}")
    bins = np.floor(distance[keep] / step + 0.5).astype(np.int64)
    offset = int(bins.min())
    count = np.bincount(bins - offset)
    sums = np.stack([np.bincount(bins - offset, weights=channel[keep], minlength=len(count)) for channel in values])
    filled = count > 0
    mean = sums[:, filled] / count[filled]
    centres = (np.flatnonzero(filled) + offset) * step
    return RadialProfile(centres, mean if channels else mean[0], count[filled])


def inside_vs_rings(
    saliency: SaliencyLike, lesion: MaskLike, *, rings: int = 3, width: int = 1, connectivity: int | None = None
) -> dict[str, Any]:
    """Mean saliency inside the lesion and in `rings` rings of `width` dilation steps around it.

    Ring j holds the voxels reached by dilating the lesion j·width times but not (j - 1)·width times, so ring 1
    is the immediate neighbourhood. Keys: "inside", "ring_1", ... ; a ring cut off by the grid edge is NaN.
    """
    mask = _mask(lesion)
    values, channels = _saliency(saliency, mask.shape)
    if int(rings) != rings or rings < 0 or int(width) != width or width < 1:
        raise SegxaiError(f"rings must be a whole number >= 0 and width one >= 1, got rings={rings}, width={width}")
    result = {"inside": _select(values, mask, channels, np.mean)}
    previous = mask
    for ring in range(1, int(rings) + 1):
        grown = dilate(previous, width, connectivity)
        result[f"ring_{ring}"] = _select(values, grown & ~previous, channels, np.mean)
        previous = grown
    return result


# ------------------------------------------------------------------------------------------- peak saliency
def peak_saliency(
    saliency: SaliencyLike,
    lesion: MaskLike,
    *,
    margin: int = 3,
    absolute: bool = False,
    connectivity: int | None = None,
) -> Any:
    """The peak (max) saliency over the lesion dilated `margin` times (METHODS §3.7.3 and §3.9.4, default 3).

    With `absolute`, the largest |saliency| instead. A float for a spatial map, `(C,)` with channels; the
    paper compares the FLAIR channel's peak between lesion types.
    """
    mask = _mask(lesion)
    values, channels = _saliency(saliency, mask.shape)
    region = dilate(mask, margin, connectivity)
    return _select(np.abs(values) if absolute else values, region, channels, np.max)


# ------------------------------------------------------------------------------------------- lesion typing
@dataclass(frozen=True)
class Lesion:
    """One typed instance: `id` (its row in tables), `type`, and its `label` in the `source` label map."""

    id: int
    type: LesionType
    source: Literal["prediction", "reference"]
    label: int


@dataclass
class LesionTypes:
    """Instances of a prediction typed against a reference (METHODS §0.4, §3.3).

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
    """Type the connected components of a binary prediction against a binary reference.

    A predicted component overlapping the reference at all is TP, otherwise FP; a reference component that
    no kept predicted component touches is FN. Components are 18-connected in 3D by default; `min_size` drops
    predicted components below that many voxels (the IES code keeps those of more than 5, i.e. min_size=6).
    """
    pred = _mask(prediction, "prediction", nonempty=False)
    ref = _mask(reference, "reference", nonempty=False)
    if pred.shape != ref.shape:
        raise SegxaiError(f"prediction {pred.shape} and reference {ref.shape} must have the same shape")
    predicted = label_instances(pred, connectivity=connectivity, min_size=min_size)
    references = label_instances(ref, connectivity=connectivity)
    hit_predicted = set(np.unique(predicted[ref]).tolist()) - {0}
    hit_reference = set(np.unique(references[predicted > 0]).tolist()) - {0}
    lesions = [
        Lesion(label, "TP" if label in hit_predicted else "FP", "prediction", label)
        for label in range(1, int(predicted.max()) + 1)
    ]
    missed = [label for label in range(1, int(references.max()) + 1) if label not in hit_reference]
    lesions += [Lesion(len(lesions) + i, "FN", "reference", label) for i, label in enumerate(missed, start=1)]
    return LesionTypes(predicted, references, lesions)


def lesion_rates(
    prediction: MaskLike, reference: MaskLike, *, connectivity: int | None = None, min_size: int = 1
) -> dict[str, float]:
    """Lesion-wise TPR, FDR and FNR of a binary prediction against a reference (see `lesion_types`)."""
    return lesion_types(prediction, reference, connectivity=connectivity, min_size=min_size).rates()


def ndsc(prediction: MaskLike, reference: MaskLike, *, r: float = REFERENCE_RATE) -> float:
    """Normalised Dice `2TP / (2TP + k·FP + FN)` with `k = (1 - r)|G| / (r (N - |G|))` (METHODS §0.4).

    It rescales false positives as if the reference filled a fraction `r` of the grid, so scores compare across
    lesion loads; it equals Dice when |G|/N = r. Both masks empty score 1; k = 1 when the reference is empty.
    """
    pred = _mask(prediction, "prediction", nonempty=False)
    ref = _mask(reference, "reference", nonempty=False)
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


# ------------------------------------------------------------------------------------------- statistics
def _sample(values: Sequence[float], name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64).ravel()
    if not np.isfinite(array).all():
        raise SegxaiError(f"the values of {name} contain NaN or infinite values")
    return array


def compare_groups(
    values_by_type: Mapping[str, Sequence[float]], *, correction: Literal["bonferroni", "holm"] = "bonferroni"
) -> dict[str, Any]:
    """Kruskal-Wallis across the groups, then two-sided Mann-Whitney U for every pair with a multiple-testing
    correction (METHODS §3.7.3: peak saliency of TP, FP and FN lesions).

    Empty groups are left out (listed under "groups" are those used); at least two must remain. Returns
    {"groups", "kruskal": {"statistic", "p"}, "pairwise": [{"a", "b", "u", "p", "p_adjusted"}, ...]}.
    """
    if correction not in ("bonferroni", "holm"):
        raise SegxaiError(f"correction must be 'bonferroni' or 'holm', not {correction!r}")
    groups = {str(name): _sample(values, str(name)) for name, values in values_by_type.items()}
    groups = {name: values for name, values in groups.items() if values.size}
    if len(groups) < 2:
        raise SegxaiError(f"comparing groups needs at least two non-empty groups, got {sorted(groups) or 'none'}")
    pooled = np.concatenate(list(groups.values()))
    if np.all(pooled == pooled[0]):  # SciPy's H is 0/0 here: no group differs from any other
        kruskal = {"statistic": 0.0, "p": 1.0}
    else:
        result = stats.kruskal(*groups.values())
        kruskal = {"statistic": float(result.statistic), "p": float(result.pvalue)}
    pairs = list(itertools.combinations(groups, 2))
    tests = [stats.mannwhitneyu(groups[a], groups[b], alternative="two-sided") for a, b in pairs]
    raw = [float(test.pvalue) for test in tests]
    pairwise = [
        {"a": a, "b": b, "u": float(test.statistic), "p": p, "p_adjusted": q}
        for (a, b), test, p, q in zip(pairs, tests, raw, _adjust(raw, correction))
    ]
    return {"groups": list(groups), "kruskal": kruskal, "pairwise": pairwise}


def _adjust(p_values: Sequence[float], correction: str) -> list[float]:
    """Bonferroni (p·m) or Holm's step-down (running max of p_(i)·(m - i)), capped at 1."""
    m = len(p_values)
    if correction == "bonferroni":
        return [min(1.0, p * m) for p in p_values]
    adjusted = [0.0] * m
    running = 0.0
    for rank, index in enumerate(sorted(range(m), key=lambda i: p_values[i])):
        running = max(running, min(1.0, p_values[index] * (m - rank)))
        adjusted[index] = running
    return adjusted


def auroc(positive: Sequence[float], negative: Sequence[float]) -> float:
    """Area under the ROC curve of a score separating `positive` (e.g. TP peaks) from `negative` (FP peaks).

    By the Mann-Whitney identity it is U / (n_pos · n_neg): the chance that a random positive scores above a
    random negative, ties counting one half.
    """
    pos, neg = _sample(positive, "positive"), _sample(negative, "negative")
    if not (pos.size and neg.size):
        raise SegxaiError("the AUROC needs at least one positive and one negative value")
    return float(stats.mannwhitneyu(pos, neg).statistic) / (pos.size * neg.size)


# ------------------------------------------------------------------------------------------- context experiment
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
    mask = _mask(lesion)
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


# ------------------------------------------------------------------------------------------- the instance table
def instance_table(
    saliency: Mapping[int, SaliencyLike] | Sequence[SaliencyLike],
    types: LesionTypes,
    *,
    channel: int = 0,
    channel_names: Sequence[str] | None = None,
    margin: int = 3,
    rings: int = 3,
    connectivity: int | None = None,
    spacing: Sequence[float] | None = None,
) -> list[dict[str, Any]]:
    """One row per explained instance: id, type, voxels, volume, peak saliency, inside and ring means (of
    `channel`, FLAIR in the paper) and each channel's share of |saliency| over the lesion dilated `margin` times.

    `saliency` holds one map per instance (instance explanations differ per lesion): a mapping from lesion id
    (instances not in it are skipped) or a sequence in the order of `types.lesions`. Write it with `write_csv`.
    """
    if isinstance(saliency, Mapping):
        maps = dict(saliency)
    elif len(saliency) == len(types.lesions):
        maps = dict(zip((lesion.id for lesion in types.lesions), saliency))
    else:
        raise SegxaiError(f"got {len(saliency)} saliency maps for {len(types.lesions)} lesions")
    unknown = set(maps) - {lesion.id for lesion in types.lesions}
    if unknown:
        raise SegxaiError(f"saliency given for unknown lesion id(s) {sorted(unknown)}")
    voxel_volume = 1.0 if spacing is None else math.prod(_spacing(spacing, types.predicted.ndim))
    return [
        _instance_row({"id": lesion.id, "type": lesion.type, "source": lesion.source, "label": lesion.label},
                      types.mask(lesion), maps[lesion.id], channel, channel_names, margin, rings, connectivity,
                      voxel_volume)
        for lesion in types.lesions if lesion.id in maps
    ]


def instance_rows(
    explanations: Sequence[Explanation],
    *,
    channel: int = 0,
    channel_names: Sequence[str] | None = None,
    margin: int = 3,
    rings: int = 3,
    connectivity: int | None = None,
    spacing: Sequence[float] | None = None,
) -> list[dict[str, Any]]:
    """The `instance_table` rows of `segxai.explain_instances` results: each explanation's stats name its
    instance and type, and its `target_mask` holds the instance's voxels."""
    rows = []
    for explanation in explanations:
        stats = explanation.stats
        if explanation.target_mask is None or "instance" not in stats:
            raise SegxaiError("instance_rows takes the explanations explain_instances returns (one per instance)")
        mask = _mask(explanation.target_mask)
        voxel_volume = 1.0 if spacing is None else math.prod(_spacing(spacing, mask.ndim))
        rows.append(_instance_row({"id": stats["instance"], "type": stats["instance_type"]}, mask, explanation,
                                  channel, channel_names, margin, rings, connectivity, voxel_volume))
    return rows


def _instance_row(fields: dict[str, Any], mask: np.ndarray, saliency: SaliencyLike, channel: int,
                  channel_names: Sequence[str] | None, margin: int, rings: int, connectivity: int | None,
                  voxel_volume: float) -> dict[str, Any]:
    values, _ = _saliency(saliency, mask.shape)
    if not 0 <= channel < len(values):
        raise SegxaiError(f"channel {channel} is out of range for a saliency with {len(values)} channel(s)")
    names = list(channel_names) if channel_names is not None else [f"c{c}" for c in range(len(values))]
    if len(names) != len(values):
        raise SegxaiError(f"{len(names)} channel names for a saliency with {len(values)} channel(s)")
    shares = modality_share(values, dilate(mask, margin, connectivity))
    return {
        **fields,
        "voxels": int(mask.sum()),
        "volume": float(mask.sum()) * voxel_volume,
        "peak": peak_saliency(values[channel], mask, margin=margin, connectivity=connectivity),
        **inside_vs_rings(values[channel], mask, rings=rings, connectivity=connectivity),
        **{f"share_{name}": float(share) for name, share in zip(names, shares)},
    }
