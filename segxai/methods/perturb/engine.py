"""The one batched perturbation engine: every "perturb and score" in segxai runs through `scored`.

A perturbation is a change of the input (regions x fill for the explanation methods, masked or replaced inputs
for the faithfulness curves and the context experiment) or of a layer's output inside the network (component
effects): a `Batch` holds both, and `scored` runs batches to the memory budget of the `Context`, with progress,
passes counted by `SegModel`, and, for effects, the clean input scored in the same batch (`clean=`) so that a
perturbation without effect gives exactly zero whatever float kernels the batch size selects.

The cost of a perturbation explanation is (number of perturbed passes) x (cost of one pass). The engine cuts
the first by generating only regions that touch the ROI within one receptive field (measured by a gradient
probe) of the voxels the target reads, and the second by running the network on a crop: those voxels grown by
the receptive field, where the target's outputs are exact. When the receptive field is global (instance norm,
attention) the full input is used.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np
import torch
from torch import nn

from segxai.errors import SegxaiError
from segxai.methods.base import Context, resolve_batch_size
from segxai.methods.perturb.estimators import Estimator
from segxai.methods.perturb.fills import Fill
from segxai.methods.perturb.regions import Regions
from segxai.model import SegModel, SegOutput
from segxai.progress import progress_bar
from segxai.roi import CropPlan, crop_plan, receptive_field
from segxai.targets import Target, evaluate

Outside = Literal["keep", "zero"]
# Crops start and end on multiples of this, so strided layers (U-Nets down-sample by up to 16) keep their phase.
CROP_ALIGNMENT = 16
# A crop saves little when it keeps most of the input; then the full input is used.
MIN_CROP_SAVING = 0.8


@dataclass
class Reference:
    """The unperturbed input and what the network made of it: the bound target and its score."""

    x: torch.Tensor
    output: SegOutput
    target: Target
    score: torch.Tensor


@dataclass
class Crop:
    """Where the network runs (`outer`) and the exact part of its output that is used (`inner`)."""

    outer: CropPlan
    inner: CropPlan
    target: Target | None
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def inner_in_outer(self) -> tuple[slice, ...]:
        return tuple(slice(i.start - o.start, i.stop - o.start) for i, o in zip(self.inner.slices, self.outer.slices))


def reference(model: SegModel, x: torch.Tensor, target: Target, roi: torch.Tensor | None, outside: Outside) -> Reference:
    """Run the clean input once (blanked outside the ROI when `outside="zero"`) and bind the target to it."""
    if outside not in ("keep", "zero"):
        raise SegxaiError(f"outside must be 'keep' or 'zero', not {outside!r}")
    if outside == "zero" and roi is not None:
        x = x * roi.to(x.device)
    with torch.no_grad():
        output = model(x)
        bound = target.bind(output)
        score = evaluate(bound, output)
    return Reference(x, output, bound, score)


def reach(model: SegModel, ref: Reference, roi: torch.Tensor | None) -> torch.Tensor | None:
    """The part of the ROI whose perturbation can change the target: the ROI within one receptive field of
    the voxels the target reads. Regions elsewhere have exactly no effect, so they are not evaluated.

    Returns the ROI itself when nothing is known (no ROI, a target that reads any voxel, a global receptive
    field), and raises when the ROI lies wholly out of the target's reach."""
    if roi is None:
        return None
    shape = tuple(ref.x.shape[2:])
    support = ref.target.support(shape)
    radius = None if support is None else receptive_field(model, ref.x)
    if radius is None:
        return roi
    zone = torch.zeros(shape, dtype=torch.bool)
    zone[crop_plan(support, margin=radius).slices] = True
    reachable = roi.cpu() & zone
    if not reachable.any():
        raise SegxaiError("the ROI lies farther than the network's receptive field from the target's voxels, so "
                          "no perturbation inside it can change the target; choose an ROI near the target")
    return reachable.to(roi.device)


