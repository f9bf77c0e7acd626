"""The evaluation suite for one explanation: localisation, faithfulness, sanity, stability, runtime and passes.

Every figure comes from `segxai.metrics`; this module only decides what each is computed against and flattens
the results into one table row. Localisation is judged against the ground-truth mask of the target's class when
the case has one, else against the target's own footprint (`reference` says which).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from segxai.explanation import Explanation
from segxai.metrics import deletion_curve, energy_inside, explanation_overlap, insertion_curve, pointing_game
from segxai.metrics.sanity import cascading_randomization
from segxai.metrics.stability import map_stability
from segxai.model import SegModel
from segxai.pipelines.runs.config import EvaluationConfig
from segxai.targets import Target

Explain = Callable[[torch.Tensor], Explanation]


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
    row.update(_localisation(explanation, truth, settings))
    if settings.faithfulness is not None:
        steps = settings.faithfulness.steps
        row["deletion_auc"] = deletion_curve(model, x, target, explanation, steps=steps).auc
        row["insertion_auc"] = insertion_curve(model, x, target, explanation, steps=steps).auc
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


def _localisation(explanation: Explanation, truth: torch.Tensor | None, settings: EvaluationConfig) -> dict[str, Any]:
    reference, mask = ("ground truth", truth) if truth is not None and bool(truth.any()) else \
        ("target footprint", explanation.target_mask)
    if mask is None or not bool(mask.any()):
        return {"reference": "none"}
    return {"reference": reference,
            **explanation_overlap(explanation, mask, threshold=settings.threshold),
            "pointing_game": pointing_game(explanation, mask, settings.pointing_tolerance),
            "energy_inside": energy_inside(explanation, mask)}
