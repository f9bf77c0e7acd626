"""The XAI-CLIP evaluation: each method unrestricted vs restricted to one or more ROIs, on the same target.

For every method and ROI variant it records runtime, passes, voxel-passes and the Dice/IoU of the binarised map
against the organ mask, then builds the comparison table with relative changes. The trivial "explanation = ROI"
baseline is reported beside it, because an ROI-restricted map scores well against the organ almost by
construction: the table measures localisation and cost, not faithfulness.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from segxai.errors import SegxaiError
from segxai.methods.base import Explainer
from segxai.metrics import (
    compare_roi_guided,
    explanation_overlap,
    format_table,
    roi_baseline,
    write_csv,
)
from segxai.targets import Target

UNRESTRICTED = "unrestricted"


@dataclass
class Comparison:
    """Per-run records, the comparison table built from them, and the ROI baselines."""

    records: list[dict[str, Any]]
    table: list[dict[str, Any]]
    baselines: list[dict[str, Any]]

    def text(self) -> str:
        return format_table(self.table) + "\n\nROI as the explanation (baseline):\n" + format_table(self.baselines)

    def save(self, out_dir: str | Path) -> dict[str, Path]:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        return {"table": write_csv(self.table, out / "comparison.csv"),
                "records": write_csv(self.records, out / "records.csv"),
                "baselines": write_csv(self.baselines, out / "roi_baseline.csv")}


def compare_restriction(
    methods: Mapping[str, Explainer],
    inputs: torch.Tensor | np.ndarray,
    target: Target,
    mask: torch.Tensor | np.ndarray,
    rois: Mapping[str, torch.Tensor],
    *,
    threshold: float | None = 0.5,
    top_k: float | None = None,
    seed: int = 0,
    batch_size: int | str = "auto",
    progress: bool = False,
    extra_seconds: Mapping[str, float] | None = None,
) -> list[dict[str, Any]]:
    """Run each method once unrestricted and once per named ROI; return one record per run.

    `extra_seconds` adds a per-variant cost to the runtime (e.g. the seconds a text localizer took to find the
    ROI), recorded separately as `roi_seconds` so both figures can be reported.
    """
    if not methods:
        raise SegxaiError("compare_restriction needs at least one method")
    if UNRESTRICTED in rois:
        raise SegxaiError(f"{UNRESTRICTED!r} is the name of the run without an ROI; give the ROIs other names")
    records = []
    for name, explainer in methods.items():
        for variant, roi in {UNRESTRICTED: None, **rois}.items():
            explanation = explainer.explain(inputs, target, roi=roi, seed=seed, batch_size=batch_size, progress=progress)
            overlap = explanation_overlap(explanation, mask, threshold=threshold, top_k=top_k)
            roi_seconds = float((extra_seconds or {}).get(variant, 0.0))
            stats = explanation.stats
            records.append({
                "method": name, "variant": variant, "seconds": stats["seconds"] + roi_seconds,
                "roi_seconds": roi_seconds, "forward_passes": stats["forward_passes"],
                "forward_voxels": stats["forward_voxels"], **overlap,
            })
    return records


def baselines(rois: Mapping[str, torch.Tensor], mask: torch.Tensor | np.ndarray) -> list[dict[str, Any]]:
    """Dice and IoU of each ROI itself against the mask."""
    return [{"variant": variant, **roi_baseline(roi, mask)} for variant, roi in rois.items()]


def comparison(records: Sequence[Mapping[str, Any]], rois_per_case: Sequence[Mapping[str, torch.Tensor]],
               masks: Sequence[torch.Tensor | np.ndarray]) -> Comparison:
    """The table over one or more cases (records of the same method and variant are averaged)."""
    rows = [row for rois, mask in zip(rois_per_case, masks) for row in baselines(rois, mask)]
    merged: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        merged.setdefault(row["variant"], []).append(row)
    averaged = [{"variant": v, "cases": len(r), "dice": float(np.mean([x["dice"] for x in r])),
                 "iou": float(np.mean([x["iou"] for x in r]))} for v, r in merged.items()]
    return Comparison(list(records), compare_roi_guided(records), averaged)


def evaluate_files(
    checkpoint: str | Path,
    images: Sequence[str | Path],
    mask_file: str | Path,
    label: int,
    out_dir: str | Path,
    *,
    methods: Sequence[str] = ("occlusion", "rise", "lime"),
    params: Mapping[str, Mapping[str, Any]] | None = None,
    target: str | None = None,
    margin: float = 4.0,
    text: str | None = None,
    threshold: float = 0.5,
    seed: int = 0,
    device: str | None = None,
    progress: bool = True,
) -> Comparison:
    """`segxai evaluate`: compare methods unrestricted vs restricted to the organ `label` of `mask_file` grown by
    `margin` voxels, and (XAI-CLIP) vs restricted to the ROI a localizer finds from `text` (`PROMPT@LOCALIZER.pt`),
    grown the same; localisation time is added to the text runs (`roi_seconds`). The default target is the
    organ's mean class probability over its mask."""
    from segxai.models.checkpoint import load_checkpoint
    from segxai.io import load_image, load_mask, prepare_output_dir
    from segxai.methods import get_method
    from segxai.preprocess import normalize_intensity
    from segxai.roi import from_mask
    from segxai.targets import ClassRegion, parse_target

    out = prepare_output_dir(out_dir, [checkpoint, *images, mask_file])
    model, config = load_checkpoint(checkpoint, device=device)
    image = load_image(images)
    organ = load_mask(mask_file, like=image) == label
    if not organ.any():
        raise SegxaiError(f"label {label} does not occur in {mask_file}")
    x, _ = model.prepare(normalize_intensity(image.array, config.get("intensity")))
    chosen = parse_target(target) if target else ClassRegion(label, organ, score="prob", reduce="mean")
    explainers = {name: get_method(name, model, **(params or {}).get(name, {})) for name in methods}
    rois = {"roi": from_mask(organ, margin)}
    localisation = {}
    if text is not None:
        from segxai.pipelines.explain import text_roi

        started = time.perf_counter()
        rois["text"] = text_roi(text, image, margin)
        localisation["text"] = time.perf_counter() - started
    records = compare_restriction(explainers, x[0], chosen, organ, rois, threshold=threshold, seed=seed,
                                  progress=progress, extra_seconds=localisation)
    result = comparison(records, [rois], [organ])
    result.save(out)
    return result
