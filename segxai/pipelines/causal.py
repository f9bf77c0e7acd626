"""Causal explanations on real files (what `segxai causal` runs): block ATEs of one image on a region's Dice, or
the effects of network components, with maps that keep the scan's geometry, tables, figures and a report."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from segxai.errors import SegxaiError
from segxai.explanation import Explanation
from segxai.pipelines.explain import load_inputs, model_table, output_format, parse_roi
from segxai.report.overlay import save_overlay

POOL_SUFFIXES = (".png", ".jpg", ".jpeg", ".nii", ".nii.gz", ".npy")


@dataclass
class CausalFiles:
    """What a file-based causal run produced: the explanation (blocks) or the component rows, and the paths."""

    explanation: Explanation | None
    rows: list[dict[str, Any]]
    written: dict[str, Path]


def causal_blocks_files(
    checkpoint: str | Path,
    images: Sequence[str | Path],
    region: str,
    cls: int,
    out_dir: str | Path,
    *,
    pool_dir: str | Path | None = None,
    params: dict[str, Any] | None = None,
    seed: int = 0,
    device: str | None = None,
    progress: bool = True,
    command: str | None = None,
) -> CausalFiles:
    """Block ATEs on the Dice of class `cls` inside `region` (a CLI ROI spec: `box:...`, `mask:FILE`) against the
    model's own prediction. Treatments are patches from the images in `pool_dir` (PdCR's pool), or the `fill`
    in `params` ("zero", "mean", "blur") without a pool."""
    from segxai.methods.perturb.causal_blocks import CausalBlocks, patch_pool
    from segxai.metrics import write_csv
    from segxai.report.causal_plots import save_causal_figures
    from segxai.targets import RegionDice

    out, model, config, image, x = load_inputs(checkpoint, images, out_dir, device, [pool_dir] if pool_dir else [])
    mask = _region(region, image, model, x)
    params = dict(params or {})
    if pool_dir is not None:
        params["pool"] = patch_pool(_pool_images(pool_dir, config, image), params.get("block", 8), seed=seed)
    elif params.get("fill", "pool") == "pool":
        raise SegxaiError("causal blocks need --pool DIR (images to draw treatment patches from) or --param fill=zero")
    try:
        method = CausalBlocks(model, **params)
    except TypeError as error:
        raise SegxaiError(f"bad setting for causal blocks: {error}") from None
    explanation = method.explain(x[0], RegionDice(cls, region=mask), seed=seed, progress=progress)
    explanation.stats.update(checkpoint=str(checkpoint), images=[str(p) for p in images])
    _, like = output_format(image)
    written = explanation.save(out, like=like, name="ate", channel_names=["all"], overlay=save_overlay)
    blocks = explanation.stats.get("blocks", [])
    written["blocks_csv"] = write_csv(blocks, out / "blocks.csv")
    figures = save_causal_figures(explanation, out)
    written.update({f"{key}_figure": path for key, path in figures.items()})
    written["report"] = _blocks_report(out, explanation, figures, config, command)
    return CausalFiles(explanation, blocks, written)


def component_files(
    checkpoint: str | Path,
    images: Sequence[str | Path],
    region: str,
    cls: int,
    layers: Sequence[str],
    out_dir: str | Path,
    *,
    donors_dir: str | Path | None = None,
    params: dict[str, Any] | None = None,
    seed: int = 0,
    device: str | None = None,
    progress: bool = True,
    command: str | None = None,
) -> CausalFiles:
    """Effects of the named `layers` (and their channels with `params["unit"] = "channel"`) on the Dice of `cls`
    inside `region`, by resample ablation from the images in `donors_dir` (or mean/zero ablation)."""
    from segxai.methods.components import ComponentEffects
    from segxai.report import Section, write_report
    from segxai.targets import RegionDice

    out, model, config, image, x = load_inputs(checkpoint, images, out_dir, device, [donors_dir] if donors_dir else [])
    mask = _region(region, image, model, x)
    donors = None
    if donors_dir is not None:
        donors = np.stack([_same_grid(d, image, path) for path, d in _read_folder(donors_dir, config)])
    try:
        effects = ComponentEffects(model, list(layers), progress=progress, **(params or {}))
    except TypeError as error:
        raise SegxaiError(f"bad setting for component effects: {error}") from None
    report = effects.estimate(x[0], RegionDice(cls, region=mask), donors=donors, seed=seed)
    rows = report.rows()
    written = {"components_csv": report.write_csv(out / "components.csv")}
    text = (f"Effect = mean over draws of Dice(intervened) - Dice(clean) inside the region, {report.intervention} "
            f"ablation, clean Dice {report.base:.3f}; negative = the component supports the segmentation. "
            f"{report.forward_passes} forward passes in {report.seconds:.1f} s.")
    sections = [Section("Component effects (ranked by |effect|)", text=text, table=rows),
                Section("Model", table=model_table(config))]
    written["report"] = write_report(out / "report.html", "Causal effects of network components", sections,
                                     command=command)
    return CausalFiles(None, rows, written)


def _region(spec: str, image: Any, model: Any, x: torch.Tensor) -> torch.Tensor:
    """The target region from a CLI ROI spec; `box:i,j,S` (a corner and one side, PdCR's square region) too."""
    kind, _, rest = spec.partition(":")
    if kind == "box" and ":" not in rest:
        values = [int(v) for v in rest.split(",") if v.strip()]
        if len(values) != image.spatial_dims + 1:
            raise SegxaiError(f"region {spec!r}: give box:CORNER,SIDE (e.g. box:64,80,32) or box:START:SIZE")
        spec = f"box:{','.join(map(str, values[:-1]))}:{','.join([str(values[-1])] * image.spatial_dims)}"
    mask = parse_roi(spec, image, model, x[0])
    if mask is None or not bool(mask.any()):
        raise SegxaiError(f"region {spec!r} selects no voxel")
    return mask


def _read_folder(folder: str | Path, config: dict) -> list[tuple[Path, np.ndarray]]:
    """Every image file in `folder`, normalised like the model's input."""
    from segxai.io import load_image
    from segxai.preprocess import normalize_intensity

    folder = Path(folder)
    if not folder.is_dir():
        raise SegxaiError(f"{folder} is not a folder of images")
    paths = sorted(p for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(POOL_SUFFIXES))
    if not paths:
        raise SegxaiError(f"{folder} holds no image ({', '.join(POOL_SUFFIXES)})")
    return [(p, normalize_intensity(load_image(p).array, config.get("intensity"))) for p in paths]


def _pool_images(folder: str | Path, config: dict, image: Any) -> list[np.ndarray]:
    images = [array for _, array in _read_folder(folder, config)]
    channels = image.array.shape[0]
    wrong = [a.shape for a in images if a.shape[0] != channels or a.ndim != image.array.ndim]
    if wrong:
        raise SegxaiError(f"pool images must have {channels} channel(s) and {image.spatial_dims} spatial axes like "
                          f"the explained image; got {wrong[0]}")
    return images


def _same_grid(array: np.ndarray, image: Any, path: Path) -> np.ndarray:
    if array.shape != image.array.shape:
        raise SegxaiError(f"donor {path.name} has shape {array.shape}; donors must match the image {image.array.shape}")
    return array


def _blocks_report(out: Path, explanation: Explanation, figures: dict[str, Path], config: dict,
                   command: str | None) -> Path:
    from segxai.report import Figure, Section, write_report

    stats = explanation.stats
    summary = {key: stats[key] for key in ("base_score", "screened_blocks", "estimated_blocks",
                                           "unreachable_blocks", "forward_passes", "seconds") if key in stats}
    counts = stats.get("block_counts", {})
    text = ("ATE of each block = mean over treatments of 100 x (Dice(treated) - Dice(original)) inside the region "
            "(green outline), in Dice points; red (negative) = the original content supports the segmentation, "
            "blue = it hurts it. Blocks in the region are not treated; blocks beyond the network's receptive "
            "field cost no forward pass (their effect is exactly zero).")
    sections = [
        Section("Causal block effects (PdCR)", text=text, figures=[
            Figure(figures["overlay"].name, "ATE map"), Figure(figures["pie"].name, "blocks by sign"),
            Figure(figures["bar"].name, "colour scale")], table=[{**summary, **counts}]),
        Section("Histogram of block ATEs", table=_histogram_rows(stats.get("histogram"))),
        Section("Model", table=model_table(config)),
    ]
    return write_report(out / "report.html", "Causal explanation: block treatment effects", sections, command=command)


def _histogram_rows(histogram: Any) -> list[dict[str, Any]]:
    """One row per bin of `block_stats`' histogram: (-inf, e_0), [e_0, e_1), ..., [e_last, inf)."""
    if not isinstance(histogram, dict):
        return []
    edges = histogram["edges"]
    labels = [f"< {edges[0]:g}", *(f"[{a:g}, {b:g})" for a, b in zip(edges, edges[1:])), f">= {edges[-1]:g}"]
    return [{"bin": label, "blocks": count} for label, count in zip(labels, histogram["counts"])]
