"""LIME on superpixels (Ribeiro et al. 2016, lime_image) for segmentation, N-D, optionally ROI-restricted (XAI-CLIP)."""
from __future__ import annotations

from typing import Any

from segxai.methods.perturb.base import PerturbationMethod
from segxai.methods.perturb.estimators import WeightedRidge
from segxai.methods.perturb.regions import SuperpixelSamples
from segxai.methods.perturb.superpixels import check_method
from segxai.methods.perturb.superpixels import superpixels as segment


class LIME(PerturbationMethod):
    """Switch random sets of superpixels off (replaced by the fill), score each of `n_samples` inputs, and fit a
    Ridge regression (`alpha`) of the scores on the on/off states, weighting samples by their cosine closeness
    to the clean input (`kernel_width`). A superpixel's attribution is its coefficient.

    Superpixels (`superpixels`: "slic", "felzenszwalb" or "quickshift" in 2D, "slic" in 3D, with
    `superpixel_options` passed to scikit-image) are computed on the input the network sees. With an ROI only
    superpixels with at least `min_overlap` of their voxels inside it are features; like every perturbation
    method, LIME perturbs only inside the ROI and its map is zero outside it. `run_stats` records the number of
    superpixels, of features and the surrogate's weighted R^2.
    """

    name = "lime"

    def __init__(self, model, n_samples: int = 500, superpixels: str = "slic", n_segments: int = 100,
                 kernel_width: float = 0.25, alpha: float = 1.0, min_overlap: float = 0.1, *,
                 superpixel_options: dict[str, Any] | None = None, **options) -> None:
        super().__init__(model, **options)
        check_method(superpixels)
        self.n_samples, self.superpixels, self.n_segments = int(n_samples), superpixels, int(n_segments)
        self.kernel_width, self.alpha, self.min_overlap = float(kernel_width), float(alpha), float(min_overlap)
        self.superpixel_options = dict(superpixel_options or {})
        self._surrogate: WeightedRidge | None = None

    def params(self) -> dict[str, Any]:
        return {"n_samples": self.n_samples, "superpixels": self.superpixels, "n_segments": self.n_segments,
                "superpixel_options": self.superpixel_options, "kernel_width": self.kernel_width,
                "alpha": self.alpha, "min_overlap": self.min_overlap, **super().params()}

    def _item_regions(self, ref, roi, context):
        segments = segment(ref.x[0].cpu().numpy(), self.superpixels, self.n_segments, **self.superpixel_options)
        return SuperpixelSamples(segments, self.n_samples, generator=context.generator, roi=roi,
                                 min_overlap=self.min_overlap)

    def _estimator(self, ref, regions):
        self._surrogate = WeightedRidge(regions.segments.to(ref.x.device), regions.feature_ids, self.kernel_width,
                                        self.alpha)
        return self._surrogate

    def _attribute(self, x, target, roi, context):
        result = super()._attribute(x, target, roi, context)
        surrogate = self._surrogate
        self.run_stats.update(superpixels=int(surrogate.segments.max()) + 1, features=len(surrogate.feature_ids),
                              r2=surrogate.score)
        return result
