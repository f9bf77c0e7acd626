"""Models: `load(path)` for every model users have (segxai checkpoints, nnU-Net v2 folders, MONAI bundles,
TorchScript), the reference U-Net presets, checkpoints that carry their own configuration, and the trainer."""
from __future__ import annotations

from segxai.lazy import lazy_exports

_LAZY_ATTRIBUTES = {
    "PRESETS": "segxai.models.presets",
    "network_config": "segxai.models.presets",
    "build_network": "segxai.models.presets",
    "load_checkpoint": "segxai.models.checkpoint",
    "save_checkpoint": "segxai.models.checkpoint",
    "load": "segxai.models.loading",
    "model_kind": "segxai.models.loading",
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _LAZY_ATTRIBUTES, {"presets", "checkpoint", "train", "nnunet", "bundle", "torchscript", "tiling"})
