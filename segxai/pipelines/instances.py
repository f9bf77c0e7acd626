"""Explain every predicted instance (lesion) of a class on a case read from files: one map per instance and
modality, per-lesion statistics, plots and a report (`segxai explain --target instances:CLS`)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from segxai.errors import SegxaiError
from segxai.explanation import Explanations
from segxai.models.case import Case
from segxai.pipelines.options import RunOptions
from segxai.report.views import views_like


@dataclass
class InstanceFileExplanation:
    """Instance explanations of a file-based run: one per instance, their statistics rows, and the paths written."""

    explanations: Explanations
    rows: list[dict[str, Any]]
    written: dict[str, Path]


def explain_instances_case(
    case: Case,
    cls: int,
    out_dir: str | Path,
    *,
    method: str = "smoothgrad",
    params: dict[str, Any] | None = None,
    title: str | None = None,
    options: RunOptions = RunOptions(),
) -> InstanceFileExplanation:
    """Explain every predicted instance of class `cls` (typed TP/FP, with the missed FN lesions added, when the
    case has a reference lesion mask) with `segxai.explain_instances`; write one map per instance and modality
    with the source geometry, the instance label map, `instances.csv` (peak saliency, inside and ring means,
    modality shares), `radial_profiles.csv`, plots and `report.html`.

    Args:
        case: the case with its model; its reference is the lesion mask (its non-zero voxels) or, when it holds
            values beyond the model's classes, an instance label map whose instances are kept (touching nuclei).
        cls: the class whose instances are explained.
        out_dir: the output folder.
        method: smoothgrad or saliency (gradients shared between instances) or any registered method.
        params: settings of the shared gradient methods (n_samples, noise, aggregation, crop, ...), or the
            method's constructor settings otherwise (e.g. gradcampp: layer).
        title: the report's title.
        options: seed, progress and the command line shown in the report.
    Returns:
        The explanations (keyed by instance), the statistics rows and the written paths.
    """
    from segxai.io import prepare_output_dir, save_array
    from segxai.io.table import write_csv
    from segxai.methods import get_method
    from segxai.methods.instance_saliency import SHARED_METHODS, explain_instances
    from segxai.metrics.instance import instance_rows, radial_profile

    out = prepare_output_dir(out_dir, case.files)
    truth = None if case.reference is None else reference_on_model(case)
    params = dict(params or {})
    shared = method in SHARED_METHODS
    explainer = method if shared else get_method(method, case.segmenter, **params)
    try:
        explanations = explain_instances(case.segmenter, case.inputs, cls, explainer, reference=truth,
                                         seed=options.seed, progress=options.progress, **(params if shared else {}))
    except TypeError as error:
        raise SegxaiError(f"bad setting for instance {method}: {error}") from None
    explanations = Explanations([case.to_image(e) for e in explanations], explanations.keys, explanations.cost)
    names = case.channel_names
    channels = explanations[0].attribution.shape[0]
    names = names if channels == len(names) else [f"c{c}" for c in range(channels)]
    extension, like = case.map_format
    written: dict[str, Path] = {}
    labels = np.zeros(case.image.spatial_shape, np.uint16)
    for explanation in explanations:
        index = explanation.stats["instance"]
        labels[explanation.target_mask.numpy()] = index
        written.update(explanation.save(out / "instances", like=like, name=f"instance{index:03d}",
                                        channel_names=names, overlay=views_like(like)))
    written["instances"] = save_array(labels, out / f"instances{extension}", like=like)
    spacing = case.image.spacing
    rows = instance_rows(explanations, channel_names=names, spacing=spacing)
    written["instances_csv"] = write_csv(rows, out / "instances.csv")
    profiles = {e.stats["instance"]: radial_profile(e.attribution[0], e.target_mask, spacing=spacing)
                for e in explanations}
    written["radial_profiles_csv"] = write_csv(
        [{"instance": k, **row} for k, profile in profiles.items() for row in profile.rows()], out / "radial_profiles.csv")
    written.update(_instance_plots(out, rows, profiles, names[0]))
    written["report"] = _write_report(out, explanations, rows, written, case,
                                      title or f"{method} of every instance of class {cls}", options.command)
    return InstanceFileExplanation(explanations, rows, written)


def reference_on_model(case: Case) -> torch.Tensor:
    """`lesion_reference` on the model's grid: a mask through `Case.to_model`, an instance label map one
    instance at a time (so that every id survives the grid map)."""
    reference = lesion_reference(case)
    if reference.dtype == bool:
        return case.to_model(reference)
    out = torch.zeros(case.grid.model_shape, dtype=torch.int64)
    for value in np.unique(reference[reference > 0]):
        out[case.to_model(reference == value)] = int(value)
    return out


def lesion_reference(case: Case) -> np.ndarray:
    """The case's reference for instance typing: an instance label map (values beyond the model's classes, e.g.
    nucleus ids 1..125 for a two-class model) is kept as it is, so touching instances stay apart; any other
    label map becomes its non-zero mask (split into connected components)."""
    reference = np.asarray(case.reference)
    classes = (case.model.config.get("network", {}).get("out_channels") if case.model is not None else None) or 2
    return reference if int(reference.max(initial=0)) >= int(classes) else reference > 0


def _instance_plots(out: Path, rows: list[dict[str, Any]], profiles: dict, channel_name: str) -> dict[str, Path]:
    from segxai.metrics.instance import mean_profiles
    from segxai.report.instance_plots import save_modality_shares, save_peak_by_type, save_radial_profiles

    types = {row["id"]: row["type"] for row in rows}
    return {
        "radial_profile_plot": save_radial_profiles(profiles, types, mean_profiles(profiles, types),
                                                    out / "radial_profile.png", channel_name=channel_name),
        "modality_share_plot": save_modality_shares(rows, out / "modality_share.png"),
        "peak_by_type_plot": save_peak_by_type(rows, out / "peak_by_type.png"),
    }


def _write_report(out: Path, explanations: Explanations, rows: list[dict[str, Any]], written: dict[str, Path],
                  case: Case, title: str, command: str | None) -> Path:
    from segxai.report import Figure, Section, write_report

    cost = explanations.cost
    cost_text = f"{cost.forward_passes} forward and {cost.backward_passes} backward passes in {cost.seconds:.2f} s"
    overlays = [Figure(str(p.relative_to(out)), f"instance {key.split('_')[0].removeprefix('instance')}")
                for key, p in written.items() if key.endswith("_overlay")]
    sections = [
        Section(title, text=(
            "One explanation per instance: signed saliency of the instance's summed score, in score units per "
            "unit of normalised input, comparable across lesions. Peak = max over the lesion dilated by 3 "
            "voxels; inside and ring_j = mean of the first channel inside the lesion and in the j-th ring of "
            f"neighbours around it. Cost of the whole run: {cost_text}."), table=rows),
        Section("Saliency across the lesion border, modality shares, peak by lesion type", figures=[
            Figure(written["radial_profile_plot"].name, "mean saliency by signed distance to the border"),
            Figure(written["modality_share_plot"].name, "share of |saliency| per modality"),
            Figure(written["peak_by_type_plot"].name, "peak saliency per lesion type"),
        ]),
        Section("Instances", figures=overlays),
        *peak_comparison(rows),
        Section("Model", table=case.model.class_rows()),
    ]
    return write_report(out / "report.html", title, sections, command=command)


def peak_comparison(rows: list[dict[str, Any]]) -> list[Any]:
    """With at least two lesion types holding two lesions or more: does peak saliency differ between them
    (Kruskal-Wallis, then pairwise Mann-Whitney, Bonferroni), and how well it separates TP from FP (AUROC)."""
    from segxai.metrics.instance import auroc, compare_groups
    from segxai.report import Section

    peaks = {kind: [row["peak"] for row in rows if row["type"] == kind] for kind in ("TP", "FP", "FN")}
    peaks = {kind: values for kind, values in peaks.items() if len(values) >= 2}
    if len(peaks) < 2:
        return []
    test = compare_groups(peaks)
    table = [{"test": "Kruskal-Wallis", "groups": ", ".join(test["groups"]), "p": test["kruskal"]["p"]}]
    table += [{"test": "Mann-Whitney (Bonferroni)", "groups": f"{pair['a']} vs {pair['b']}", "p": pair["p_adjusted"]}
              for pair in test["pairwise"]]
    if "TP" in peaks and "FP" in peaks:
        table.append({"test": "AUROC of peak saliency, TP vs FP", "groups": "TP, FP", "p": "",
                      "value": auroc(peaks["TP"], peaks["FP"])})
    return [Section("Peak saliency by lesion type: can it flag errors?", table=table)]
