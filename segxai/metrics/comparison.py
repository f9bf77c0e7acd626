"""The XAI-CLIP comparison table: each method unrestricted vs ROI-guided, with relative changes.

XAI-CLIP reports its gains as relative changes, `(new - old) / old * 100` (-60 % runtime, +44.6 % Dice and
+96.7 % IoU for occlusion). The table keeps the absolute figures beside the changes, and the ratio of voxels
carried through the network, the hardware-independent cost of cropped computation. Where the records carry the
Dice of the trivial "explanation = ROI" (`roi_baseline_dice`, `segxai.metrics.baselines`), each row shows it and
says whether the method beats it: one that does not only restates its ROI.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from numbers import Integral, Real
from typing import Any

from segxai.errors import SegxaiError
from segxai.io.table import is_number as _is_number

BASELINE = "unrestricted"
MEASURES = ("seconds", "forward_passes", "forward_voxels", "dice", "iou")
CHANGES = {"runtime change %": "seconds", "Dice change %": "dice", "IoU change %": "iou"}
VOXEL_RATIO = "voxel-pass ratio"
ROI_BASELINE = "roi_baseline_dice"


def relative_change(new: float, old: float) -> float:
    """`(new - old) / old * 100`; NaN when `old` is 0 (no meaningful reference) or either value is NaN."""
    return (new - old) / old * 100.0 if old != 0 else float("nan")


def compare_roi_guided(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Build the comparison table from records `{"method", "variant", "seconds", "forward_passes",
    "forward_voxels", "dice", "iou"}` (variant "unrestricted", "roi" or any other name), optionally with
    `roi_baseline_dice` (the Dice of the ROI itself on the same image).

    Records of the same method and variant (e.g. one per image) are averaged; `images` counts them. There is one
    row per method and variant, the unrestricted one first; every other variant gets its relative changes in
    runtime, Dice and IoU, and its voxel-pass ratio, against the method's unrestricted row (None without one).
    """
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for record in rows:
        _check_record(record)
        groups.setdefault((str(record["method"]), str(record["variant"])), []).append(record)
    if not groups:
        raise SegxaiError("no records to compare")
    table = []
    for method in dict.fromkeys(method for method, _ in groups):
        variants = sorted((v for m, v in groups if m == method), key=lambda variant: variant != BASELINE)
        baseline = groups.get((method, BASELINE))
        reference = None if baseline is None else _means(baseline)
        for variant in variants:
            table.append(_row(method, variant, groups[(method, variant)], reference))
    return table


def _check_record(record: Mapping[str, Any]) -> None:
    missing = [key for key in ("method", "variant", *MEASURES) if key not in record]
    if missing:
        raise SegxaiError(f"comparison record {dict(record)!r} lacks {', '.join(missing)}")
    wrong = [key for key in MEASURES if not _is_number(record[key])]
    if wrong:
        raise SegxaiError(f"comparison record {dict(record)!r}: {', '.join(wrong)} must be numbers (NaN allowed)")


def _means(records: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    return {key: _mean([r[key] for r in records]) for key in MEASURES}


def _mean(values: Sequence[Real]) -> float:
    """The mean, kept an int when counts (e.g. passes) average to a whole number, so tables show `30`, not `30.0`."""
    mean = math.fsum(float(v) for v in values) / len(values)
    return int(mean) if all(isinstance(v, Integral) for v in values) and mean.is_integer() else mean


def _row(
    method: str, variant: str, records: Sequence[Mapping[str, Any]], reference: dict[str, float] | None
) -> dict[str, Any]:
    means = _means(records)
    row: dict[str, Any] = {"method": method, "variant": variant, "images": len(records), **means}
    compared = reference is not None and variant != BASELINE
    for column, key in CHANGES.items():
        row[column] = relative_change(means[key], reference[key]) if compared else None
    row[VOXEL_RATIO] = _ratio(means["forward_voxels"], reference["forward_voxels"]) if compared else None
    if all(_is_number(r.get(ROI_BASELINE)) for r in records):
        baseline = _mean([r[ROI_BASELINE] for r in records])
        row["ROI baseline Dice"] = baseline
        row["beats ROI baseline"] = "yes" if means["dice"] > baseline else "no: restates the ROI"
    return row


def _ratio(new: float, old: float) -> float:
    return new / old if old != 0 else float("nan")
