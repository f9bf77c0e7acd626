"""XAI-CLIP end to end: occlusion, RISE and LIME unrestricted, restricted to an ROI from the true organ mask,
and restricted to an ROI from text (the organ's name, localised by a text-prompted localizer).

    .venv/bin/python benchmarks/xai_clip.py --case phantom|ct|polyp|all --out benchmarks/results [--small]

The localizer is 2D and runs slice by slice over the axial slices (a 3D one took ~1.6 s a training step at batch 4
on one CPU thread):
- phantom: trained on the axial slices of the segmenter's 24 training phantoms, applied to the held-out phantom;
- ct: trained as `benchmarks/localize.py` does (24 of the 30 slices), applied to the cropped volume the segmenter
  explains, so the text ROI is in-sample on 24 of its 30 slices (one patient; the segmenter is fitted to it too).
The text ROI is `probability >= 0.5`, the largest component, holes filled, grown by the margin of the mask ROI.
Each call is measured and scored as in `perturbation.py` (same target, top-k IoU/Dice of the map with the organ);
seconds of a text-ROI call are given without and with the localisation (prediction + post-processing); the
localizer's training time is reported once. Writes `xai_clip_<case>.md/.csv`.

- polyp: the 10 held-out 128x128 EndoTect polyps and the 2D polyp U-Net of `perturbation.py` (no localizer: the
  third ROI is the model's own prediction grown by the margin, what a user without a mask has).

Beside every score sit the trivial baselines of the same image (`segxai.metrics.baselines`): the Dice of the ROI
itself with the organ, the top-k Dice of a blurred ROI and of a centred blob of the organ's area under the maps'
own rule (`roi_baseline_dice` = the better ROI map; the true-mask ROI for unrestricted runs, whose target is
defined on the mask). The summary
(`segxai.metrics.compare_roi_guided`) gives the runtime/Dice/IoU changes against the unrestricted run and says
where a variant does not beat its ROI. `--small` uses 100 RISE masks and 100 LIME samples (a quicker run).
"""
from __future__ import annotations

import argparse
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import cases  # benchmarks/*.py, beside this file
import localize
from measuring import cpu_name, markdown
from perturbation import SEED, method_row

from segxai.data import phantom_dataset
from segxai.localize import Localizer
from segxai.roi import from_probability
from segxai.metrics import compare_roi_guided, explanation_overlap, roi_baseline, write_csv
from segxai.metrics.baselines import centred_blob, gaussian_blur
from segxai.roi import from_mask
from segxai.targets import ClassRegion
from segxai.models.train import dice_per_class

ENCODER = "tiny"
STEPS = 600  # localizer training steps, as in localize.py
PHANTOM_TRAIN = 24  # cases.load_case("phantom") trains the segmenter on the first 24 phantoms of seed cases.SEED
METHODS = ("occlusion", "rise", "lime")
# Per case: organs, ROI margin (voxels, both ROIs), batch size, and each method's settings (fewer RISE masks on
# the phantom than perturbation.py, to stay near 10 min on one thread).
SETTINGS: dict[str, dict[str, Any]] = {
    "phantom": {"organs": ("kidney_left", "liver"), "margin": 4, "batch": 16,
                "occlusion": {"window": 8, "stride": 8, "fill": "zero"},
                "rise": {"n_masks": 300, "grid": 7}, "lime": {"n_samples": 300, "n_segments": 200}},
    "ct": {"organs": ("kidney_left", "liver"), "margin": 4, "batch": 8,
           "occlusion": {"window": 8, "stride": 8, "fill": "zero"},
           "rise": {"n_masks": 300, "grid": 7}, "lime": {"n_samples": 300, "n_segments": 300}},
}


POLYP: dict[str, Any] = {"margin": 8, "batch": 16, "occlusion": {"window": 16, "stride": 8, "fill": "zero"},
                         "rise": {"n_masks": 300, "grid": 7}, "lime": {"n_samples": 300, "n_segments": 100}}
SMALL = {"rise": {"n_masks": 100}, "lime": {"n_samples": 100}}  # --small
VARIANTS = {"none": "unrestricted", "true mask": "roi", "text": "text roi", "prediction": "prediction roi"}


