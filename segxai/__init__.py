"""segxai: explain medical image segmentation models in 2D and 3D.

The core objects are a model adapter (`SegModel`), targets (`segxai.targets`), regions of interest
(`segxai.roi`) and the `Explanation` every method returns. Attributes are imported lazily so that
`import segxai` stays fast; heavy optional parts (MONAI, matplotlib, DICOM) load on first use.
"""
from __future__ import annotations

from segxai.lazy import lazy_exports

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
    "KernelSHAP": "segxai.methods",
    "IntegratedGradients": "segxai.methods",
    "SmoothGrad": "segxai.methods",
    "GradCAM": "segxai.methods",
    "GradCAMpp": "segxai.methods",
    "CausalBlocks": "segxai.methods",
}
_LAZY_MODULES = {
    name: f"segxai.{name}"
    for name in (
        "targets", "roi", "io", "data", "methods", "metrics", "report", "errors", "model", "explanation",
        "localize", "explainseg", "models", "pipelines",
    )
} | {"train": "segxai.models.train", "runs": "segxai.pipelines.runs"}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _LAZY_ATTRIBUTES, _LAZY_MODULES)
