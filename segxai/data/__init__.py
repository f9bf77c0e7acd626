"""Data for trying and testing segxai: synthetic phantoms and readers for the shared real samples.

Attributes load lazily, so `import segxai.data` stays cheap and each part only imports what it needs.
"""
from __future__ import annotations

from segxai.lazy import lazy_exports

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

__getattr__, __dir__, __all__ = lazy_exports(__name__, _LAZY_ATTRIBUTES)
