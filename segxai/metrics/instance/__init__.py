"""Quantitative instance-level statistics (Spagnolo et al., instance-level quantitative saliency): saliency per lesion (modality share, radial
profile, rings, peak), lesion-wise detection scores, statistical tests between lesion types, the perilesional
context experiment and the per-instance table. Everything works on one image's arrays in 2D and 3D."""
from segxai.instances import Lesion, LesionType, LesionTypes, lesion_types
from segxai.metrics.instance.context import context_experiment
from segxai.metrics.instance.lesions import REFERENCE_RATE, lesion_rates, ndsc
from segxai.metrics.instance.saliency import (
    RadialProfile, SaliencyLike, dilate, inside_vs_rings, mean_profiles, modality_share, peak_saliency,
    radial_profile, signed_distance,
)
from segxai.metrics.instance.statistics import auroc, compare_groups
from segxai.metrics.instance.table import instance_rows, instance_table

__all__ = [
    "REFERENCE_RATE", "Lesion", "LesionType", "LesionTypes", "RadialProfile", "SaliencyLike", "auroc",
    "compare_groups", "context_experiment", "dilate", "inside_vs_rings", "instance_rows", "instance_table",
    "lesion_rates", "lesion_types", "mean_profiles", "modality_share", "ndsc", "peak_saliency", "radial_profile",
    "signed_distance",
]
