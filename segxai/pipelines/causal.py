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
from segxai.models.case import Case
from segxai.pipelines.grammar import RoiSpec, parse_roi
from segxai.pipelines.options import RunOptions
from segxai.report.views import views_like

POOL_SUFFIXES = (".png", ".jpg", ".jpeg", ".nii", ".nii.gz", ".npy")


@dataclass
class CausalFiles:
    """What a file-based causal run produced: the explanation (blocks) or the component rows, and the paths."""

    explanation: Explanation | None
    rows: list[dict[str, Any]]
    written: dict[str, Path]


def causal_blocks_case(
    case: Case,
    region: str | RoiSpec,
    cls: int,
    out_dir: str | Path,
    *,
    pool_dir: str | Path | None = None,
    params: dict[str, Any] | None = None,
    options: RunOptions = RunOptions(),
) -> CausalFiles:
    """Block ATEs on the Dice of class `cls` inside `region` against the model's own prediction, with maps,
    `blocks.csv`, figures and a report. Treatments are patches from the images in `pool_dir` (PdCR's pool), or
    the `fill` in `params` ("zero", "mean", "blur") without a pool.

    Args:
        case: the case with its model.
        region: an ROI spec of `segxai.pipelines.grammar` (`box:CORNER,SIDE`, `mask:FILE`, ...), not `none`.
        cls: the class whose Dice is the outcome.
        out_dir: the output folder.
        pool_dir: a folder of other images to draw treatment patches from.
        params: `CausalBlocks` settings (block, draws, screen_draws, fill, ...).
        options: seed, progress and the command line shown in the report.
    Returns:
        The explanation, the block rows and the written paths.
    """
    from segxai.io.table import write_csv
    from segxai.methods.perturb.causal_blocks import CausalBlocks, patch_pool
    from segxai.methods.perturb.regions import check_sizes
    from segxai.report.causal_plots import save_causal_figures
    from segxai.targets import RegionDice

    out = _output_dir(out_dir, case, pool_dir)
    mask = _region(region, case, cls)
    params = dict(params or {})
    check_sizes(params.get("block", 8), "block")  # before the pool, which is cut into blocks
    if pool_dir is not None:
        params["pool"] = patch_pool(_pool_images(pool_dir, case), params.get("block", 8), seed=options.seed)
    elif params.get("fill", "pool") == "pool":
        raise SegxaiError("causal blocks need --pool DIR (images to draw treatment patches from) or --param fill=zero")
    try:
        method = CausalBlocks(case.segmenter, **params)
    except (TypeError, ValueError) as error:
        if isinstance(error, SegxaiError):
            raise
        raise SegxaiError(f"bad setting for causal blocks: {error}") from None
    explanation = method.explain(case.inputs, RegionDice(cls, region=mask), seed=options.seed,
                                 progress=options.progress)
    explanation = case.to_image(explanation)
    explanation.stats.update(checkpoint=str(case.model.path), images=[str(p) for p in case.image_files])
    _, like = case.map_format
    written = explanation.save(out, like=like, name="ate", channel_names=["all"], overlay=views_like(like))
    blocks = explanation.stats.get("blocks", [])
    written["blocks_csv"] = write_csv(blocks, out / "blocks.csv")
    figures = save_causal_figures(explanation, out)
    written.update({f"{key}_figure": path for key, path in figures.items()})
    written["report"] = _blocks_report(out, explanation, figures, case, options.command)
    return CausalFiles(explanation, blocks, written)


