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
from segxai.models.case import Case
from segxai.pipelines.grammar import parse_roi
from segxai.pipelines.options import RunOptions
from segxai.targets import Target, parse_target

UNRESTRICTED = "unrestricted"
# Sample budgets by effort: "quick" (the default) sizes a first run at seconds per method on a 128x128 image,
# "thorough" keeps each method's own defaults (RISE 2000 masks, LIME 500 samples, 8-voxel occlusion windows);
# settings given by the user win over both.
EFFORTS: dict[str, dict[str, dict[str, Any]]] = {
    "quick": {"rise": {"n_masks": 300}, "lime": {"n_samples": 150},
              "occlusion": {"window": 16, "stride": 16}, "kernel_shap": {"n_samples": 150},
              "smoothgrad": {"n_samples": 10}, "integrated_gradients": {"n_steps": 16}},
    "thorough": {},
}


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
            cost = explanation.cost
            records.append({
                "method": name, "variant": variant, "seconds": cost.seconds + roi_seconds,
                "roi_seconds": roi_seconds, "forward_passes": cost.forward_passes,
                "forward_voxels": cost.forward_voxels, **overlap,
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


def evaluate_case(
    case: Case,
    label: int,
    out_dir: str | Path,
    *,
    methods: Sequence[str] = ("occlusion", "rise", "lime"),
    params: Mapping[str, Mapping[str, Any]] | None = None,
    target: str | None = None,
    margin: float = 4.0,
    text: str | None = None,
    threshold: float = 0.5,
    effort: str = "quick",
    options: RunOptions = RunOptions(),
) -> Comparison:
    """`segxai evaluate`: compare methods unrestricted vs restricted to the organ `label` of the case's reference
    grown by `margin` voxels (the ROI `reference:LABEL+MARGIN`), and (XAI-CLIP) vs restricted to the ROI a
    localizer finds from `text` (`PROMPT@LOCALIZER.pt`, the ROI `text:PROMPT@LOCALIZER.pt+MARGIN`); localisation
    time is added to the text runs (`roi_seconds`). Tables are written to `out_dir`.

    Args:
        case: the case with its model and the reference label map holding the organ.
        label: the organ's label in the reference (also its class).
        out_dir: the output folder.
        methods: registered method names.
        params: constructor settings by method name.
        target: a target spec; default: the organ's mean class probability over its reference voxels.
        margin: ROI growth in voxels.
        text: `PROMPT@LOCALIZER.pt`, or None.
        threshold: binarisation of the min-max-normalised maps for Dice/IoU.
        effort: "quick" or "thorough", the methods' sample budgets (`EFFORTS`) under `params`.
        options: seed and progress.
    Returns:
        The records, the comparison table and the ROI baselines.
    """
    from segxai.io import prepare_output_dir
    from segxai.methods import get_method
    from segxai.targets import ClassRegion

    out = prepare_output_dir(out_dir, case.files)
    organ = case.reference_of(label)
    if organ is None or not bool(organ.any()):
        raise SegxaiError(f"label {label} does not occur in the reference {case.reference_file}")
    organ = case.to_model(organ)
    chosen = parse_target(target) if target else ClassRegion(label, organ, score="prob", reduce="mean")
    if effort not in EFFORTS:
        raise SegxaiError(f"effort must be one of {', '.join(EFFORTS)}, got {effort!r}")
    settings = {name: {**EFFORTS[effort].get(name, {}), **(params or {}).get(name, {})} for name in methods}
    explainers = {name: get_method(name, case.segmenter, **settings[name]) for name in methods}
    rois = {"roi": parse_roi(f"reference:{label}+{margin}").resolve(case)}
    localisation = {}
    if text is not None:
        started = time.perf_counter()
        rois["text"] = parse_roi(f"text:{text}+{margin}").resolve(case)
        localisation["text"] = time.perf_counter() - started
    records = compare_restriction(explainers, case.inputs, chosen, organ, rois, threshold=threshold,
                                  seed=options.seed, progress=options.progress, extra_seconds=localisation)
    result = comparison(records, [rois], [organ])
    result.save(out)
    return result
