"""Explanation methods. Each shares the one verb `explain(inputs, target, roi=None, seed=..., ...)`."""
from __future__ import annotations

from typing import Any

from segxai.errors import SegxaiError
from segxai.methods.base import Explainer
from segxai.methods.cam import GradCAM, GradCAMpp
from segxai.methods.components import ComponentEffect, ComponentEffects, ComponentReport, ModelComparison, compare_models
from segxai.methods.gradient import Saliency
from segxai.methods.integrated import IntegratedGradients
from segxai.methods.perturb import LIME, RISE, Occlusion
from segxai.methods.perturb.causal_blocks import CausalBlocks
from segxai.methods.smoothgrad import SmoothGrad

METHODS: dict[str, type[Explainer]] = {
    "saliency": Saliency,
    "integrated_gradients": IntegratedGradients,
    "smoothgrad": SmoothGrad,
    "gradcam": GradCAM,
    "gradcampp": GradCAMpp,
    "occlusion": Occlusion,
    "rise": RISE,
    "lime": LIME,
    "causal_blocks": CausalBlocks,
}

__all__ = [
    "CausalBlocks",
    "ComponentEffect",
    "ComponentEffects",
    "ComponentReport",
    "Explainer",
    "GradCAM",
    "GradCAMpp",
    "IntegratedGradients",
    "LIME",
    "METHODS",
    "ModelComparison",
    "Occlusion",
    "RISE",
    "Saliency",
    "SmoothGrad",
    "compare_models",
    "get_method",
]


def get_method(name: str, model: Any, **params: Any) -> Explainer:
    """Build a method by its CLI name, with a clear error listing the known names."""
    if name not in METHODS:
        raise SegxaiError(f"unknown method {name!r}; choose one of {', '.join(sorted(METHODS))}")
    try:
        return METHODS[name](model, **params)
    except TypeError as error:
        raise SegxaiError(f"bad setting for {name}: {error}") from None