def plan_crop(model: SegModel, ref: Reference, roi: torch.Tensor | None, crop: Literal["auto", "none"], *,
              whole_reach: bool = False) -> Crop | None:
    """The crop to compute on, or None for the full input (no ROI, crop="none", a global receptive field,
    a target that reads the whole grid, or too small a saving).

    A target that can be scored on a crop (`Target.crop`) needs only its own voxels plus one receptive field;
    otherwise (and with `whole_reach`, when every activation a perturbation of the ROI changes must lie in the
    crop) the output is pasted back over the ROI grown by one receptive field, computed on that box grown by
    one more."""
    if crop not in ("auto", "none"):
        raise SegxaiError(f"crop must be 'auto' or 'none', not {crop!r}")
    if crop == "none" or roi is None:
        return None
    shape = tuple(ref.x.shape[2:])
    support = ref.target.support(shape)
    if support is None:
        return None
    radius = receptive_field(model, ref.x)
    if radius is None:
        return None
    inner = crop_plan(support, margin=0)
    target = None if whole_reach else ref.target.crop(inner.slices)
    if target is None:
        region = roi.cpu() | support
        inner = crop_plan(region, margin=radius)
        outer = crop_plan(region, margin=tuple(2 * r for r in radius), multiple=CROP_ALIGNMENT)
    else:
        outer = crop_plan(support, margin=radius, multiple=CROP_ALIGNMENT)
    kept = torch.tensor(outer.crop_shape).prod() / torch.tensor(shape).prod()
    misaligned = any(c % CROP_ALIGNMENT and c != n for c, n in zip(outer.crop_shape, shape))
    if outer.full or kept > MIN_CROP_SAVING or misaligned:
        return None
    return Crop(outer, inner, target, {"receptive_field": list(radius), "crop_shape": list(outer.crop_shape)})


# ------------------------------------------------------------------------------------------ the batched loop
Edit = Callable[[torch.Tensor], torch.Tensor]
Scorer = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class Batch:
    """One batch of perturbations: the network's `inputs` `(n, C, *spatial)` and `edits`, for a dotted layer
    name, a function that returns that layer's output `(n, ...)` changed for this batch (an intervention inside
    the network, applied by a forward hook). `info` rides along to whoever consumes the scores."""

    inputs: torch.Tensor
    edits: Mapping[str, Edit] = field(default_factory=dict)
    info: Any = None


class Perturbations(Protocol):
    """What the engine scores: `len()` perturbations, rendered a batch at a time by `batch(start, stop)`."""

    def __len__(self) -> int: ...

    def batch(self, start: int, stop: int) -> Batch: ...


class Inputs:
    """Perturbations of the input given one at a time: `make(i)` is the `(C, *spatial)` input of perturbation i."""

    def __init__(self, count: int, make: Callable[[int], torch.Tensor]) -> None:
        self.count, self.make = int(count), make

    def __len__(self) -> int:
        return self.count

    def batch(self, start: int, stop: int) -> Batch:
        return Batch(torch.stack([self.make(i) for i in range(start, stop)]))


class MaskedFill:
    """Regions x fill: sample i is `x` with its mask (times the ROI) replaced by the fill; `info` carries the
    masks and the regions' features for the estimator."""

    def __init__(self, x: torch.Tensor, regions: Regions, fill: Fill, inside: torch.Tensor | None) -> None:
        self.x, self.regions, self.fill, self.inside = x, regions, fill, inside

    def __len__(self) -> int:
        return len(self.regions)

    def batch(self, start: int, stop: int) -> Batch:
        masks = self.regions.masks(start, stop).to(self.x.device)
        if self.inside is not None:
            masks = masks * self.inside
        # lerp is one pass and exact at the ends: weight 0 keeps x, weight 1 gives the fill
        inputs = torch.lerp(self.x, self.fill(start, stop - start), masks[:, None])
        return Batch(inputs, info=(masks, self.regions.features(start, stop)))


