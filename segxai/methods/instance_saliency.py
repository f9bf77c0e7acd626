"""Explain every instance (lesion) of one class in one call (instance-level saliency, Spagnolo et al.).

Instances are the connected components of the model's prediction of a class (18-connected in 3D); with a
reference mask they are typed TP/FP, and reference lesions the model missed (FN) are explained on their own
voxels. Instance SmoothGrad shares each noisy forward pass between all instances and runs one backward pass per
instance ("mean" aggregation: the gradient of the instance's summed logit), or one per chunk of its voxels
("max" aggregation: at every input voxel, the signed gradient of largest magnitude over the chunks; `chunk=1` is
exact). Any other method runs once per instance on the same target.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Literal, Sequence

import numpy as np
import torch

from segxai.errors import SegxaiError
from segxai.explanation import Explanation, Explanations, ItemStats, stats_view
from segxai.instances import as_instances, label_instances, lesion_types
from segxai.methods.base import Explainer, as_segmodel, resolve_batch_size
from segxai.methods.perturb.engine import CROP_ALIGNMENT
from segxai.methods.smoothgrad import noise_sigma
from segxai.model import SegModel
from segxai.progress import progress_bar
from segxai.roi import CropPlan, as_roi, crop_plan, receptive_field
from segxai.targets import ClassRegion, Score, evaluate

Aggregation = Literal["mean", "max"]
SHARED_METHODS = ("smoothgrad", "saliency")
# A backward pass costs about twice a forward pass; used to decide when lesions share a crop.
BACKWARD_COST = 2.0


@dataclass
class FoundInstance:
    """One instance to explain: its number (predicted instances first, in scan order, then missed reference
    lesions), its type ("TP", "FP", "FN", or "predicted" without a reference) and its voxels."""

    index: int
    kind: str
    mask: torch.Tensor


def given_instances(labels: np.ndarray | torch.Tensor) -> list[FoundInstance]:
    """The instances of an instance label map (e.g. an instance model's prediction), kept as given (touching
    objects stay apart), numbered 1..N in ascending order of their ids: pass them as `instances=`."""
    numbered = as_instances(labels)
    return [FoundInstance(i, "given", torch.from_numpy(numbered == i)) for i in range(1, int(numbered.max(initial=0)) + 1)]


def find_instances(model: SegModel, x: torch.Tensor, cls: int, reference: np.ndarray | torch.Tensor | None = None,
                   *, connectivity: int | None = None, min_size: int = 1) -> list[FoundInstance]:
    """The instances of class `cls` predicted on the single-image batch `x`; with a `reference` mask, typed by
    `segxai.instances.lesion_types` (TP/FP), followed by the reference lesions the model missed (FN).

    Args:
        model: the model adapter.
        x: a `(1, C, *spatial)` batch.
        cls: the class.
        reference: a mask on the image grid (split into connected components), an instance label map (its
            instances kept as given: touching objects stay apart), or None.
        connectivity: SciPy's connectivity rank (None: 4-connected in 2D, 18-connected in 3D, see `label_instances`).
        min_size: smallest instance kept, in voxels.

    Returns:
        The instances, numbered from 1.
    """
    with torch.no_grad():
        predicted = model(x).class_mask(cls)[0].cpu().numpy()
    if reference is None:
        labels = label_instances(predicted, connectivity=connectivity, min_size=min_size)
        return [FoundInstance(i, "predicted", torch.from_numpy(labels == i)) for i in range(1, int(labels.max()) + 1)]
    truth = reference.detach().cpu().numpy() if isinstance(reference, torch.Tensor) else np.asarray(reference)
    if truth.shape != predicted.shape:
        raise SegxaiError(f"the reference mask has shape {truth.shape} but the image grid is {predicted.shape}")
    typed = lesion_types(predicted, truth, connectivity=connectivity, min_size=min_size)
    return [FoundInstance(lesion.id, lesion.type, torch.from_numpy(typed.mask(lesion))) for lesion in typed.lesions]


@dataclass(frozen=True)
class InstanceStats(ItemStats):
    """Per-instance figures: the instance's number, type and voxel count, and the figures the explaining
    method reported for it (`base`, None for the shared gradient methods); `as_dict` merges `base` in."""

    instance: int
    instance_type: str
    instance_voxels: int
    base: ItemStats | None = None

    def as_dict(self) -> dict[str, Any]:
        own = {"instance": self.instance, "instance_type": self.instance_type, "instance_voxels": self.instance_voxels}
        return {**({} if self.base is None else self.base.as_dict()), **own}


class InstanceSaliency:
    """Explain every instance (lesion) of one class of one image, each on its own summed-score target.

    "smoothgrad" (noise `noise`, a fraction of channel `reference_channel`'s range, or of each channel's with
    None, or absolute with `relative=False`; `n_samples` draws) and "saliency" (one clean pass) share forward
    passes between instances; another method name or `Explainer` runs once per instance. The target of an
    instance is its summed class `score` ("logit" by default, as in the paper). With `crop=True` each instance
    is computed on a crop of its box plus the network's receptive field (exact, and much smaller for small
    lesions; instances whose crops overlap share one). Instances are the connected components of the
    prediction (`connectivity`, `min_size`, see `find_instances`).

    Args:
        model: a `SegModel` or a network.
        method: "smoothgrad", "saliency", another registered method's name or an `Explainer`.
        n_samples, noise, relative, reference_channel: the shared SmoothGrad's noise.
        aggregation: "mean" (gradient of the summed score) or "max" (strongest gradient over voxel chunks).
        chunk: voxels per chunk for "max" (1 is exact).
        score: the class score summed over the instance ("logit", "probability", ...).
        crop: compute each instance on a crop (shared gradient methods only).
        connectivity, min_size: how instances are found.
    """

    name = "instance_saliency"
    summary = "one explanation per predicted instance (lesion) of a class, shared forward passes (Spagnolo et al.)"

    def __init__(self, model: SegModel | torch.nn.Module, method: str | Explainer = "smoothgrad", *,
                 n_samples: int = 50, noise: float = 0.05, relative: bool = True, reference_channel: int | None = 0,
                 aggregation: Aggregation = "mean", chunk: int = 512, score: Score = "logit", crop: bool = False,
                 connectivity: int | None = None, min_size: int = 1) -> None:
        self.model = as_segmodel(model)
        self.shared = isinstance(method, str) and method in SHARED_METHODS
        if self.shared:
            if aggregation not in ("mean", "max"):
                raise SegxaiError(f"aggregation must be 'mean' or 'max', not {aggregation!r}")
            if int(chunk) < 1:
                raise SegxaiError(f"chunk must be a positive number of voxels, not {chunk}")
            if method == "saliency":
                n_samples, noise = 1, 0.0
            if int(n_samples) < 1:
                raise SegxaiError(f"n_samples must be at least 1, not {n_samples}")
            noise_sigma(torch.zeros(1, 1, 1), noise)  # reject a negative or non-numeric noise now
            self.method, self.explainer = method, None
        else:
            if crop:
                raise SegxaiError("crop=True is for the shared gradient methods (smoothgrad, saliency)")
            from segxai.methods import get_method

            self.explainer = get_method(method, self.model) if isinstance(method, str) else method
            self.method = self.explainer.name
        self.n_samples, self.noise, self.relative = int(n_samples), float(noise), relative
        self.reference_channel, self.aggregation, self.chunk = reference_channel, aggregation, int(chunk)
        self.score, self.crop, self.connectivity, self.min_size = score, crop, connectivity, min_size

    def params(self) -> dict[str, Any]:
        """The settings, recorded in each explanation's stats."""
        if not self.shared:
            return {"method": self.method, "score": self.score, **self.explainer.params()}
        return {"n_samples": self.n_samples, "noise": self.noise, "relative": self.relative,
                "reference_channel": self.reference_channel, "aggregation": self.aggregation, "chunk": self.chunk,
                "score": self.score, "crop": self.crop}

    def explain(self, inputs: torch.Tensor | np.ndarray, target: int, roi: torch.Tensor | np.ndarray | None = None,
                *, reference: np.ndarray | torch.Tensor | None = None, instances: Sequence[FoundInstance] | None = None,
                seed: int = 0, batch_size: int | str = "auto", progress: bool = True) -> Explanations:
        """One `Explanation` per instance of class `target` in the single image `inputs`.

        Args:
            inputs: one image, `(C, *spatial)` (or a batch of one).
            target: the class whose instances are explained.
            roi: where maps may be non-zero (passed on to a per-instance method; shared maps are zeroed outside).
            reference: a reference mask on the image grid: instances are typed TP/FP and missed lesions (FN)
                are explained on their own voxels.
            instances: the instances to explain, instead of finding them.
            seed: seed of every random draw.
            batch_size: inputs per forward pass, or "auto".
            progress: show progress bars.

        Returns:
            `Explanations` keyed by instance number; each member's `items[0]` is its `InstanceStats` and its
            `target_mask` the instance. For the shared methods every member's cost is the shared cost of the call.
        """
        x, batched = self.model.prepare(inputs)
        if batched and x.shape[0] != 1:
            raise SegxaiError("instance saliency takes one image (C, *spatial); loop over a batch yourself")
        if isinstance(target, bool) or not isinstance(target, (int, np.integer)):
            raise SegxaiError(f"the target of instance saliency is a class index, not {type(target).__name__}")
        cls = int(target)
        roi_mask = as_roi(roi, x.shape[2:])
        found = list(instances) if instances is not None else find_instances(
            self.model, x, cls, reference, connectivity=self.connectivity, min_size=self.min_size)
        if not found:
            raise SegxaiError(f"no instance of class {cls} to explain: the model predicts none"
                              + ("" if reference is None else " and the reference has none"))
        if self.shared:
            return self._shared(x, cls, found, roi_mask, int(seed), batch_size, progress)
        explanations = []
        for instance in progress_bar(found, enabled=progress, total=len(found), desc=f"{self.method} instances"):
            region = ClassRegion(cls, instance.mask, score=self.score, reduce="sum")
            explanation = self.explainer.explain(x[0], region, roi_mask, seed=seed, batch_size=batch_size,
                                                 progress=False)
            item = _instance_item(instance, explanation.item(0))
            explanation.stats.update(item.as_dict())
            explanation.items = (item,)
            explanations.append(explanation)
        return Explanations(explanations, [i.index for i in found])

    def _shared(self, x, cls, found, roi, seed, batch_size, progress) -> Explanations:
        """The shared gradient methods: every noisy forward pass serves every instance."""
        sigma = noise_sigma(x, self.noise, relative=self.relative, reference_channel=self.reference_channel)
        batch = min(self.n_samples, resolve_batch_size(batch_size, x, self.model.device))
        settings = (sigma, self.n_samples, batch, seed, self.aggregation, self.chunk, self.score)
        with self.model.measure() as measure:
            groups = _crop_groups(self.model, x, found) if self.crop else []
            if self.crop:
                maps: list[torch.Tensor | None] = [None] * len(found)
                for members, plan in progress_bar(groups, enabled=progress, total=len(groups),
                                                  desc=f"{self.method} crops"):
                    cropped = _accumulate(self.model, x, cls, [found[k].mask for k in members], *settings, plan,
                                          progress=False)
                    for k, values in zip(members, cropped):
                        maps[k] = plan.paste(values)
            else:
                maps = _accumulate(self.model, x, cls, [i.mask for i in found], *settings, None, progress)
        header = {"method": f"instance_{self.method}", "params": self.params(), "seed": seed, "batch_size": batch,
                  "device": str(self.model.device), "roi_voxels": None if roi is None else int(roi.sum()),
                  "crops": len(groups)}
        inputs = x[0].detach().cpu()
        explanations = []
        for values, instance in zip(maps, found):
            values = values.float().cpu() if roi is None else values.float().cpu() * roi.cpu()
            items = (_instance_item(instance, None),)
            explanations.append(Explanation(values, stats_view(header, measure.cost, items, False), inputs, roi,
                                            instance.mask.cpu(), False, measure.cost, items))
        return Explanations(explanations, [i.index for i in found], cost=measure.cost)


