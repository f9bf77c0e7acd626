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
from typing import Callable, Iterator, Literal, Sequence

import numpy as np
import torch

from segxai.errors import SegxaiError
from segxai.explanation import Explanation
from segxai.instances import label_instances, lesion_types
from segxai.methods.base import Explainer, as_segmodel, resolve_batch_size
from segxai.methods.perturb.engine import CROP_ALIGNMENT
from segxai.methods.smoothgrad import noise_sigma
from segxai.model import SegModel
from segxai.progress import progress_bar
from segxai.roi import CropPlan, crop_plan, receptive_field
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


def find_instances(model: SegModel, x: torch.Tensor, cls: int, reference: np.ndarray | torch.Tensor | None = None,
                   *, connectivity: int | None = None, min_size: int = 1) -> list[FoundInstance]:
    """The instances of class `cls` predicted on the single-image batch `x`; with a `reference` mask, typed by
    `segxai.metrics.lesion_types` (TP/FP), followed by the reference lesions the model missed (FN)."""
    with torch.no_grad():
        predicted = model(x).class_mask(cls)[0].cpu().numpy()
    if reference is None:
        labels = label_instances(predicted, connectivity=connectivity, min_size=min_size)
        return [FoundInstance(i, "predicted", torch.from_numpy(labels == i)) for i in range(1, int(labels.max()) + 1)]
    truth = reference.detach().cpu().numpy() if isinstance(reference, torch.Tensor) else np.asarray(reference)
    if truth.shape != predicted.shape:
        raise SegxaiError(f"the reference mask has shape {truth.shape} but the image grid is {predicted.shape}")
    typed = lesion_types(predicted, truth.astype(bool), connectivity=connectivity, min_size=min_size)
    return [FoundInstance(lesion.id, lesion.type, torch.from_numpy(typed.mask(lesion))) for lesion in typed.lesions]


def explain_instances(
    model: SegModel | torch.nn.Module,
    inputs: torch.Tensor | np.ndarray,
    cls: int,
    method: str | Explainer = "smoothgrad",
    *,
    reference: np.ndarray | torch.Tensor | None = None,
    instances: Sequence[FoundInstance] | None = None,
    n_samples: int = 50,
    noise: float = 0.05,
    relative: bool = True,
    reference_channel: int | None = 0,
    aggregation: Aggregation = "mean",
    chunk: int = 512,
    score: Score = "logit",
    crop: bool = False,
    connectivity: int | None = None,
    min_size: int = 1,
    seed: int = 0,
    batch_size: int | str = "auto",
    progress: bool = True,
) -> list[Explanation]:
    """One `Explanation` per instance of class `cls` in the single image `inputs` (`(C, *spatial)`).

    `method` "smoothgrad" (noise `noise`, a fraction of channel `reference_channel`'s range, or of each
    channel's with None, or absolute with `relative=False`; `n_samples` draws) or "saliency" (one clean pass)
    share forward passes between instances; another method name or `Explainer` runs per instance. The target is
    the instance's summed class `score` ("logit" by default, as in the paper). With `crop=True` each instance is
    computed on a crop of its box plus the network's receptive field (exact, and much smaller for small lesions;
    instances whose crops overlap share one).
    Each explanation's stats carry the instance number, type and voxel count; its `target_mask` is the instance.
    """
    model = as_segmodel(model)
    x, batched = model.prepare(inputs)
    if batched and x.shape[0] != 1:
        raise SegxaiError("explain_instances takes one image (C, *spatial); loop over a batch yourself")
    found = list(instances) if instances is not None else find_instances(
        model, x, cls, reference, connectivity=connectivity, min_size=min_size)
    if not found:
        raise SegxaiError(f"no instance of class {cls} to explain: the model predicts none"
                          + ("" if reference is None else " and the reference has none"))
    if isinstance(method, str) and method in SHARED_METHODS:
        return _shared_gradients(model, x, cls, found, method, n_samples, noise, relative, reference_channel,
                                 aggregation, chunk, score, crop, seed, batch_size, progress)
    if crop:
        raise SegxaiError("crop=True is for the shared gradient methods (smoothgrad, saliency)")
    from segxai.methods import get_method

    explainer = get_method(method, model) if isinstance(method, str) else method
    explanations = []
    for instance in progress_bar(found, enabled=progress, total=len(found), desc=f"{explainer.name} instances"):
        target = ClassRegion(cls, instance.mask, score=score, reduce="sum")
        explanation = explainer.explain(x[0], target, seed=seed, batch_size=batch_size, progress=False)
        explanation.stats.update(_instance_stats(instance))
        explanations.append(explanation)
    return explanations


def _shared_gradients(model, x, cls, found, method, n_samples, noise, relative, reference_channel, aggregation,
                      chunk, score, crop, seed, batch_size, progress) -> list[Explanation]:
    if aggregation not in ("mean", "max"):
        raise SegxaiError(f"aggregation must be 'mean' or 'max', not {aggregation!r}")
    if int(chunk) < 1:
        raise SegxaiError(f"chunk must be a positive number of voxels, not {chunk}")
    if method == "saliency":
        n_samples, noise = 1, 0.0
    if int(n_samples) < 1:
        raise SegxaiError(f"n_samples must be at least 1, not {n_samples}")
    sigma = noise_sigma(x, noise, relative=relative, reference_channel=reference_channel)
    batch = min(int(n_samples), resolve_batch_size(batch_size, x, model.device))
    params = {"n_samples": int(n_samples), "noise": float(noise), "relative": relative,
              "reference_channel": reference_channel, "aggregation": aggregation, "chunk": int(chunk),
              "score": score, "crop": crop}
    with model.measure() as cost:
        groups = _crop_groups(model, x, found) if crop else []
        if crop:
            maps: list[torch.Tensor | None] = [None] * len(found)
            for members, plan in progress_bar(groups, enabled=progress, total=len(groups), desc=f"{method} crops"):
                cropped = _accumulate(model, x, cls, [found[k].mask for k in members], sigma, n_samples, batch,
                                      seed, aggregation, chunk, score, plan, progress=False)
                for k, values in zip(members, cropped):
                    maps[k] = plan.paste(values)
        else:
            maps = _accumulate(model, x, cls, [i.mask for i in found], sigma, n_samples, batch, seed, aggregation,
                               chunk, score, None, progress)
    shared = {"method": f"instance_{method}", "params": params, "seed": int(seed), **cost.as_stats(),
              "batch_size": batch, "device": str(model.device), "crops": len(groups)}
    inputs = x[0].detach().cpu()
    return [Explanation(m.float().cpu(), {**shared, **_instance_stats(i)}, inputs, None, i.mask.cpu(), False)
            for m, i in zip(maps, found)]


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


def _instance_stats(instance: FoundInstance) -> dict[str, object]:
    return {"instance": instance.index, "instance_type": instance.kind, "instance_voxels": int(instance.mask.sum())}
