"""Explanation methods. Each shares the one verb `explain(inputs, target, roi=None, *, seed=0, ...)`.

`METHODS` is the one registry of map methods (name -> class), read by the CLI, the YAML runs and the docs;
each class carries its `name` and a one-line `summary` (`describe_methods`).
"""
from __future__ import annotations

from typing import Any

from segxai.errors import SegxaiError
from segxai.methods.base import Explainer
from segxai.methods.cam import GradCAM, GradCAMpp
from segxai.methods.components import (ComponentEffect, ComponentEffects, ComponentReport, ComponentReports,
                                       ModelComparison, compare_models)
from segxai.methods.gradient import Saliency
from segxai.methods.instance_saliency import InstanceSaliency
from segxai.methods.integrated import IntegratedGradients
from segxai.methods.perturb import LIME, RISE, KernelSHAP, Occlusion
from segxai.methods.perturb.causal_blocks import CausalBlocks
from segxai.methods.smoothgrad import SmoothGrad

METHODS: dict[str, type[Explainer]] = {
    method.name: method
    for method in (Saliency, IntegratedGradients, SmoothGrad, GradCAM, GradCAMpp, Occlusion, RISE, LIME, KernelSHAP,
                   CausalBlocks)
}

__all__ = [
    "CausalBlocks",
    "ComponentEffect",
    "ComponentEffects",
    "ComponentReport",
    "ComponentReports",
    "Explainer",
    "GradCAM",
    "GradCAMpp",
    "InstanceSaliency",
    "IntegratedGradients",
    "KernelSHAP",
    "LIME",
    "METHODS",
    "ModelComparison",
    "Occlusion",
    "RISE",
    "Saliency",
    "SmoothGrad",
    "compare_models",
    "describe_methods",
    "get_method",
]


def describe_methods() -> dict[str, str]:
    """The registered methods' names and one-line descriptions, in registry order (for help texts and docs)."""
    return {name: method.summary for name, method in METHODS.items()}


def get_method(name: str, model: Any, **params: Any) -> Explainer:
    """Build a registered method by name.

    Args:
        name: a key of `METHODS`.
        model: a `SegModel` or a network.
        **params: the method's settings.

    Returns:
        The explainer; a `SegxaiError` lists the known names for an unknown one, or names a bad setting.
    """
    if name not in METHODS:
        raise SegxaiError(f"unknown method {name!r}; choose one of {', '.join(sorted(METHODS))}")
    try:
        return METHODS[name](model, **params)
    except (TypeError, ValueError) as error:  # e.g. int('abc') of a setting given as text
        if isinstance(error, SegxaiError):
            raise
        given = ", ".join(f"{key}={value!r}" for key, value in params.items())
        raise SegxaiError(f"bad setting for {name} ({given}): {error}") from None