def explain_instances(model: SegModel | torch.nn.Module, inputs: torch.Tensor | np.ndarray, cls: int,
                      method: str | Explainer = "smoothgrad", *, reference: np.ndarray | torch.Tensor | None = None,
                      instances: Sequence[FoundInstance] | None = None, roi: torch.Tensor | np.ndarray | None = None,
                      seed: int = 0, batch_size: int | str = "auto", progress: bool = True,
                      **settings: Any) -> Explanations:
    """`InstanceSaliency(model, method, **settings).explain(inputs, cls, roi, ...)` in one call.

    Args:
        model: a `SegModel` or a network.
        inputs: one image `(C, *spatial)`.
        cls: the class whose instances are explained.
        method: see `InstanceSaliency`.
        reference, instances, roi, seed, batch_size, progress: see `InstanceSaliency.explain`.
        **settings: `InstanceSaliency`'s settings (n_samples, noise, aggregation, crop, ...).

    Returns:
        The `Explanations`, keyed by instance number.
    """
    return InstanceSaliency(model, method, **settings).explain(
        inputs, cls, roi, reference=reference, instances=instances, seed=seed, batch_size=batch_size,
        progress=progress)


def _crop_groups(model: SegModel, x: torch.Tensor, found: Sequence[FoundInstance]) -> list[tuple[list[int], CropPlan]]:
    """Instances grouped so that each group is computed on one crop: its instances' box plus the receptive
    field (aligned to the network's stride). Two groups whose crops overlap share one crop, and its forward
    passes, when that costs less than computing them apart (`_crop_cost`)."""
    radius = receptive_field(model, x)
    if radius is None:
        raise SegxaiError("crop=True needs a network with a bounded receptive field; this one sees the whole input "
                          "(global pooling, attention or instance norm), so run with crop=False")
    plan = lambda members: crop_plan(torch.stack([found[k].mask for k in members]).any(0), margin=radius,
                                     multiple=CROP_ALIGNMENT)
    groups = [([k], plan([k])) for k in range(len(found))]
    merged = True
    while merged:
        merged = False
        for i, j in ((i, j) for i in range(len(groups)) for j in range(i + 1, len(groups))):
            (first, a), (second, b) = groups[i], groups[j]
            if not _boxes_overlap(a, b):
                continue
            union = plan(first + second)
            if _crop_cost(union, len(first) + len(second)) <= _crop_cost(a, len(first)) + _crop_cost(b, len(second)):
                groups[i] = (first + second, union)
                del groups[j]
                merged = True
                break
    return groups


