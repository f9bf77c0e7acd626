"""segxai: explain medical image segmentation models in 2D and 3D.

The core objects are a model adapter (`SegModel`), targets (`segxai.targets`), regions of interest
(`segxai.roi`) and the `Explanation` every method returns. Attributes are imported lazily so that
`import segxai` stays fast; heavy optional parts (MONAI, matplotlib, DICOM) load on first use.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY_ATTRIBUTES = {
    "SegModel": "segxai.model",
    "SegOutput": "segxai.model",
    "Explanation": "segxai.explanation",
    "SegxaiError": "segxai.errors",
    "Saliency": "segxai.methods",
    "Occlusion": "segxai.methods",
    "RISE": "segxai.methods",
    "LIME": "segxai.methods",
    "IntegratedGradients": "segxai.methods",
    "SmoothGrad": "segxai.methods",
    "GradCAM": "segxai.methods",
    "GradCAMpp": "segxai.methods",
}
_LAZY_MODULES = {"targets", "roi", "io", "data", "methods", "metrics", "report", "train", "errors", "model", "explanation"}

__all__ = sorted(_LAZY_ATTRIBUTES) + sorted(_LAZY_MODULES)


def __getattr__(name: str) -> Any:
    if name in _LAZY_ATTRIBUTES:
        return getattr(importlib.import_module(_LAZY_ATTRIBUTES[name]), name)
    if name in _LAZY_MODULES:
        return importlib.import_module(f"segxai.{name}")
    raise AttributeError(f"module 'segxai' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
