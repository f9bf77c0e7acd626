"""Score ExplainSeg against ground-truth masks: per-image IoU and Dice averaged over images (in %), for the train
and validation splits separately (masks never trained anything, so both are fair), in the layout of the
paper's Table 1 (variants) and Table 2 (baselines vs XNCut)."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from segxai.errors import SegxaiError
from segxai.explainseg.classifier import ViTClassifier
from segxai.explainseg.postprocess import VARIANTS
from segxai.explainseg.segment import BASELINES, METHODS, segment
from segxai.io.table import format_table
from segxai.metrics.overlap import dice, iou
from segxai.progress import progress_bar


def score_split(
    classifier: ViTClassifier,
    images: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    methods: Sequence[str] = METHODS,
    *,
    progress: bool = True,
    **options: Any,
) -> tuple[dict[str, dict[str, float]], list[dict[str, Any]]]:
    """Segment every image with every method; return mean IoU and Dice in % per method, and one row per image
    and method (`options` go to `segment`)."""
    if len(images) != len(masks) or not images:
        raise SegxaiError(f"got {len(images)} images for {len(masks)} masks")
    rows = []
    for index, (image, mask) in enumerate(progress_bar(list(zip(images, masks)), enabled=progress, desc="explainseg")):
        truth = np.asarray(mask) > 0
        result = segment(classifier, image, methods, **options)
        for method, predicted in result.masks.items():
            rows.append({"image": index, "method": method, "class": result.cls,
                         "iou": iou(predicted, truth), "dice": dice(predicted, truth)})
    means = {
        method: {
            "miou": 100 * float(np.mean([r["iou"] for r in rows if r["method"] == method])),
            "dice": 100 * float(np.mean([r["dice"] for r in rows if r["method"] == method])),
        }
        for method in methods
    }
    return means, rows


VARIANT_NAMES = {"A": "A: Fusion + Morph", "B": "B: Fusion + NCut", "C": "C: XAI + Morph", "XNCut": "XNCut: XAI + NCut"}


def table1(splits: Mapping[str, Mapping[str, Mapping[str, float]]]) -> str:
    """Table 1 (ablation): one row per variant, `mIoU / Dice` in % per split."""
    rows = [
        {"variant": VARIANT_NAMES[v], **{f"{s} mIoU / Dice": _pair(means[v]) for s, means in splits.items()}}
        for v in VARIANTS if all(v in means for means in splits.values())
    ]
    return format_table(rows)


def table2(splits: Mapping[str, Mapping[str, Mapping[str, float]]]) -> str:
    """Table 2 (baselines): TokenCut, MaskCut and ExplainSeg (XNCut), mIoU then Dice in % per split."""
    names = {**{b: b for b in BASELINES}, "XNCut": "ExplainSeg (XNCut)"}
    rows = []
    for method, label in names.items():
        if not all(method in means for means in splits.values()):
            continue
        row: dict[str, Any] = {"method": label}
        for metric, title in (("miou", "mIoU"), ("dice", "Dice")):
            row.update({f"{title} {s}": f"{means[method][metric]:.1f}" for s, means in splits.items()})
        rows.append(row)
    return format_table(rows)


def _pair(scores: Mapping[str, float]) -> str:
    return f"{scores['miou']:.1f} / {scores['dice']:.1f}"