def small(settings: dict[str, Any]) -> dict[str, Any]:
    """The settings with `SMALL`'s sample counts."""
    return {**settings, **{m: {**settings[m], **changes} for m, changes in SMALL.items()}}


def baselines(mask: np.ndarray, roi: torch.Tensor | None, mask_roi: torch.Tensor) -> dict[str, float]:
    """The trivial maps' Dice with the organ on this image: the ROI itself as a mask (`roi_mask_dice`), and the
    top-k (k = organ voxels, the maps' own rule) Dice of the blurred ROI and of a centred blob of the organ's
    area. An unrestricted run is held to the true-mask ROI, the region its mask-defined target already carries.
    `roi_baseline_dice` is the better of the two ROI maps: what the ROI alone scores."""
    free = mask_roi if roi is None else roi
    top_k = float(mask.mean())
    blurred = gaussian_blur(free.double(), 2.0)
    blob = centred_blob(mask.shape, int(mask.sum())).double()
    found = {"roi_mask_dice": round(roi_baseline(free, mask)["dice"], 4),
             "blurred_roi_dice": round(explanation_overlap(blurred, mask, top_k=top_k)["dice"], 4),
             "centred_blob_dice": round(explanation_overlap(blob, mask, top_k=top_k)["dice"], 4)}
    return {"roi_baseline_dice": max(found["roi_mask_dice"], found["blurred_roi_dice"]), **found}


def comparison(rows: list[dict[str, Any]], keys: tuple[str, ...]) -> list[dict[str, Any]]:
    """The XAI-CLIP table per `keys` group (organ, or none): changes vs unrestricted and the ROI verdict."""
    table = []
    for group in dict.fromkeys(tuple(r[k] for k in keys) for r in rows):
        chosen = [r for r in rows if tuple(r[k] for k in keys) == group]
        records = [{**r, "variant": VARIANTS[r["roi"]], "forward_voxels": r["voxel_passes"]} for r in chosen]
        table += [{**dict(zip(keys, group)), **row} for row in compare_roi_guided(records)]
    return table


COMPARISON_COLUMNS = ("method", "variant", "images", "forward_passes", "seconds", "iou", "dice", "runtime change %",
                      "Dice change %", "IoU change %", "ROI baseline Dice", "beats ROI baseline")


def training_slices(name: str, case: cases.Case) -> tuple[list[np.ndarray], list[np.ndarray], dict[int, str], dict]:
    """The localizer's 2D training images, label maps, organ names and intensity window for case `name`."""
    if name == "ct":
        images, labels, _, _ = localize.slices()
        return images, labels, localize.ORGANS, localize.WINDOW
    phantoms = phantom_dataset("abdomen", PHANTOM_TRAIN, cases.PHANTOM_SHAPE, seed=cases.SEED)
    images = [p.image[..., z] for p in phantoms for z in range(p.image.shape[-1])]
    labels = [p.labels[..., z] for p in phantoms for z in range(p.labels.shape[-1])]
    return images, labels, dict(phantoms[0].names), case.config["intensity"]


def localise(localizer: Localizer, volume: np.ndarray, prompt: str,
             margin: int) -> tuple[torch.Tensor, np.ndarray, float]:
    """The text ROI of a `(C, H, W, D)` volume (2D localizer, slice by slice), the localised organ before the
    margin, and the seconds both took."""
    start = time.perf_counter()
    probability = localizer.predict(volume, prompt)
    organ = from_probability(probability)
    roi = from_mask(organ, margin)
    return roi, organ.numpy(), time.perf_counter() - start


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two boolean masks (1.0 when both are empty)."""
    return dice_per_class(np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64), [1])[1]


def explain_organ(case: cases.Case, organ: str, localizer: Localizer, settings: dict[str, Any]
                  ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Every method in each ROI setting for one organ, and how well its text ROI matches the organ."""
    x = torch.from_numpy(case.normalized(0))
    mask = case.labels[0] == case.label_of(organ)
    target = ClassRegion(case.label_of(organ), mask, score="prob", reduce="mean")
    prompt = localize.prompt_of(organ)
    text_roi, localised, seconds = localise(localizer, case.images[0], prompt, settings["margin"])
    mask_roi = from_mask(mask, settings["margin"])
    rois = {"none": (None, 0.0), "true mask": (mask_roi, 0.0), "text": (text_roi, seconds)}
    rows = []
    for method in METHODS:
        for setting, (roi, extra) in rois.items():
            row = method_row(case.model, x, mask, roi, target, method, settings[method], settings["batch"])
            rows.append({"organ": organ, "method": method, "roi": setting, **row, **baselines(mask, roi, mask_roi),
                         "seconds_with_localisation": round(row["seconds"] + extra, 4),
                         "roi_voxels": None if roi is None else int(roi.sum())})
    quality = {"organ": organ, "prompt": prompt, "localisation_seconds": seconds,
               "dice_localised_vs_organ": dice(localised, mask), "dice_text_roi_vs_mask_roi": dice(text_roi, mask_roi),
               "organ_share_in_text_roi": float(text_roi.numpy()[mask].mean()),
               "organ_voxels": int(mask.sum()), "text_roi_voxels": int(text_roi.sum()),
               "mask_roi_voxels": int(mask_roi.sum())}
    return rows, quality


