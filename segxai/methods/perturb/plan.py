"""How one item is computed: the clean reference, the reach and crop, frozen normalisation and incremental
inference, decided once per item and shared by every perturbation method (and CausalBlocks' two stages).

    plan = prepare(model, item, target, roi, outside=..., crop=..., norm=..., incremental=...)
    with plan.active():
        ... engine.run(model, plan.ref, regions, fill, estimator, roi, plan.scorer, context, desc)
    figures = plan.figures(perturbations, context)   # measures frozen norm's deviation when it is on
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, replace
from typing import Any, Literal

import torch

from segxai.errors import SegxaiError
from segxai.methods.base import Context
from segxai.methods.perturb import engine, frozen_norm, incremental
from segxai.model import SegModel
from segxai.targets import Target, evaluate

Incremental = Literal["auto", "off"]


@dataclass
class ItemPlan:
    """The reference, the reachable part of the ROI, the crop and the scorer of one item, with the recorded
    norm statistics (None for exact norms), how incremental inference went (`incremental`: "on",
    "off" or "off: <why>") and, with frozen norms, whether the scores carry the first-order correction for the
    statistics' change (`correction`: "first-order" or "off: <why>")."""

    model: SegModel
    ref: engine.Reference
    reachable: torch.Tensor | None
    crop: engine.Crop | None
    scorer: engine.Scorer
    statistics: frozen_norm.Statistics | None
    norm: str
    incremental: str
    correction: str | None = None

    def active(self):
        """The context the perturbed passes run in (frozen statistics when norm="frozen")."""
        return frozen_norm.frozen(self.model, self.statistics) if self.statistics is not None else nullcontext()

    def figures(self, perturbations: engine.Perturbations, context: Context) -> dict[str, Any]:
        """The plan's fields of `PerturbationStats`; with frozen norms, scores a few seeded `perturbations`
        (drawn from the context's generator) with the exact network and with the plan's scorer."""
        found: dict[str, Any] = {"cropped": self.crop is not None, "norm": self.norm,
                                 "incremental": self.incremental, "norm_correction": self.correction}
        if self.crop is not None:
            found.update(receptive_field=tuple(self.crop.stats["receptive_field"]),
                         crop_shape=tuple(self.crop.stats["crop_shape"]))
        if self.statistics is not None and len(perturbations):
            indices = frozen_norm.check_indices(len(perturbations), context.generator)
            inputs = torch.cat([perturbations.batch(i, i + 1).inputs for i in indices])
            with torch.no_grad():
                exact = evaluate(self.ref.target, self.model(inputs))
                with self.active():
                    approximate = self.scorer(inputs)
            found.update(frozen_norm.deviation(exact, approximate, self.ref.score).figures())
        return found


def prepare(model: SegModel, item: torch.Tensor, target: Target, roi: torch.Tensor | None, *,
            outside: engine.Outside, crop: Literal["auto", "none"], norm: frozen_norm.Norm,
            incremental_mode: Incremental) -> ItemPlan:
    """Plan one `(1, C, *spatial)` item: run the clean pass (recording norm statistics for norm="frozen", and
    the score's gradient with respect to them for the first-order correction), then, with those statistics in
    force, find the reach, the crop and, for incremental="auto", a network that recomputes only what each
    perturbation changes (falling back to the crop scorer when unsupported)."""
    check_incremental(incremental_mode)
    with frozen_norm.recorder(model, norm) as statistics:
        ref = engine.reference(model, item, target, roi, outside)
    state = norm
    if statistics is not None and not statistics.layers:
        statistics, state = None, "frozen (no layer to freeze)"  # the network is exact as it is
    fix, corrected = (None, None) if statistics is None else frozen_norm.correction(
        model, ref.x, ref.target, statistics, ref.output.num_channels)
    if fix is not None and fix.box is not None:
        ref = replace(ref, target=frozen_norm.CorrectedTarget(ref.target, fix))
    with frozen_norm.frozen(model, statistics):
        # through the statistics' change every region reaches the target, so none is skipped
        reachable = roi if fix is not None else engine.reach(model, ref, roi)
        planned = engine.plan_crop(model, ref, reachable, crop, whole_reach=fix is not None)
        scorer, how = engine.crop_scorer(model, ref, planned), "off"
        if incremental_mode == "auto":
            network, how = incremental.build(model, ref, statistics)
            scorer = network.scorer() if network is not None else scorer
        if fix is not None:
            scorer = frozen_norm.corrected(scorer, fix, ref.x)
    return ItemPlan(model, ref, reachable, planned, scorer, statistics, state, how, corrected)


def check_incremental(mode: str) -> None:
    if mode not in ("auto", "off"):
        raise SegxaiError(f"incremental must be 'auto' or 'off', not {mode!r}")
