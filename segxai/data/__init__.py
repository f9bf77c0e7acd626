"""Data for trying and testing segxai: synthetic phantoms and readers for the shared real samples.

Attributes load lazily, so `import segxai.data` stays cheap and each part only imports what it needs.
"""
from __future__ import annotations

import importlib
from typing import Any

_LAZY_ATTRIBUTES = {
    "Phantom": "segxai.data.phantoms",
    "abdomen_phantom": "segxai.data.phantoms",
    "brain_phantom": "segxai.data.phantoms",
    "phantom_dataset": "segxai.data.phantoms",
    "LabelledImage": "segxai.data.shared",
    "shared_data_dir": "segxai.data.shared",
    "require_shared": "segxai.data.shared",
    "load_totalsegmentator": "segxai.data.shared",
    "load_brats_example": "segxai.data.shared",
    "load_endotect": "segxai.data.shared",
    "load_nuclei": "segxai.data.shared",
}

__all__ = sorted(_LAZY_ATTRIBUTES)


def __getattr__(name: str) -> Any:
    if name in _LAZY_ATTRIBUTES:
        return getattr(importlib.import_module(_LAZY_ATTRIBUTES[name]), name)
    raise AttributeError(f"module 'segxai.data' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
