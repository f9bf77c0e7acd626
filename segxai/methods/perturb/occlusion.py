"""Occlusion (Zeiler & Fergus 2014) for segmentation, N-D, optionally restricted to an ROI (XAI-CLIP)."""
from __future__ import annotations

from typing import Any, Sequence

from segxai.methods.perturb.base import PerturbationMethod
from segxai.methods.perturb.estimators import Difference
from segxai.methods.perturb.regions import SlidingWindows, check_sizes


class Occlusion(PerturbationMethod):
    """Slide a window, replace it with the fill, and give each voxel the mean score drop over the windows
    covering it. With an ROI only windows touching it are run.

    Args:
        model: a `SegModel` or a network.
        window: window size, an int or one per spatial axis.
        stride: step between windows, an int or one per spatial axis.
        **options: the shared perturbation settings (`fill`, `outside`, `crop`, `pool`, `norm`,
            `incremental`).
    """

    name = "occlusion"
    summary = "occlusion (Zeiler & Fergus 2014): score drop when a sliding window is filled"

    def __init__(self, model, window: int | Sequence[int] = 8, stride: int | Sequence[int] = 8, **options) -> None:
        super().__init__(model, **options)
        check_sizes(window, "window")
        check_sizes(stride, "stride")
        self.window, self.stride = window, stride

    def params(self) -> dict[str, Any]:
        return {"window": self.window, "stride": self.stride, **super().params()}

    def _regions(self, shape, roi, context):
        return SlidingWindows(shape, self.window, self.stride, roi)

    def _estimator(self, ref, regions):
        return Difference()
