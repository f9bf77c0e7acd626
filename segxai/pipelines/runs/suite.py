"""The evaluation suite for one explanation: localisation beside its trivial baselines, leakage, faithfulness
beside random and blurred rankings, sanity, stability, runtime and passes.

Every figure comes from `segxai.metrics`; this module only decides what each is computed against and flattens
the results into table rows. Localisation is judged against the ground-truth mask of the target's class when
the case has one, else against the target's own footprint (`reference` says which); the baselines' "ROI" is the
explanation's ROI, else that footprint (what a map gets for free either way).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from segxai.explanation import Explanation
from segxai.metrics import curves_with_baselines, localisation_scores, scores_with_baselines
from segxai.methods.base import target_footprint
from segxai.metrics.sanity import cascading_randomization
from segxai.metrics.stability import map_stability
from segxai.model import SegModel
from segxai.pipelines.runs.config import EvaluationConfig
from segxai.targets import Target

Explain = Callable[[torch.Tensor], Explanation]
LOW_SUPPORTIVE = ("causal_blocks",)  # methods whose negative values mark supporting content (ATE maps)


def evaluate_explanation(
    model: SegModel,
    x: torch.Tensor,
    target: Target,
    explanation: Explanation,
    explain: Explain,
    truth: torch.Tensor | None,
    settings: EvaluationConfig,
    seed: int = 0,
) -> dict[str, Any]:
    """One row of figures for `explanation` of `target` on `x` (`(C, *spatial)`); `explain(inputs)` re-runs
    the same method, target and ROI on other inputs (for the sanity and stability checks)."""
    cost = explanation.cost
    row: dict[str, Any] = {"seconds": cost.seconds, "forward_passes": cost.forward_passes,
                           "backward_passes": cost.backward_passes}
    row.update(_localisation(explanation, truth, settings, lambda: _target_region(model, x, target, explanation)))
    if settings.faithfulness is not None:
        faithfulness = settings.faithfulness
        supportive = "low" if explanation.stats.get("method") in LOW_SUPPORTIVE else "high"
        row.update(curves_with_baselines(model, x, target, explanation, steps=faithfulness.steps,
                                         block=faithfulness.block, sigma=faithfulness.sigma, supportive=supportive,
                                         seed=seed))
    if settings.sanity is not None:
        sanity = cascading_randomization(model, lambda: explain(x), explanation, steps=settings.sanity.steps,
                                         max_correlation=settings.sanity.max_correlation, seed=seed)
        row.update(sanity_spearman=sanity.final["spearman"], sanity_ssim=sanity.final["ssim"],
                   sanity_pass=sanity.passed)
    if settings.stability is not None:
        stability = settings.stability
        found = map_stability(explain, x, explanation, noise=stability.noise, samples=stability.samples, seed=seed)
        row.update({f"stability_{key}": value for key, value in found.items()})
    return row


def _localisation(explanation: Explanation, truth: torch.Tensor | None, settings: EvaluationConfig,
                  target_region: Callable[[], torch.Tensor | None]) -> dict[str, Any]:
    reference, mask = ("ground truth", truth) if truth is not None and bool(truth.any()) else \
        ("target footprint", explanation.target_mask)
    if mask is None or not bool(mask.any()):
        return {"reference": "none"}
    options = {"threshold": settings.threshold, "tolerance": settings.pointing_tolerance}
    if settings.baselines is None:
        return {"reference": reference, **localisation_scores(explanation, mask, **options)}
    free = explanation.roi if explanation.roi is not None else target_region()
    return {"reference": reference, **scores_with_baselines(explanation, mask, mask if free is None else free,
                                                            sigma=settings.baselines.sigma, **options)}


def _target_region(model: SegModel, x: torch.Tensor, target: Target, explanation: Explanation) -> torch.Tensor | None:
    """The voxels the target scores (its footprint on the clean prediction), whichever method explained it."""
    if explanation.target_mask is not None:
        return explanation.target_mask
    batch, _ = model.prepare(x)
    with torch.no_grad():
        footprint = target_footprint(target.bind(model(batch)), batch)
    return None if footprint is None else footprint[0]