def run(name: str, out: Path, quick: bool = False) -> str:
    """Train the case's localizer, explain each organ in the three ROI settings, write and return the markdown."""
    if name == "polyp":
        return run_polyp(out, quick)
    start = time.perf_counter()
    settings = small(SETTINGS[name]) if quick else SETTINGS[name]
    case = cases.load_case(name)
    images, labels, names, intensity = training_slices(name, case)
    localizer, train_seconds = localize.fit(images, labels, names, ENCODER, intensity, STEPS, SEED)
    with torch.no_grad():  # warm up the network once so the first measured call pays no start-up cost
        case.model(torch.from_numpy(case.normalized(0))[None])
    rows, quality = [], []
    for organ in settings["organs"]:
        found, match = explain_organ(case, organ, localizer, settings)
        rows += found
        quality.append(match)
    match_of = {match["organ"]: match for match in quality}
    write_csv([{"case": name, **row, **match_of[row["organ"]], "localizer_train_seconds": round(train_seconds, 1)}
               for row in rows], out / f"xai_clip_{name}.csv")
    for row in rows:
        row["voxel_passes_M"] = row["voxel_passes"] / 1e6
    method_text = "; ".join(f"{m} {settings[m]}" for m in METHODS)
    text = "\n\n".join([
        f"# {name}: XAI-CLIP, explanations unrestricted vs ROI from the true mask vs ROI from text",
        f"{date.today()}, {cpu_name()}, {torch.get_num_threads()} torch thread(s), torch {torch.__version__}; input "
        f"{tuple(case.images[0].shape)}; total {time.perf_counter() - start:.0f} s.",
        f"Settings: {method_text}; batch size {settings['batch']}; seed {SEED}; both ROIs grown by "
        f"{settings['margin']} voxels. Localizer: 2D, encoder `{ENCODER}`, {STEPS} steps on {len(images)} axial "
        f"slices, trained in {train_seconds:.0f} s (not counted below), applied slice by slice.",
        "Text ROI vs the organ: Dice of the localised organ (before the margin) with the organ mask, Dice of the "
        "text ROI with the true-mask ROI, and the share of the organ's voxels inside the text ROI.",
        markdown(quality, ("organ", "prompt", "localisation_seconds", "dice_localised_vs_organ",
                           "dice_text_roi_vs_mask_roi", "organ_share_in_text_roi", "organ_voxels", "text_roi_voxels",
                           "mask_roi_voxels")),
        f"Model: {model_text(case)}.",
        "Explanations: voxel_passes_M = millions of input voxels carried by forward passes; "
        "seconds_with_localisation adds the text ROI's localisation time; iou/dice: top-k binarised map "
        "(k = organ voxels) vs organ; roi_mask_dice: the ROI itself (the true-mask ROI for `none`) as the map; "
        "blurred_roi_dice / centred_blob_dice: those trivial maps under the same top-k rule; roi_baseline_dice: the "
        "better of the two ROI maps.",
        markdown(rows, ("organ", "method", "roi", "forward_passes", "voxel_passes_M", "seconds",
                        "seconds_with_localisation", "iou", "dice", "roi_mask_dice", "blurred_roi_dice",
                        "centred_blob_dice", "roi_voxels")),
        "XAI-CLIP's comparison (changes vs the unrestricted run; `beats ROI baseline` = the map's Dice above the "
        "ROI's own):",
        markdown(comparison(rows, ("organ",)), ("organ", *COMPARISON_COLUMNS)),
    ]) + "\n"
    (out / f"xai_clip_{name}.md").write_text(text)
    return text


