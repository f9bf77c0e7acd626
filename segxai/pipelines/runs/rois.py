"""ROI providers of a run: `none`, `mask[:MARGIN]` (the case's ground truth of the target's class, grown) and
`prediction[:MARGIN]` (the model's own prediction of that class, grown). Specs are checked in `config`."""
from __future__ import annotations

import numpy as np
import torch

from segxai.errors import SegxaiError


def make_roi(spec: str, cls: int | None, truth: torch.Tensor | None, prediction: np.ndarray) -> torch.Tensor | None:
    """The ROI for one case and target (None for `none`); `prediction` is the case's predicted label map."""
    from segxai.roi import from_mask, from_predicted_labels

    kind, _, margin = spec.partition(":")
    if kind == "none":
        return None
    if cls is None:
        raise SegxaiError(f"ROI {spec!r} needs a target with a class")
    if kind == "mask":
        if truth is None:
            raise SegxaiError(f"ROI {spec!r} needs a mask for the case (dataset.masks)")
        return from_mask(truth, float(margin or 0))
    return from_predicted_labels(torch.from_numpy(prediction), cls, float(margin or 0))
