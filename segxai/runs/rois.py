"""ROI providers of a run: `none`, `mask[:MARGIN]` (the case's ground truth of the target's class, grown) and
`prediction[:MARGIN]` (the model's own prediction of that class, grown). Specs are checked in `config`."""
from __future__ import annotations

import torch

from segxai.errors import SegxaiError
from segxai.model import SegModel


def make_roi(spec: str, model: SegModel, x: torch.Tensor, cls: int | None, truth: torch.Tensor | None) -> torch.Tensor | None:
    """The ROI for one case and target (None for `none`)."""
    from segxai.roi import from_mask, from_prediction

    kind, _, margin = spec.partition(":")
    if kind == "none":
        return None
    if cls is None:
        raise SegxaiError(f"ROI {spec!r} needs a target with a class")
    if kind == "mask":
        if truth is None:
            raise SegxaiError(f"ROI {spec!r} needs a mask for the case (dataset.masks)")
        return from_mask(truth, float(margin or 0))
    return from_prediction(model, x, cls, float(margin or 0))
