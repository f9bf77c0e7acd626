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


@dataclass
class FileExplanation:
    """An explanation of a file-based run, with the image it read and every path it wrote."""

    explanation: Explanation
    image: Any  # segxai.io.Image
    prediction: np.ndarray
    written: dict[str, Path]
    modality_share: dict[str, float]


def parse_roi(spec: str | None, image: Any, model: SegModel, x: torch.Tensor) -> torch.Tensor | None:
    """A CLI ROI: `mask:FILE` (non-zero voxels, grid checked), `box:START:SIZE` (comma-separated per axis) or
    `prediction:CLS[:MARGIN]` (the model's own prediction, grown by MARGIN voxels)."""
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
    except ValueError as error:
        if isinstance(error, SegxaiError):
            raise
        raise SegxaiError(f"cannot read ROI {spec!r}: {error}") from None
    raise SegxaiError(f"unknown ROI {spec!r}; use mask:FILE, box:START:SIZE (e.g. box:10,20,5:32,32,8) or prediction:CLS[:MARGIN]")


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
    from segxai.checkpoint import load_checkpoint
    from segxai.io import load_image, prepare_output_dir, save_array
    from segxai.methods import get_method
    from segxai.preprocess import normalize_intensity
    from segxai.targets import parse_target

    out = prepare_output_dir(out_dir, [checkpoint, *images])
    model, config = load_checkpoint(checkpoint, device=device)
    image = load_image(images)
    x, _ = model.prepare(normalize_intensity(image.array, config.get("intensity")))
    explainer = get_method(method, model, **(params or {}))
    explanation = explainer.explain(
        x[0], parse_target(target), roi=parse_roi(roi, image, model, x[0]), seed=seed, progress=progress
    )
    explanation.stats["checkpoint"] = str(checkpoint)
    explanation.stats["images"] = [str(p) for p in images]
    prediction = model.predict(x[0]).cpu().numpy()
    extension = ".nii.gz" if image.kind in ("nifti", "dicom") or image.spatial_dims == 3 else ".png"
    like = image if extension == ".nii.gz" else None
    channels = explanation.attribution.shape[0]
    names = list(image.channel_names) if channels == len(image.channel_names) else ["all"] * channels
    share = modality_share(explanation, names) if channels == len(image.channel_names) else {}
    explanation.stats["modality_share"] = share
    written = explanation.save(out, like=like, channel_names=names)
    written["prediction"] = save_array(prediction.astype(np.uint8), out / f"prediction{extension}", like=like)
    written["report"] = _write_report(out, explanation, written, config, share, title or f"{method} of {target}", command)
    return FileExplanation(explanation, image, prediction, written, share)


def modality_share(explanation: Explanation, channel_names: Sequence[str]) -> dict[str, float]:
    """Each input channel's share of the total |attribution| (sums to 1): which modality the model relied on."""
    channel_axis = 1 if explanation.batched else 0
    mass = explanation.attribution.abs().sum(dim=tuple(d for d in range(explanation.attribution.ndim) if d != channel_axis))
    total = float(mass.sum())
    return {name: (float(m) / total if total > 0 else 0.0) for name, m in zip(channel_names, mass)}


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
        Section("Model", table=[{"class": k, "name": v, "validation Dice": config.get("validation_dice", {}).get(v, "")}
                                for k, v in config.get("names", {}).items()]),
        Section("Files", table=[{"output": k, "file": p.name} for k, p in written.items()]),
    ]
    return write_report(out / "report.html", title, sections, command=command)


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",")]
