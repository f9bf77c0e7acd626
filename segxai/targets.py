"""Targets: turn a segmentation output into one score per batch item.

Every method and metric asks the same question of a target: "what is this score for this output?". A target
may depend on the unperturbed prediction (an instance's footprint, the reference of a Dice); methods call
`bind(reference_output)` once on the clean input so that perturbed or noisy inputs are scored against that
fixed reference. Any plain callable `SegOutput -> (B,)` tensor is accepted wherever a target is.
"""
from __future__ import annotations

from typing import Any, Callable, Literal, Sequence

import numpy as np
import torch

from segxai.errors import SegxaiError
from segxai.instances import label_instances
from segxai.model import SegOutput

# What the i,j,k of `voxel:` targets are, said the same in the README, `explain --help` and errors.
VOXEL_ORDER = "i,j,k: the voxel's indices in the file's own axis order, as a viewer shows them: NIfTI i,j,k; 2D images row,col"

Score = Literal["logit", "prob"]
Reduce = Literal["sum", "mean"]
MaskLike = torch.Tensor | np.ndarray


class Target:
    """Base class: `target(output) -> (B,)` scores. `differentiable` says whether gradients flow."""

    differentiable: bool = True

    def bind(self, reference: SegOutput) -> "Target":
        """Fix the parts that depend on the unperturbed output; the default has none."""
        return self

    def __call__(self, output: SegOutput) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """A JSON-friendly description for explanation stats and reports."""
        return {"target": type(self).__name__}

    def support(self, spatial_shape: tuple[int, ...]) -> torch.Tensor | None:
        """The output voxels a bound target reads (a spatial bool mask), or None when it may read any voxel.

        Perturbation methods use it to limit computation to a crop that keeps these voxels exact.
        """
        return None

    def crop(self, box: tuple[slice, ...]) -> "Target | None":
        """The same bound target on an output cropped to `box` (which must contain its `support`), when it
        can be expressed there; None otherwise, and callers then score the full grid."""
        return None


class FunctionTarget(Target):
    """Wraps a plain callable `output -> (B,) scores`."""

    def __init__(self, fn: Callable[[SegOutput], torch.Tensor], differentiable: bool = True) -> None:
        self.fn = fn
        self.differentiable = differentiable

    def __call__(self, output: SegOutput) -> torch.Tensor:
        return self.fn(output)

    def describe(self) -> dict[str, Any]:
        return {"target": getattr(self.fn, "__name__", type(self.fn).__name__)}


def as_target(target: Target | Callable[[SegOutput], torch.Tensor]) -> Target:
    """Accept a Target or any callable `output -> (B,) scores`."""
    if isinstance(target, Target):
        return target
    if callable(target):
        return FunctionTarget(target)
    raise SegxaiError(f"target must be a segxai target or a callable output -> scores, not {type(target).__name__}")


def description_text(description: dict[str, Any]) -> str:
    """One readable line for a `describe()` dict, e.g. `Instance(cls=1, index=3, score=logit, reduce=sum)`."""
    fields = ", ".join(
        f"{k}={description_text(v) if isinstance(v, dict) else v}" for k, v in description.items() if k != "target"
    )
    return f"{description.get('target', 'target')}({fields})"


def evaluate(target: Target, output: SegOutput) -> torch.Tensor:
    """Score `output` and check the result is one finite-shaped score per batch item."""
    scores = target(output)
    batch = output.logits.shape[0]
    if not isinstance(scores, torch.Tensor) or scores.shape != (batch,):
        shape = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
        raise SegxaiError(f"target {target.describe()['target']} returned {shape}; expected ({batch},) scores")
    return scores


