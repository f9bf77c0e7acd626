"""Explain a model on real files: checkpoint + image files in, maps with the scan's geometry and a report out.

This is what `segxai explain` runs; the demo calls it too, so the file path is exercised end to end.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from segxai.errors import SegxaiError
from segxai.explanation import Explanation
from segxai.model import SegModel
from segxai.report.overlay import save_overlay


@dataclass
class FileExplanation:
    """An explanation of a file-based run, with the image it read and every path it wrote."""

    explanation: Explanation
    image: Any  # segxai.io.Image
    prediction: np.ndarray
    written: dict[str, Path]
    modality_share: dict[str, float]


def parse_roi(spec: str | None, image: Any, model: SegModel, x: torch.Tensor) -> torch.Tensor | None:
    """A CLI ROI: `mask:FILE` (non-zero voxels, grid checked), `box:START:SIZE` (comma-separated per axis),
    `prediction:CLS[:MARGIN]` (the model's own prediction, grown by MARGIN voxels) or `text:PROMPT@LOCALIZER.pt`
    (the organ a trained localizer finds from its name)."""
    from segxai import roi
    from segxai.io import load_mask

    if spec is None:
        return None
    kind, _, rest = spec.partition(":")
    try:
        if kind == "mask" and rest:
            return roi.from_mask(load_mask(rest, like=image) > 0)
        if kind == "box":
            start, size = rest.split(":")
            return roi.from_box(_ints(start), _ints(size), image.spatial_shape)
        if kind == "prediction":
            cls, _, margin = rest.partition(":")
            return roi.from_prediction(model, x, int(cls), float(margin or 0))
        if kind == "text" and "@" in rest:
            return text_roi(rest, image)
    except ValueError as error:
        if isinstance(error, SegxaiError):
            raise
        raise SegxaiError(f"cannot read ROI {spec!r}: {error}") from None
    raise SegxaiError(f"unknown ROI {spec!r}; use mask:FILE, box:START:SIZE (e.g. box:10,20,5:32,32,8), "
                      "prediction:CLS[:MARGIN] or text:PROMPT@LOCALIZER.pt")


def text_roi(spec: str, image: Any, margin: float = 8.0) -> torch.Tensor:
    """The ROI `PROMPT@LOCALIZER.pt` (e.g. `left kidney@localizer.pt`) on a loaded image, grown by `margin`."""
    from segxai import roi
    from segxai.localize import load_localizer

    prompt, _, path = spec.rpartition("@")
    if not prompt.strip() or not path:
        raise SegxaiError(f"text ROI {spec!r}: give PROMPT@LOCALIZER.pt, e.g. 'left kidney@localizer.pt'")
    return roi.from_text(prompt, load_localizer(path), image.array, margin=margin)


def explain_files(
    checkpoint: str | Path,
    images: Sequence[str | Path],
    target: str,
    out_dir: str | Path,
    *,
    method: str = "saliency",
    roi: str | None = None,
    seed: int = 0,
    device: str | None = None,
    progress: bool = True,
    title: str | None = None,
    command: str | None = None,
    params: dict[str, Any] | None = None,
) -> FileExplanation:
    """Load a checkpoint and image file(s) (several = modalities), explain `target`, and write NIfTI/PNG maps
    with the source geometry, the predicted label map, the stats JSON, an overlay and `report.html`."""
    from segxai.io import save_array
    from segxai.methods import get_method
    from segxai.targets import parse_target

    out, model, config, image, x = load_inputs(checkpoint, images, out_dir, device)
    explainer = get_method(method, model, **(params or {}))
    explanation = explainer.explain(
        x[0], parse_target(target), roi=parse_roi(roi, image, model, x[0]), seed=seed, progress=progress
    )
    explanation.stats["checkpoint"] = str(checkpoint)
    explanation.stats["images"] = [str(p) for p in images]
    prediction = model.predict(x[0]).cpu().numpy()
    extension, like = output_format(image)
    channels = explanation.attribution.shape[0]
    names = list(image.channel_names) if channels == len(image.channel_names) else ["all"] * channels
    share = modality_share(explanation, names) if channels == len(image.channel_names) else {}
    explanation.stats["modality_share"] = share
    written = explanation.save(out, like=like, channel_names=names, overlay=save_overlay)
    written["prediction"] = save_array(prediction.astype(np.uint8), out / f"prediction{extension}", like=like)
    written["report"] = _write_report(out, explanation, written, config, share, title or f"{method} of {target}", command)
    return FileExplanation(explanation, image, prediction, written, share)


@dataclass
class InstanceFileExplanation:
    """Instance explanations of a file-based run: one per instance, their statistics rows, and the paths written."""

    explanations: list[Explanation]
    rows: list[dict[str, Any]]
    written: dict[str, Path]


def explain_instance_files(
    checkpoint: str | Path,
    images: Sequence[str | Path],
    cls: int,
    out_dir: str | Path,
    *,
    method: str = "smoothgrad",
    reference: str | Path | None = None,
    seed: int = 0,
    device: str | None = None,
    progress: bool = True,
    title: str | None = None,
    command: str | None = None,
    params: dict[str, Any] | None = None,
) -> InstanceFileExplanation:
    """Explain every predicted instance of class `cls` (and, given a `reference` mask file, type them TP/FP and
    add the missed FN lesions) with `segxai.explain_instances`; write one map per instance and modality with the
    source geometry, the instance label map, `instances.csv` (peak saliency, inside and ring means, modality
    shares), `radial_profiles.csv`, plots and `report.html`.

    `params` go to `explain_instances` for the shared gradient methods (smoothgrad, saliency: n_samples, noise,
    aggregation, crop, ...) and to the method's constructor otherwise (e.g. gradcampp: layer)."""
    from segxai.io import load_mask, save_array
    from segxai.methods import get_method
    from segxai.methods.instance_saliency import SHARED_METHODS, explain_instances
    from segxai.metrics import write_csv
    from segxai.metrics.instance import instance_rows, radial_profile

    out, model, config, image, x = load_inputs(checkpoint, images, out_dir, device, [reference] if reference else [])
    truth = None if reference is None else load_mask(reference, like=image) > 0
    params = dict(params or {})
    shared = method in SHARED_METHODS
    explainer = method if shared else get_method(method, model, **params)
    try:
        explanations = explain_instances(model, x[0], cls, explainer, reference=truth, seed=seed, progress=progress,
                                         **(params if shared else {}))
    except TypeError as error:
        raise SegxaiError(f"bad setting for instance {method}: {error}") from None
    names = list(image.channel_names)
    channels = explanations[0].attribution.shape[0]
    names = names if channels == len(names) else [f"c{c}" for c in range(channels)]
    extension, like = output_format(image)
    written: dict[str, Path] = {}
    labels = np.zeros(image.spatial_shape, np.uint16)
    for explanation in explanations:
        index = explanation.stats["instance"]
        labels[explanation.target_mask.numpy()] = index
        written.update(explanation.save(out / "instances", like=like, name=f"instance{index:03d}", channel_names=names, overlay=save_overlay))
    written["instances"] = save_array(labels, out / f"instances{extension}", like=like)
    spacing = image.spacing
    rows = instance_rows(explanations, channel_names=names, spacing=spacing)
    written["instances_csv"] = write_csv(rows, out / "instances.csv")
    profiles = {e.stats["instance"]: radial_profile(e.attribution[0], e.target_mask, spacing=spacing)
                for e in explanations}
    written["radial_profiles_csv"] = write_csv(
        [{"instance": k, **row} for k, profile in profiles.items() for row in profile.rows()], out / "radial_profiles.csv")
    written.update(_instance_plots(out, rows, profiles, names[0]))
    written["report"] = _write_instance_report(out, explanations, rows, written, config,
                                               title or f"{method} of every instance of class {cls}", command)
    return InstanceFileExplanation(explanations, rows, written)


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


def _write_instance_report(out: Path, explanations: list[Explanation], rows: list[dict[str, Any]],
                           written: dict[str, Path], config: dict, title: str, command: str | None) -> Path:
    from segxai.report import Figure, Section, write_report

    stats = explanations[0].stats
    cost = {key: stats[key] for key in ("forward_passes", "backward_passes", "seconds") if key in stats}
    overlays = [Figure(str(p.relative_to(out)), f"instance {key.split('_')[0].removeprefix('instance')}")
                for key, p in written.items() if key.endswith("_overlay")]
    sections = [
        Section(title, text=(
            "One explanation per instance: signed saliency of the instance's summed score, in score units per "
            "unit of normalised input, comparable across lesions. Peak = max over the lesion dilated by 3 "
            "voxels; inside and ring_j = mean of the first channel inside the lesion and in the j-th ring of "
            f"neighbours around it. Cost of the whole run: {cost}."), table=rows),
        Section("Saliency across the lesion border, modality shares, peak by lesion type", figures=[
            Figure(written["radial_profile_plot"].name, "mean saliency by signed distance to the border"),
            Figure(written["modality_share_plot"].name, "share of |saliency| per modality"),
            Figure(written["peak_by_type_plot"].name, "peak saliency per lesion type"),
        ]),
        Section("Instances", figures=overlays),
        *_peak_comparison(rows),
        Section("Model", table=model_table(config)),
    ]
    return write_report(out / "report.html", title, sections, command=command)


def _peak_comparison(rows: list[dict[str, Any]]) -> list[Any]:
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


def modality_share(explanation: Explanation, channel_names: Sequence[str]) -> dict[str, float]:
    """Each input channel's share of the total |attribution| over the whole grid (sums to 1; 0 for an all-zero
    map): which modality the model relied on."""
    from segxai.metrics.instance import modality_share as share_in

    shares = share_in(explanation, np.ones(explanation.spatial_shape, dtype=bool))
    return {name: float(np.nan_to_num(share)) for name, share in zip(channel_names, shares)}


def _write_report(out: Path, explanation: Explanation, written: dict[str, Path], config: dict, share: dict, title: str, command: str | None) -> Path:
    from segxai.report import Figure, Section, write_report
    from segxai.targets import description_text

    stats = explanation.stats
    caption = "attribution summed over channels; target outlined"
    figures = [Figure(p.name, caption) for key, p in written.items() if key.endswith("_overlay")]
    rows = [{"quantity": k, "value": v} for k, v in stats.items() if k not in ("params", "target", "images")]
    rows += [{"quantity": f"share of |attribution| in {k}", "value": v} for k, v in share.items()]
    sections = [
        Section(title, text=f"Target: {description_text(stats['target'])}", figures=figures, table=rows),
        Section("Model", table=model_table(config)),
        Section("Files", table=[{"output": k, "file": p.name} for k, p in written.items()]),
    ]
    return write_report(out / "report.html", title, sections, command=command)


def load_inputs(checkpoint: str | Path, images: Sequence[str | Path], out_dir: str | Path, device: str | None,
                other_inputs: Sequence[str | Path] = ()) -> tuple[Path, SegModel, dict, Any, torch.Tensor]:
    """The output directory (checked never to hold an input), the model and its config, the image, and the
    normalised input batch."""
    from segxai.models.checkpoint import load_checkpoint
    from segxai.io import load_image, prepare_output_dir
    from segxai.preprocess import normalize_intensity

    out = prepare_output_dir(out_dir, [checkpoint, *images, *other_inputs])
    model, config = load_checkpoint(checkpoint, device=device)
    image = load_image(images)
    x, _ = model.prepare(normalize_intensity(image.array, config.get("intensity")))
    return out, model, config, image, x


def output_format(image: Any) -> tuple[str, Any]:
    """The extension of label maps written for `image` (NIfTI for volumes and scans, PNG for 2D pictures) and the
    grid reference that carries its geometry."""
    extension = ".nii.gz" if image.kind in ("nifti", "dicom") or image.spatial_dims == 3 else ".png"
    return extension, image if extension == ".nii.gz" else None


def model_table(config: dict) -> list[dict[str, Any]]:
    """The checkpoint's classes with their names and validation Dice, for report tables."""
    return [{"class": k, "name": v, "validation Dice": config.get("validation_dice", {}).get(v, "")}
            for k, v in config.get("names", {}).items()]


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",")]
