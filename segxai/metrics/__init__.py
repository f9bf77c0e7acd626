"""Explanation metrics: localisation against a mask, faithfulness curves, attribution mass per segment, and the
ROI-guided comparison table."""
from segxai.io.table import format_table, write_csv
from segxai.metrics.aggregate import robust_z, segment_distribution, segment_mass, segment_matrix, segment_outliers
from segxai.metrics.baselines import baseline_maps, leakage, localisation_scores, scores_with_baselines
from segxai.metrics.comparison import compare_roi_guided, relative_change
from segxai.metrics.faithfulness import Curve, curves_with_baselines, deletion_curve, insertion_curve
from segxai.metrics.faithfulness import BlockCurve, SignConsistency, block_intervention_curve, sign_consistency
from segxai.metrics.instance import (
    Lesion,
    LesionTypes,
    RadialProfile,
    auroc,
    compare_groups,
    context_experiment,
    dilate,
    inside_vs_rings,
    instance_rows,
    instance_table,
    lesion_rates,
    lesion_types,
    modality_share,
    ndsc,
    peak_saliency,
    radial_profile,
    signed_distance,
)
from segxai.metrics.intervals import Interval, bootstrap_interval, interval_table
from segxai.metrics.localization import (
    binarize_map,
    energy_inside,
    explanation_overlap,
    pointing_game,
    roi_baseline,
    spatial_map,
)
from segxai.metrics.overlap import as_mask, dice, iou
from segxai.metrics.stability import map_stability

__all__ = [
    "BlockCurve",
    "Curve",
    "Interval",
    "Lesion",
    "LesionTypes",
    "RadialProfile",
    "SignConsistency",
    "as_mask",
    "auroc",
    "baseline_maps",
    "binarize_map",
    "block_intervention_curve",
    "bootstrap_interval",
    "compare_groups",
    "compare_roi_guided",
    "context_experiment",
    "curves_with_baselines",
    "deletion_curve",
    "dice",
    "dilate",
    "energy_inside",
    "explanation_overlap",
    "format_table",
    "insertion_curve",
    "inside_vs_rings",
    "instance_rows",
    "instance_table",
    "interval_table",
    "iou",
    "leakage",
    "localisation_scores",
    "lesion_rates",
    "lesion_types",
    "map_stability",
    "modality_share",
    "ndsc",
    "peak_saliency",
    "pointing_game",
    "radial_profile",
    "relative_change",
    "roi_baseline",
    "robust_z",
    "scores_with_baselines",
    "segment_distribution",
    "segment_mass",
    "segment_matrix",
    "segment_outliers",
    "sign_consistency",
    "signed_distance",
    "spatial_map",
    "write_csv",
]