class ClassRegion(Target):
    """Sum or mean of the class logit (or probability) over a mask; the whole class channel when `mask` is None.

    `mask="prediction"` uses the class's own unperturbed prediction (fixed by `bind`), as Captum's
    segmentation tutorial does by hand.
    """

    def __init__(
        self, cls: int, mask: MaskLike | Literal["prediction"] | None = None, score: Score = "logit", reduce: Reduce = "sum"
    ) -> None:
        _check_choice("score", score, ("logit", "prob"))
        _check_choice("reduce", reduce, ("sum", "mean"))
        self.cls = int(cls)
        self.from_prediction = isinstance(mask, str)
        if self.from_prediction:
            _check_choice("mask", mask, ("prediction",))
        self.mask = None if mask is None or self.from_prediction else _as_bool_tensor(mask, "mask")
        self.score = score
        self.reduce = reduce

    def bind(self, reference: SegOutput) -> Target:
        if not self.from_prediction:
            return self
        predicted = reference.class_mask(self.cls)
        if not bool(predicted.flatten(1).any(1).all()):
            raise SegxaiError(f"the model predicts no voxel of class {self.cls}, so the target region is empty")
        return ClassRegion(self.cls, predicted, self.score, self.reduce)

    def __call__(self, output: SegOutput) -> torch.Tensor:
        if self.from_prediction:
            return self.bind(output)(output)
        values = output.class_logit(self.cls) if self.score == "logit" else output.class_prob(self.cls)
        flat = values.flatten(1)
        if self.mask is None:
            return flat.sum(1) if self.reduce == "sum" else flat.mean(1)
        weights = _fit_mask(self.mask, output, "mask").flatten(1).to(values.dtype)
        total = (flat * weights).sum(1)
        return total if self.reduce == "sum" else total / weights.sum(1)

    def support(self, spatial_shape: tuple[int, ...]) -> torch.Tensor | None:
        return None if self.mask is None else _spatial_union(self.mask, spatial_shape)

    def crop(self, box: tuple[slice, ...]) -> Target | None:
        if self.mask is None or self.from_prediction:
            return None
        return ClassRegion(self.cls, self.mask[(..., *box)], self.score, self.reduce)

    def describe(self) -> dict[str, Any]:
        region = "predicted region" if self.from_prediction else "class channel"
        region = region if self.mask is None else f"mask of {int(self.mask.sum())} voxels"
        return {"target": "ClassRegion", "cls": self.cls, "score": self.score, "reduce": self.reduce, "region": region}


class Instance(Target):
    """One connected component of class `cls`: of the unperturbed prediction, or of a given label map.

    Components are numbered from 1 in scan order (as `scipy.ndimage.label` numbers them), after dropping those
    smaller than `min_size` voxels. Choose one by `index` or by a `point` inside it. `connectivity` is SciPy's
    rank (default `ndim - 1`: 4-connectivity in 2D, 18-connectivity in 3D, as the instance-saliency paper uses).
    """

    def __init__(
        self,
        cls: int,
        index: int | None = None,
        *,
        point: Sequence[int] | None = None,
        labels: MaskLike | None = None,
        connectivity: int | None = None,
        min_size: int = 1,
        score: Score = "logit",
        reduce: Reduce = "sum",
    ) -> None:
        if (index is None) == (point is None):
            raise SegxaiError("Instance needs exactly one of index (1, 2, ...) or point (a voxel inside it)")
        if index is not None and int(index) < 1:
            raise SegxaiError(f"instance index starts at 1, got {index}")
        _check_choice("score", score, ("logit", "prob"))
        _check_choice("reduce", reduce, ("sum", "mean"))
        self.cls = int(cls)
        self.index = None if index is None else int(index)
        self.point = None if point is None else tuple(int(p) for p in point)
        self.labels = None if labels is None else np.asarray(labels)
        self.connectivity = connectivity
        self.min_size = int(min_size)
        self.score = score
        self.reduce = reduce

    def footprint(self, reference: SegOutput) -> torch.Tensor:
        """The chosen component as a boolean mask on the output grid."""
        if self.labels is not None:
            reference.check_class(self.cls)
            if self.labels.shape != reference.spatial_shape:
                raise SegxaiError(
                    f"label map shape {self.labels.shape} does not match the output grid {reference.spatial_shape}"
                )
            semantic = self.labels == self.cls
        else:
            if reference.logits.shape[0] != 1:
                raise SegxaiError("an Instance target explains one image at a time; pass a single image")
            semantic = reference.class_mask(self.cls)[0].cpu().numpy()
        components = label_instances(semantic, connectivity=self.connectivity, min_size=self.min_size)
        count = int(components.max())
        source = "the given label map" if self.labels is not None else "the prediction"
        if self.point is not None:
            if len(self.point) != components.ndim or any(not 0 <= p < s for p, s in zip(self.point, components.shape)):
                raise SegxaiError(f"point {self.point} is outside the grid {components.shape}")
            index = int(components[self.point])
            if index == 0:
                raise SegxaiError(f"point {self.point} is not inside any instance of class {self.cls} in {source}")
        else:
            index = self.index
            if index > count:
                raise SegxaiError(
                    f"instance {index} does not exist: {source} has {count} instance(s) of class {self.cls} "
                    f"with at least {self.min_size} voxel(s)"
                )
        return torch.from_numpy(components == index).to(reference.logits.device)

    def bind(self, reference: SegOutput) -> Target:
        return ClassRegion(self.cls, self.footprint(reference), score=self.score, reduce=self.reduce)

    def __call__(self, output: SegOutput) -> torch.Tensor:
        return self.bind(output)(output)

    def describe(self) -> dict[str, Any]:
        chosen = {"index": self.index} if self.index is not None else {"point": list(self.point)}
        return {"target": "Instance", "cls": self.cls, **chosen, "score": self.score, "reduce": self.reduce}