def model_text(case: cases.Case) -> str:
    """The model and its own Dice per class (validation Dice; for the CT, fitted to that volume, a training Dice)."""
    kind = "training Dice (fitted to this volume)" if case.name == "ct" else "validation Dice"
    scores = ", ".join(f"{organ} {value:.3f}" for organ, value in case.dice.items())
    network = case.config.get("network", {})
    return (f"segxai preset `{case.config.get('preset')}` U-Net (channels {network.get('channels')}, strides "
            f"{network.get('strides')}), {kind}: {scores}")


def run_polyp(out: Path, quick: bool) -> str:
    """The polyps: each held-out image, unrestricted vs the true-mask ROI vs the prediction ROI."""
    start = time.perf_counter()
    settings = small(POLYP) if quick else POLYP
    case = cases.load_case("polyp")
    with torch.no_grad():
        case.model(torch.from_numpy(case.normalized(0))[None])
    rows, skipped = [], []
    for index in range(len(case.images)):
        x = torch.from_numpy(case.normalized(index))
        mask = case.labels[index] == 1
        predicted = case.model.predict(x).numpy() == 1
        if not mask.any() or not predicted.any():
            skipped.append(index)
            continue
        target = ClassRegion(1, mask, score="prob", reduce="mean")
        mask_roi = from_mask(mask, settings["margin"])
        rois = {"none": None, "true mask": mask_roi, "prediction": from_mask(predicted, settings["margin"])}
        for method in METHODS:
            for setting, roi in rois.items():
                row = method_row(case.model, x, mask, roi, target, method, settings[method], settings["batch"])
                rows.append({"image": index, "method": method, "roi": setting, **row,
                             **baselines(mask, roi, mask_roi), "roi_voxels": None if roi is None else int(roi.sum())})
    write_csv([{"case": "polyp", **row} for row in rows], out / "xai_clip_polyp.csv")
    method_text = "; ".join(f"{m} {settings[m]}" for m in METHODS)
    text = "\n\n".join([
        "# polyp: XAI-CLIP, explanations unrestricted vs ROI from the true mask vs ROI from the prediction",
        f"{date.today()}, {cpu_name()}, {torch.get_num_threads()} torch thread(s), torch {torch.__version__}; "
        f"{len(case.images) - len(skipped)} held-out polyps at 128x128 (skipped, no polyp predicted: "
        f"{skipped or 'none'}); total {time.perf_counter() - start:.0f} s.",
        f"Model: {model_text(case)} (10 held-out images). Settings: {method_text}; batch {settings['batch']}; "
        f"seed {SEED}; ROIs grown by {settings['margin']} pixels. Target: mean polyp probability over the true "
        "mask; iou/dice: top-k binarised map (k = polyp pixels) vs the polyp, means over images.",
        markdown(comparison(rows, ()), COMPARISON_COLUMNS),
        "Trivial baselines (means over images): " + "; ".join(
            f"{name} {np.mean([r[name] for r in rows if r['roi'] == 'none']):.3f}"
            for name in ("roi_mask_dice", "blurred_roi_dice", "centred_blob_dice")) +
        " (true-mask ROI); prediction ROI: as the map " +
        f"{np.mean([r['roi_mask_dice'] for r in rows if r['roi'] == 'prediction']):.3f}, blurred "
        f"{np.mean([r['blurred_roi_dice'] for r in rows if r['roi'] == 'prediction']):.3f}. `ROI baseline Dice` "
        "is the better ROI map of each variant's own ROI (the true-mask ROI for the unrestricted run).",
    ]) + "\n"
    (out / "xai_clip_polyp.md").write_text(text)
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", choices=("phantom", "ct", "polyp", "all"), default="all")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--small", action="store_true", help="100 RISE masks and 100 LIME samples")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(SEED)
    args.out.mkdir(parents=True, exist_ok=True)
    for name in ("phantom", "ct", "polyp") if args.case == "all" else (args.case,):
        print(run(name, args.out, args.small), flush=True)


if __name__ == "__main__":
    main()
