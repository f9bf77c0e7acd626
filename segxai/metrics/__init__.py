"""Explanation metrics: localisation against a mask, faithfulness curves, and the ROI-guided comparison table."""
from segxai.metrics.comparison import (
    compare_roi_guided,
    format_table,
    relative_change,
    write_csv,
)
from segxai.metrics.faithfulness import Curve, deletion_curve, insertion_curve
from segxai.metrics.localization import (
    binarize_map,
    energy_inside,
    explanation_overlap,
    pointing_game,
    roi_baseline,
    spatial_map,
)
from segxai.metrics.overlap import as_mask, dice, iou

__all__ = [
    "Curve",
    "as_mask",
    "binarize_map",
    "compare_roi_guided",
    "deletion_curve",
    "dice",
    "energy_inside",
    "explanation_overlap",
    "format_table",
    "insertion_curve",
    "iou",
    "pointing_game",
    "relative_change",
    "roi_baseline",
    "spatial_map",
    "write_csv",
]