class Voxel(Target):
    """The class logit (or probability) at one voxel `position` of the output grid."""

    def __init__(self, cls: int, position: Sequence[int], score: Score = "logit") -> None:
        _check_choice("score", score, ("logit", "prob"))
        self.cls = int(cls)
        self.position = tuple(int(p) for p in position)
        self.score = score

    def _check_inside(self, shape: tuple[int, ...]) -> None:
        if len(self.position) != len(shape) or any(not 0 <= p < s for p, s in zip(self.position, shape)):
            raise SegxaiError(f"voxel {self.position} is outside the output grid {tuple(shape)}")

    def __call__(self, output: SegOutput) -> torch.Tensor:
        self._check_inside(output.spatial_shape)
        values = output.class_logit(self.cls) if self.score == "logit" else output.class_prob(self.cls)
        return values[(slice(None), *self.position)]

    def support(self, spatial_shape: tuple[int, ...]) -> torch.Tensor | None:
        self._check_inside(spatial_shape)
        mask = torch.zeros(spatial_shape, dtype=torch.bool)
        mask[self.position] = True
        return mask

    def crop(self, box: tuple[slice, ...]) -> Target | None:
        if not all(b.start <= p < b.stop for p, b in zip(self.position, box)):
            return None
        return Voxel(self.cls, [p - b.start for p, b in zip(self.position, box)], self.score)

    def describe(self) -> dict[str, Any]:
        return {"target": "Voxel", "cls": self.cls, "position": list(self.position), "score": self.score}


class RegionDice(Target):
    """Dice of the (possibly perturbed) prediction of `cls` against a reference, inside `region`.

    `reference="prediction"` uses the model's own unperturbed prediction (fixed by `bind`); a mask uses that
    mask (e.g. ground truth). `soft=True` uses probabilities instead of the binary prediction, which makes the
    target differentiable. `empty_score` is returned when both are empty inside the region.
    """

    def __init__(
        self,
        cls: int,
        region: MaskLike | None = None,
        reference: Literal["prediction"] | MaskLike = "prediction",
        soft: bool = False,
        empty_score: float = 1.0,
    ) -> None:
        self.cls = int(cls)
        self.region = None if region is None else _as_bool_tensor(region, "region")
        if isinstance(reference, str):
            _check_choice("reference", reference, ("prediction",))
            self.reference: torch.Tensor | None = None
        else:
            self.reference = _as_bool_tensor(reference, "reference", allow_empty=True)
        self.soft = bool(soft)
        self.differentiable = self.soft
        self.empty_score = float(empty_score)

    def bind(self, reference: SegOutput) -> Target:
        if self.reference is not None:
            return self
        bound = RegionDice(self.cls, self.region, reference.class_mask(self.cls), self.soft, self.empty_score)
        return bound

    def __call__(self, output: SegOutput) -> torch.Tensor:
        if self.reference is None:
            return self.bind(output)(output)
        pred = output.class_prob(self.cls) if self.soft else output.class_mask(self.cls).float()
        ref = _fit_mask(self.reference, output, "reference").float()
        if self.region is not None:
            region = _fit_mask(self.region, output, "region").float()
            pred, ref = pred * region, ref * region
        pred, ref = pred.flatten(1), ref.flatten(1)
        denominator = pred.sum(1) + ref.sum(1)
        dice = 2.0 * (pred * ref).sum(1) / denominator.clamp_min(1e-12)
        return torch.where(denominator > 0, dice, torch.full_like(dice, self.empty_score))

    def support(self, spatial_shape: tuple[int, ...]) -> torch.Tensor | None:
        return None if self.region is None else _spatial_union(self.region, spatial_shape)

    def crop(self, box: tuple[slice, ...]) -> Target | None:
        if self.region is None or self.reference is None:
            return None
        window = (..., *box)
        return RegionDice(self.cls, self.region[window], self.reference[window], self.soft, self.empty_score)

    def describe(self) -> dict[str, Any]:
        reference = "prediction" if self.reference is None else f"mask of {int(self.reference.sum())} voxels"
        region = "whole output" if self.region is None else f"mask of {int(self.region.sum())} voxels"
        return {"target": "RegionDice", "cls": self.cls, "region": region, "reference": reference, "soft": self.soft}


