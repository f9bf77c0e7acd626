"""Explain a model on a case read from files: maps with the scan's geometry, the prediction and a report out.

This is what `segxai explain` runs for one target; the demo calls it too, so the file path is exercised end to end.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from segxai.errors import SegxaiError
from segxai.explanation import Explanation
from segxai.models.case import Case
from segxai.pipelines.grammar import EveryInstance, RoiSpec, parse_roi, read_target
from segxai.pipelines.options import RunOptions
from segxai.report.views import views_like
from segxai.targets import Target, description_text


@dataclass
class FileExplanation:
    """An explanation of a file-based run, with the case it explained and every path it wrote."""

    explanation: Explanation
    case: Case
    written: dict[str, Path]
    modality_share: dict[str, float]


def explain_case(
    case: Case,
    target: str | Target,
    out_dir: str | Path,
    *,
    method: str = "saliency",
    roi: str | RoiSpec | None = None,
    params: dict[str, Any] | None = None,
    title: str | None = None,
    options: RunOptions = RunOptions(),
) -> FileExplanation:
    """Explain `target` on a case (several image files = modalities) and write NIfTI/PNG maps with the source
    geometry, the predicted label map, the stats JSON, an overlay and `report.html`.

    Args:
        case: the case, loaded with its model (`segxai.models.case.load_case`).
        target: a target spec (`class:1`, `instance:1:3`, `voxel:1:z,y,x`) or a `Target`.
        out_dir: the output folder (never one holding an input).
        method: a registered method name (`segxai.methods.METHODS`).
        roi: an ROI spec of `segxai.pipelines.grammar` (`prediction:1+4`, `mask:FILE`, ...) or None.
        params: the method's constructor settings.
        title: the report's title (default: method and target).
        options: seed, progress and the command line shown in the report.
    Returns:
        The explanation, the case, the written paths and each modality's share of |attribution|.
    """
    from segxai.io import prepare_output_dir, save_array
    from segxai.methods import get_method

    out = prepare_output_dir(out_dir, case.files)
    chosen = read_target(target) if isinstance(target, str) else target
    if isinstance(chosen, EveryInstance):
        raise SegxaiError("instances:CLS explains every instance: use explain_instances_case")
    spec = parse_roi(roi) if isinstance(roi, str) else roi
    explainer = get_method(method, case.segmenter, **(params or {}))
    mask = None if spec is None else spec.resolve(case, getattr(chosen, "cls", None))
    explanation = explainer.explain(case.inputs, case.target_to_model(chosen), roi=mask, seed=options.seed,
                                    progress=options.progress)
    explanation = case.to_image(explanation)
    names = case.channel_names
    share = modality_share(explanation, names) if explanation.attribution.shape[0] == len(names) else {}
    explanation.stats.update(checkpoint=str(case.model.path), images=[str(p) for p in case.image_files],
                             modality_share=share, **model_notes(case))
    extension, like = case.map_format
    channels = names if share else ["all"] * explanation.attribution.shape[0]
    written = explanation.save(out, like=like, channel_names=channels, overlay=views_like(like))
    prediction = case.prediction.numpy().astype(np.uint8)
    written["prediction"] = save_array(prediction, out / f"prediction{extension}", like=like)
    named = target if isinstance(target, str) else description_text(chosen.describe())
    written["report"] = _write_report(out, explanation, written, case, share, title or f"{method} of {named}",
                                      options.command, like)
    return FileExplanation(explanation, case, written, share)


def model_notes(case: Case) -> dict[str, str]:
    """What a report should say about the model's grid: the framework, and what the maps are gradients of."""
    config = case.model.config if case.model is not None else {}
    return {k: str(config[k]) for k in ("framework", "attribution_space") if k in config}


def modality_share(explanation: Explanation, channel_names: Sequence[str]) -> dict[str, float]:
    """Each input channel's share of the total |attribution| over the whole grid (sums to 1; 0 for an all-zero
    map): which modality the model relied on."""
    from segxai.metrics.instance import modality_share as share_in

    shares = share_in(explanation, np.ones(explanation.spatial_shape, dtype=bool))
    return {name: float(np.nan_to_num(share)) for name, share in zip(channel_names, shares)}


def _write_report(out: Path, explanation: Explanation, written: dict[str, Path], case: Case, share: dict,
                  title: str, command: str | None, like: Any) -> Path:
    from segxai.report import Figure, Section, quantity_rows, write_report

    stats = explanation.stats
    volume = explanation.spatial_dims == 3
    caption = ("attribution summed over channels, windowed symmetrically; target outlined"
               + ("; three orthogonal views through the target's centre, radiological convention" if volume else ""))
    figures = [Figure(p.name, caption, wide=volume) for key, p in written.items() if key.endswith("_overlay")]
    rows = quantity_rows(stats)
    rows += [{"quantity": f"share of |attribution| in {k}", "value": v} for k, v in share.items()]
    sections = [
        Section(title, text=f"Target: {description_text(stats['target'])}", figures=figures, table=rows),
        *([_viewer_section(explanation, like)] if volume else []),
        Section("Model", table=case.model.class_rows()),
        Section("Files", table=[{"output": k, "file": p.name} for k, p in written.items()]),
    ]
    return write_report(out / "report.html", title, sections, command=command)


def _viewer_section(explanation: Explanation, like: Any):
    """The interactive viewer of image, map and target (NiiVue from `segxai[viewer]`), or a line saying how
    to get it."""
    from segxai.report import Section
    from segxai.report.overlay import robust_limit
    from segxai.report.viewer import viewer_html

    attribution = explanation.attribution.detach().cpu().float().numpy().sum(0)
    image = explanation.inputs.detach().cpu().float().numpy()[0]
    mask = explanation.target_mask
    markup = viewer_html(image, attribution, mask=None if mask is None else mask.cpu().numpy(),
                         affine=getattr(like, "affine", None), limit=robust_limit(attribution))
    if markup is None:
        return Section("Interactive viewer", text="Install segxai[viewer] (ipyniivue) for an interactive viewer here.")
    return Section("Interactive viewer", text=("Image, map (warm colours positive, cool negative, the window above) "
                                               "and the target's surface (green); drag to move, scroll to page."),
                   markup=markup)
