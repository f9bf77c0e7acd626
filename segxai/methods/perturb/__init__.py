"""Perturbation methods on one batched engine: regions x fill x estimator, ROI-restricted and cropped."""
from segxai.methods.perturb.base import PerturbationMethod
from segxai.methods.perturb.kernel_shap import KernelSHAP
from segxai.methods.perturb.lime import LIME
from segxai.methods.perturb.occlusion import Occlusion
from segxai.methods.perturb.rise import RISE

__all__ = ["KernelSHAP", "LIME", "Occlusion", "PerturbationMethod", "RISE"]