def components_case(
    case: Case,
    region: str | RoiSpec,
    cls: int,
    layers: Sequence[str],
    out_dir: str | Path,
    *,
    donors_dir: str | Path | None = None,
    params: dict[str, Any] | None = None,
    options: RunOptions = RunOptions(),
) -> CausalFiles:
    """Effects of the named `layers` (and their channels with `params["unit"] = "channel"`) on the Dice of `cls`
    inside `region`, by resample ablation from the images in `donors_dir` (or mean/zero ablation), with
    `components.csv` and a report.

    Args:
        case: the case with its model.
        region: an ROI spec of `segxai.pipelines.grammar`, not `none`.
        cls: the class whose Dice is the outcome.
        layers: dotted module names of the network.
        out_dir: the output folder.
        donors_dir: a folder of other images on the case's grid (resample ablation).
        params: `ComponentEffects` settings (draws, unit, intervention, ...).
        options: seed, progress and the command line shown in the report.
    Returns:
        The component rows and the written paths.
    """
    from segxai.methods.components import ComponentEffects
    from segxai.report import Section, write_report
    from segxai.targets import RegionDice

    out = _output_dir(out_dir, case, donors_dir)
    mask = _region(region, case, cls)
    donors = None
    if donors_dir is not None:
        donors = np.stack([_same_grid(d, case, path) for path, d in _read_folder(donors_dir, case)])
    try:
        effects = ComponentEffects(case.segmenter, list(layers), **(params or {}))
    except TypeError as error:
        raise SegxaiError(f"bad setting for component effects: {error}") from None
    report = effects.explain(case.inputs, RegionDice(cls, region=mask), donors=donors, seed=options.seed,
                             progress=options.progress)
    rows = report.rows()
    written = {"components_csv": report.write_csv(out / "components.csv")}
    text = (f"Effect = mean over draws of Dice(intervened) - Dice(clean) inside the region, {report.intervention} "
            f"ablation, clean Dice {report.base:.3f}; negative = the component supports the segmentation. "
            f"{report.cost.forward_passes} forward passes in {report.cost.seconds:.1f} s.")
    sections = [Section("Component effects (ranked by |effect|)", text=text, table=rows),
                Section("Model", table=case.model.class_rows())]
    written["report"] = write_report(out / "report.html", "Causal effects of network components", sections,
                                     command=options.command)
    return CausalFiles(None, rows, written)


def _output_dir(out_dir: str | Path, case: Case, folder: str | Path | None) -> Path:
    from segxai.io import prepare_output_dir

    return prepare_output_dir(out_dir, [*case.files, *([folder] if folder is not None else [])])


def _region(spec: str | RoiSpec, case: Case, cls: int) -> torch.Tensor:
    """The outcome region: an ROI spec that selects at least one voxel."""
    mask = (parse_roi(spec) if isinstance(spec, str) else spec).resolve(case, cls)
    if mask is None or not bool(mask.any()):
        raise SegxaiError(f"region {spec!r} selects no voxel")
    return mask


def _read_folder(folder: str | Path, case: Case) -> list[tuple[Path, np.ndarray]]:
    """Every image file in `folder`, read as the case's model reads images (normalised, on the model's grid:
    turned to RAS+ for a model trained on volume files)."""
    from segxai.io import load_image

    folder = Path(folder)
    if not folder.is_dir():
        raise SegxaiError(f"{folder} is not a folder of images")
    paths = sorted(p for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(POOL_SUFFIXES))
    if not paths:
        raise SegxaiError(f"{folder} holds no image ({', '.join(POOL_SUFFIXES)})")
    return [(p, case.model.prepare(load_image(p))[0].cpu().numpy()) for p in paths]


def _pool_images(folder: str | Path, case: Case) -> list[np.ndarray]:
    image = case.image
    images = [array for _, array in _read_folder(folder, case)]
    channels = image.array.shape[0]
    wrong = [a.shape for a in images if a.shape[0] != channels or a.ndim != image.array.ndim]
    if wrong:
        raise SegxaiError(f"pool images must have {channels} channel(s) and {image.spatial_dims} spatial axes like "
                          f"the explained image; got {wrong[0]}")
    return images


def _same_grid(array: np.ndarray, case: Case, path: Path) -> np.ndarray:
    if array.shape != tuple(case.inputs.shape):
        raise SegxaiError(f"donor {path.name} has shape {array.shape} as the model reads it; donors must match the "
                          f"image {tuple(case.inputs.shape)}")
    return array


def _blocks_report(out: Path, explanation: Explanation, figures: dict[str, Path], case: Case,
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
        Section("Model", table=case.model.class_rows()),
    ]
    return write_report(out / "report.html", "Causal explanation: block treatment effects", sections, command=command)


def _histogram_rows(histogram: Any) -> list[dict[str, Any]]:
    """One row per bin of `block_stats`' histogram: (-inf, e_0), [e_0, e_1), ..., [e_last, inf)."""
    if not isinstance(histogram, dict):
        return []
    edges = histogram["edges"]
    labels = [f"< {edges[0]:g}", *(f"[{a:g}, {b:g})" for a, b in zip(edges, edges[1:])), f">= {edges[-1]:g}"]
    return [{"bin": label, "blocks": count} for label, count in zip(labels, histogram["counts"])]
