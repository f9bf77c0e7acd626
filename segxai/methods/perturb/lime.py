"""LIME on superpixels (Ribeiro et al. 2016, lime_image) for segmentation, N-D, optionally ROI-restricted (XAI-CLIP)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from segxai.methods.perturb.base import PerturbationMethod, PerturbationStats
from segxai.methods.perturb.estimators import SurrogateFit
from segxai.methods.perturb.regions import SuperpixelSamples
from segxai.methods.perturb.superpixels import check_method
from segxai.methods.perturb.superpixels import superpixels as segment
from segxai.methods.perturb.surrogate import CosineKernel, Kernel, Sampler, Surrogate, UniformSampler, WeightedLinear


class LIME(PerturbationMethod):
    """Switch random sets of superpixels off (replaced by the fill), score each of `n_samples` inputs, and fit a
    weighted linear surrogate of the scores on the on/off states. A superpixel's attribution is its coefficient.

    The three parts are replaceable objects (`segxai.methods.perturb.surrogate`): the `sampler` draws which
    superpixels each sample keeps (default: each with probability 1/2, sample 0 all on), the `kernel` weighs the
    samples (default: cosine closeness to the clean input, `kernel_width`) and the `surrogate` fits them
    (default: Ridge regression, `alpha`). Superpixels (`superpixels`: "slic", "felzenszwalb" or "quickshift" in
    2D, "slic" in 3D, with `superpixel_options` passed to scikit-image) are computed on the input the network
    sees. With an ROI only superpixels with at least `min_overlap` of their voxels inside it are features; like
    every perturbation method, LIME perturbs only inside the ROI and its map is zero outside it. Each item's
    `LimeStats` record the number of superpixels, of features and the surrogate's weighted R^2.
    """

    name = "lime"
    summary = "LIME (Ribeiro et al. 2016): a weighted linear surrogate on superpixels switched off at random"

    def __init__(self, model, n_samples: int = 500, superpixels: str = "slic", n_segments: int = 100,
                 kernel_width: float = 0.25, alpha: float = 1.0, min_overlap: float = 0.1, *,
                 superpixel_options: dict[str, Any] | None = None, sampler: Sampler | None = None,
                 kernel: Kernel | None = None, surrogate: Surrogate | None = None, **options) -> None:
        """
        Args:
            model: a `SegModel` or a network.
            n_samples: perturbed inputs scored per item (the first is the clean input with the default sampler).
            superpixels: the segmentation method of the features.
            n_segments: SLIC's target number of superpixels.
            kernel_width: width of the default `CosineKernel` (unused with `kernel`).
            alpha: L2 penalty of the default `WeightedLinear` surrogate (unused with `surrogate`).
            min_overlap: with an ROI, the share of a superpixel's voxels inside it that makes it a feature.
            superpixel_options: passed to the scikit-image segmenter.
            sampler, kernel, surrogate: replacements of the default parts.
            **options: the perturbation settings of `PerturbationMethod` (fill, outside, crop, pool, norm, incremental).
        """
        super().__init__(model, **options)
        check_method(superpixels)
        self.n_samples, self.superpixels, self.n_segments = int(n_samples), superpixels, int(n_segments)
        self.min_overlap = float(min_overlap)
        self.superpixel_options = dict(superpixel_options or {})
        self.sampler = sampler or UniformSampler()
        self.kernel = kernel or CosineKernel(float(kernel_width))
        self.surrogate = surrogate or WeightedLinear(float(alpha))

    def params(self) -> dict[str, Any]:
        return {"n_samples": self.n_samples, "superpixels": self.superpixels, "n_segments": self.n_segments,
                "superpixel_options": self.superpixel_options, "min_overlap": self.min_overlap,
                "sampler": repr(self.sampler), "kernel": repr(self.kernel), "surrogate": repr(self.surrogate),
                **super().params()}

    def _item_regions(self, ref, roi, context):
        segments = segment(ref.x[0].cpu().numpy(), self.superpixels, self.n_segments, **self.superpixel_options)
        return SuperpixelSamples(segments, self.n_samples, sampler=self.sampler, generator=context.generator,
                                 roi=roi, min_overlap=self.min_overlap)

    def _estimator(self, ref, regions):
        return SurrogateFit(regions.segments.to(ref.x.device), regions.feature_ids, self.kernel, self.surrogate)

    def _item_stats(self, ref, regions, estimator, figures):
        return LimeStats(**super()._item_stats(ref, regions, estimator, figures).as_fields(),
                         superpixels=regions.n_segments, features=len(regions.feature_ids), r2=estimator.fit.r2)


@dataclass(frozen=True, kw_only=True)
class LimeStats(PerturbationStats):
    """Per-item figures of LIME: superpixels, features (those in the ROI) and the surrogate's weighted R^2."""

    superpixels: int
    features: int
    r2: float
