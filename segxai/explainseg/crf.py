"""DenseCRF refinement (Kraehenbuehl & Koltun 2011) of a foreground probability map against the RGB image.

Uses `pydensecrf` (installed by the optional extra `segxai[crf]`, package pydensecrf2), imported only when a
refinement is asked for. Defaults are CutLER's: 10 mean-field iterations, a Gaussian kernel (sxy 3, compat 7)
and a bilateral kernel (sxy 50, srgb 5, compat 10).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from segxai.errors import SegxaiError


@dataclass(frozen=True)
class CRFParams:
    iterations: int = 10
    gaussian_sxy: float = 3.0
    gaussian_compat: float = 7.0
    bilateral_sxy: float = 50.0
    bilateral_srgb: float = 5.0
    bilateral_compat: float = 10.0


def crf_available() -> bool:
    """Whether pydensecrf can be imported."""
    try:
        import pydensecrf.densecrf  # noqa: F401
    except ImportError:
        return False
    return True


def refine(image: np.ndarray, probability: np.ndarray, params: CRFParams = CRFParams()) -> np.ndarray:
    """The CRF's foreground mask for an RGB image `(H, W, 3)` (uint8, or floats in 0..255) and a foreground
    probability `(H, W)` in [0, 1] (clipped to [0.05, 0.95] so no pixel is certain)."""
    try:
        import pydensecrf.densecrf as dcrf
        from pydensecrf.utils import unary_from_softmax
    except ImportError:
        raise SegxaiError("DenseCRF refinement needs pydensecrf: pip install 'segxai[crf]' (pydensecrf2)") from None
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[:2] != np.shape(probability):
        raise SegxaiError(f"CRF needs an (H, W, 3) image on the probability's grid; got image {image.shape} and "
                          f"probability {np.shape(probability)}")
    h, w = image.shape[:2]
    fg = np.clip(np.asarray(probability, dtype=np.float32), 0.05, 0.95)
    crf = dcrf.DenseCRF2D(w, h, 2)
    crf.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(np.stack([1.0 - fg, fg]))))
    crf.addPairwiseGaussian(sxy=params.gaussian_sxy, compat=params.gaussian_compat)
    rgb = np.ascontiguousarray(np.clip(image, 0, 255).astype(np.uint8))
    crf.addPairwiseBilateral(sxy=params.bilateral_sxy, srgb=params.bilateral_srgb, rgbim=rgb,
                             compat=params.bilateral_compat)
    q = np.array(crf.inference(params.iterations)).reshape(2, h, w)
    return q[1] > q[0]