def _crop_cost(plan: CropPlan, instances: int) -> float:
    """Relative cost of one noise draw on a crop: one forward pass, plus one backward pass (about twice a
    forward's work) per instance, each in proportion to the crop's voxels."""
    return math.prod(plan.crop_shape) * (1 + BACKWARD_COST * instances)


def _boxes_overlap(a: CropPlan, b: CropPlan) -> bool:
    return all(p.start < q.stop and q.start < p.stop for p, q in zip(a.slices, b.slices))


def _accumulate(model: SegModel, x: torch.Tensor, cls: int, masks: list[torch.Tensor], sigma: torch.Tensor,
                n_samples: int, batch: int, seed: int, aggregation: Aggregation, chunk: int, score: Score,
                plan: CropPlan | None, progress: bool) -> list[torch.Tensor]:
    """Mean over the noise draws of each instance's input gradient, `(C, *spatial)` per mask (on the crop when
    `plan` is given; the draws are made on the full grid, so a crop sees the same noise)."""
    view = (lambda t: t) if plan is None else plan.crop
    clean = view(x)
    targets = [view(m.to(x.device)) for m in masks]
    totals = [torch.zeros_like(clean[0]) for _ in masks]
    draws = _noise(x, sigma, int(n_samples), batch, seed, view)
    steps = -(-int(n_samples) // batch)
    for eps in progress_bar(draws, enabled=progress, total=steps, desc="instance gradients"):
        noisy = (clean + eps).detach().requires_grad_(True)
        with torch.enable_grad():
            output = model(noisy)
            for k, mask in enumerate(targets):
                last = k == len(targets) - 1
                totals[k] += _instance_gradient(output, noisy, cls, mask, aggregation, chunk, score, last).sum(0)
    return [total / int(n_samples) for total in totals]


def _instance_gradient(output, noisy: torch.Tensor, cls: int, mask: torch.Tensor, aggregation: Aggregation,
                       chunk: int, score: Score, last: bool) -> torch.Tensor:
    """Per-draw gradient `(B, C, *spatial)` of one instance: of its summed score ("mean"), or the signed
    largest-magnitude gradient over chunks of its voxels ("max")."""
    parts = [mask] if aggregation == "mean" else list(_chunks(mask, chunk))
    best = None
    for j, part in enumerate(parts):
        scores = evaluate(ClassRegion(cls, part, score=score, reduce="sum"), output)
        retain = not (last and j == len(parts) - 1)
        (grad,) = torch.autograd.grad(scores.sum(), noisy, retain_graph=retain)
        best = grad if best is None else torch.where(grad.abs() > best.abs(), grad, best)
    return best


def _chunks(mask: torch.Tensor, size: int) -> Iterator[torch.Tensor]:
    """The voxels of `mask` in scan order, `size` at a time, each as a mask."""
    where = mask.flatten().nonzero().flatten()
    for start in range(0, len(where), size):
        part = torch.zeros(mask.numel(), dtype=torch.bool, device=mask.device)
        part[where[start:start + size]] = True
        yield part.reshape(mask.shape)


def _noise(x: torch.Tensor, sigma: torch.Tensor, n_samples: int, batch: int, seed: int,
           view: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[torch.Tensor]:
    """`n_samples` Gaussian draws of `x`'s shape scaled by `sigma`, in batches, from a generator seeded by
    `seed`; drawn one by one on the CPU, so the same seed gives the same draws for any batch size and device,
    and cut to `view` (a crop) before they go to the device."""
    generator = torch.Generator().manual_seed(int(seed))
    for start in range(0, n_samples, batch):
        count = min(batch, n_samples - start)
        eps = torch.cat([torch.randn(x.shape, generator=generator) for _ in range(count)])
        yield view(eps).to(x.device, x.dtype) * sigma


def _instance_item(instance: FoundInstance, base: ItemStats | None) -> InstanceStats:
    return InstanceStats(instance.index, instance.kind, int(instance.mask.sum()), base)