def context(model: SegModel, x: torch.Tensor, *, seed: int = 0, batch_size: int | str = "auto",
            progress: bool = False) -> Context:
    """The `Context` a metric runs the engine with: a generator seeded with `seed`, batches sized for `x`.

    Args:
        model: the model that will run the batches (its device sizes "auto" batches).
        x: one `(1, C, *spatial)` input of the size the batches will hold.
        seed: seeds every random draw.
        batch_size: a positive int or "auto" (a memory budget).
        progress: show a progress bar per loop.
    Returns:
        The context.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise SegxaiError(f"seed must be an int, not {seed!r}")
    generator = torch.Generator().manual_seed(int(seed))
    return Context(generator, resolve_batch_size(batch_size, x, model.device), bool(progress))


def target_scorer(model: SegModel, target: Target) -> Scorer:
    """Score a batch of inputs with a bound target on the full input."""
    return lambda inputs: evaluate(target, model(inputs))


def scored(model: SegModel, perturbations: Perturbations, scorer: Scorer, context: Context, *,
           clean: torch.Tensor | None = None, desc: str = "") -> Iterator[tuple[Batch, torch.Tensor]]:
    """Score every perturbation, `context.batch_size` inputs per forward pass; yields each batch and its scores.

    With `clean` (the unperturbed `(1, C, *spatial)` input) the scores are effects: each batch also carries
    the clean input, as its first item and untouched by the edits, and yields `score - clean score`. Both come
    from one batch, so a perturbation without effect gives exactly 0 (batches of different sizes may run
    different float kernels). With `batch_size` 1 the clean input is scored once on its own instead (every
    batch then has that composition).

    Args:
        model: runs the batches; its counters count every item.
        perturbations: what to score.
        scorer: a batch of inputs -> its scores `(n, ...)` (it calls the model, e.g. `target_scorer`).
        context: batch size and progress.
        clean: the unperturbed input, for effects.
        desc: the progress bar's label.
    Yields:
        `(batch, scores)` in order.
    """
    total = len(perturbations)
    if total == 0:
        return
    paired = clean is not None and context.batch_size > 1
    step = context.batch_size - 1 if paired else context.batch_size
    with torch.no_grad():
        alone = scorer(clean) if clean is not None and not paired else None
    starts = range(0, total, step)
    for start in progress_bar(starts, enabled=context.progress, total=len(starts), desc=desc):
        batch = perturbations.batch(start, min(start + step, total))
        inputs, edits = batch.inputs, dict(batch.edits)
        if paired:
            inputs = torch.cat([clean.to(inputs), inputs])
            edits = {name: _past_first(edit) for name, edit in edits.items()}
        with torch.no_grad(), _edited(model, edits):
            scores = scorer(inputs)
        if paired:
            scores = scores[1:] - scores[:1]
        elif alone is not None:
            scores = scores - alone
        yield batch, scores


def score_all(model: SegModel, perturbations: Perturbations, scorer: Scorer, context: Context, *,
              clean: torch.Tensor | None = None, desc: str = "") -> torch.Tensor:
    """Every perturbation's score (or effect, with `clean`) in order, as float64 on the CPU (see `scored`)."""
    if len(perturbations) == 0:
        return torch.zeros(0, dtype=torch.float64)
    parts = [scores.detach().double().cpu() for _, scores in
             scored(model, perturbations, scorer, context, clean=clean, desc=desc)]
    return torch.cat(parts)


def _past_first(edit: Edit) -> Edit:
    """The edit applied to every item but the first (the clean input riding in the batch)."""
    return lambda output: torch.cat([output[:1], edit(output[1:])])


@contextmanager
def _edited(model: SegModel, edits: Mapping[str, Edit]) -> Iterator[None]:
    """Forward hooks that replace the named layers' outputs by their edits, for one batch."""
    if not edits:
        yield
        return
    if not isinstance(model.net, nn.Module):
        raise SegxaiError("interventions inside the network need it as a torch.nn.Module")
    modules = dict(model.net.named_modules())
    missing = [name for name in edits if name not in modules]
    if missing:
        raise SegxaiError(f"the network has no layer {', '.join(map(repr, missing))}")
    handles = [modules[name].register_forward_hook(lambda _m, _i, output, edit=edit: edit(output))
               for name, edit in edits.items()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


# ------------------------------------------------------------------------------------ explanation methods
def run(
    model: SegModel,
    ref: Reference,
    regions: Regions,
    fill: Fill,
    estimator: Estimator,
    roi: torch.Tensor | None,
    scorer: Scorer,
    context: Context,
    desc: str,
) -> torch.Tensor:
    """Score every region's perturbed input in batches with `scorer` (e.g. `crop_scorer`) and feed the
    estimator (effects against the clean input of the same batch for an estimator marked `relative`); returns
    its `(*spatial)` map, zero outside `roi`."""
    device = ref.x.device
    inside = None if roi is None else roi.to(device).float()
    if len(regions) == 0:
        raise SegxaiError("no perturbation region touches the ROI; use a smaller window or a larger ROI")
    clean = ref.x if estimator.relative else None
    batches = scored(model, MaskedFill(ref.x, regions, fill, inside), scorer, context, clean=clean, desc=desc)
    for batch, scores in batches:
        masks, features = batch.info
        estimator.update(masks, scores, features)
    attribution = estimator.result().to(device)
    return attribution if inside is None else attribution * inside


def crop_scorer(model: SegModel, ref: Reference, crop: Crop | None) -> Scorer:
    """Score a batch of full-size inputs with the reference's target, running the network on `crop` when given
    (pasting the exact part of its output back over the clean output when the target cannot be cropped)."""
    if crop is None:
        return target_scorer(model, ref.target)

    def score(perturbed: torch.Tensor) -> torch.Tensor:
        logits = model(crop.outer.crop(perturbed)).logits[(..., *crop.inner_in_outer)]
        if crop.target is not None:
            return evaluate(crop.target, SegOutput(logits, ref.output.activation, ref.output.threshold))
        full = ref.output.logits.expand(len(perturbed), *ref.output.logits.shape[1:]).clone()
        full[(..., *crop.inner.slices)] = logits
        return evaluate(ref.target, SegOutput(full, ref.output.activation, ref.output.threshold))

    return score