class Contrast(Target):
    """The difference `a(output) - b(output)` of two targets, e.g. a lesion against its surroundings."""

    def __init__(self, a: Target | Callable, b: Target | Callable) -> None:
        self.a, self.b = as_target(a), as_target(b)
        self.differentiable = self.a.differentiable and self.b.differentiable

    def bind(self, reference: SegOutput) -> Target:
        return Contrast(self.a.bind(reference), self.b.bind(reference))

    def __call__(self, output: SegOutput) -> torch.Tensor:
        return self.a(output) - self.b(output)

    def support(self, spatial_shape: tuple[int, ...]) -> torch.Tensor | None:
        a, b = self.a.support(spatial_shape), self.b.support(spatial_shape)
        return None if a is None or b is None else a | b

    def crop(self, box: tuple[slice, ...]) -> Target | None:
        a, b = self.a.crop(box), self.b.crop(box)
        return None if a is None or b is None else Contrast(a, b)

    def describe(self) -> dict[str, Any]:
        return {"target": "Contrast", "a": self.a.describe(), "b": self.b.describe()}


def parse_target(spec: str, labels: MaskLike | None = None) -> Target:
    """Parse a CLI target: `class:1` (class 1 over its predicted region), `instance:1:3` (class 1, instance 3),
    `instance:3` (class 1) or `voxel:1:i,j,k` / `voxel:i,j,k` (class 1), with `VOXEL_ORDER`."""
    kind, _, rest = spec.partition(":")
    parts = rest.split(":") if rest else []
    try:
        if kind == "class" and len(parts) == 1:
            return ClassRegion(int(parts[0]), mask="prediction")
        if kind == "instance" and len(parts) in (1, 2):
            cls, index = (1, parts[0]) if len(parts) == 1 else parts
            return Instance(int(cls), int(index), labels=labels)
        if kind == "voxel" and len(parts) in (1, 2):
            cls, position = (1, parts[0]) if len(parts) == 1 else parts
            return Voxel(int(cls), [int(p) for p in position.split(",")])
    except ValueError as error:
        raise SegxaiError(f"cannot read target {spec!r}: {error}") from None
    raise SegxaiError(
        f"unknown target {spec!r}; use class:CLS, instance:[CLS:]INDEX or voxel:[CLS:]i,j,k ({VOXEL_ORDER})"
    )


# --------------------------------------------------------------------------------------------- helpers
def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise SegxaiError(f"{name} must be one of {', '.join(map(repr, choices))}, not {value!r}")


def _as_bool_tensor(mask: MaskLike, name: str, allow_empty: bool = False) -> torch.Tensor:
    tensor = mask.detach() if isinstance(mask, torch.Tensor) else torch.from_numpy(np.asarray(mask))
    tensor = tensor.bool() if tensor.dtype != torch.bool else tensor
    if not allow_empty and not bool(tensor.any()):
        raise SegxaiError(f"the target {name} is empty: it selects no voxel")
    return tensor


def _spatial_union(mask: torch.Tensor, spatial_shape: tuple[int, ...]) -> torch.Tensor:
    """A `(*spatial)` or `(B, *spatial)` mask as one spatial mask (the union over batch items)."""
    return mask.reshape(-1, *spatial_shape).any(0).cpu()


def _fit_mask(mask: torch.Tensor, output: SegOutput, name: str) -> torch.Tensor:
    """Broadcast a `(*spatial)` or `(B, *spatial)` mask to the output batch, with a clear shape error."""
    spatial = output.spatial_shape
    if tuple(mask.shape[-len(spatial):]) != spatial or mask.ndim not in (len(spatial), len(spatial) + 1):
        raise SegxaiError(f"the target {name} has shape {tuple(mask.shape)} but the output grid is {spatial}")
    if mask.ndim == len(spatial) + 1 and mask.shape[0] not in (1, output.logits.shape[0]):
        raise SegxaiError(f"the target {name} has {mask.shape[0]} items but the output batch has {output.logits.shape[0]}")
    mask = mask.to(output.logits.device)
    return mask.reshape(-1, *spatial).expand(output.logits.shape[0], *spatial)
