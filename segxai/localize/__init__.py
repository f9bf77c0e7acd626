"""Text-prompted ROI localisation (the vision-language half of XAI-CLIP): "liver" in, region of interest out.

`train_localizer` fits a `Localizer` (frozen text encoder + CoOp context + FiLM-conditioned MONAI U-Net) on label
maps and organ names; `Localizer.predict(image, prompt)` gives a probability map and `segxai.roi.from_text` the ROI.
Attributes load lazily, so importing this package does not import MONAI or a text model.
"""
from __future__ import annotations

from segxai.lazy import lazy_exports

_LAZY_ATTRIBUTES = {
    "Localizer": "segxai.localize.model",
    "TextEncoder": "segxai.localize.text",
    "TinyTextEncoder": "segxai.localize.text",
    "SentenceTransformerEncoder": "segxai.localize.text",
    "build_encoder": "segxai.localize.text",
    "train_localizer": "segxai.localize.training",
    "localizer_dice": "segxai.localize.training",
    "default_prompt": "segxai.localize.training",
    "save_localizer": "segxai.localize.store",
    "load_localizer": "segxai.localize.store",
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _LAZY_ATTRIBUTES)
