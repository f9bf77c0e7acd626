"""Localizer checkpoints, following `segxai.models.checkpoint`: a plain dict read back with `weights_only=True`.

Only the trained part is stored (context, U-Net, FiLM, head) with the config; the frozen text encoder is rebuilt
from its spec (the tiny encoder from its seed, a sentence-transformer from its local folder or package), or
given explicitly when it lives elsewhere on the loading machine.
"""
from __future__ import annotations

from pathlib import Path

import torch

from segxai.models.checkpoint import check_weights, read_payload, write_payload
from segxai.errors import SegxaiError
from segxai.localize.model import Localizer
from segxai.localize.text import TextEncoder, build_encoder

FORMAT = "segxai-localizer-1"


def save_localizer(path: str | Path, localizer: Localizer) -> Path:
    """Write the localizer's trained weights and configuration atomically."""
    state = {k: v for k, v in localizer.state_dict().items() if not k.startswith("encoder.")}
    return write_payload(path, FORMAT, localizer.config, state)


def load_localizer(path: str | Path, encoder: TextEncoder | None = None,
                   device: str | torch.device | None = None) -> Localizer:
    """Read a localizer checkpoint (no pickled code); `encoder` overrides the one its config names."""
    payload = read_payload(path, FORMAT, "a segxai localizer checkpoint", "train one with `segxai localize train`")
    config = payload["config"]
    if not isinstance(config, dict) or not isinstance(config.get("encoder"), dict):
        raise SegxaiError(f"localizer checkpoint {path} has no encoder in its configuration")
    try:
        encoder = encoder or build_encoder(config["encoder"])
        if encoder.spec().get("kind") != config["encoder"].get("kind"):
            raise SegxaiError(f"it was trained with a {config['encoder'].get('kind')} text encoder, "
                              f"not {encoder.spec().get('kind')}")
        check_weights(_build(encoder, config, "meta"), payload["state_dict"], ignore="encoder.")
        localizer = _build(encoder, config, "cpu")
    except SegxaiError as error:
        raise SegxaiError(f"localizer checkpoint {path}: {error}") from None
    localizer.load_state_dict(payload["state_dict"], strict=False)
    return localizer.to(device or "cpu").eval()


def _build(encoder: TextEncoder, config: dict, device: str) -> Localizer:
    """The localizer a configuration describes, on `device` ("meta": no memory, to check it first)."""
    try:
        with torch.device(device):
            return Localizer(encoder, config)
    except Exception as error:  # a crafted configuration: missing keys, wrong types or values
        raise SegxaiError(f"its configuration does not make a localizer: {type(error).__name__}: {error}") from None
