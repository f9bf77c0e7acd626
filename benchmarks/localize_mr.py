"""A localizer trained on the TotalSegmentator CT, asked for organs on the MR of another patient.

    .venv/bin/python benchmarks/localize_mr.py --out benchmarks/results

Trains through the command line's own path (`segxai localize train --slices --preset unet2d-deep [--any-contrast]`
on the CT file and its label map, as stored: RAS+ turn, axial slices), then runs `segxai localize predict`'s path on the MR file and
compares the ROI (probability >= 0.5, no margin) with the MR's own label map (TotalSegmentator outputs, not manual
ground truth; see the data's SOURCE.md). The CT is stored diag(+3,+3,+3), the MR diag(-3,-3,+3): without the RAS+
turn the MR would reach the localizer mirrored. Both localizers (with and without `--any-contrast`) share seed
and steps; the side check asks whether the "left kidney" ROI lies on the patient's left of the "right kidney" one
in world coordinates (RAS+: x grows to the patient's right). Writes `localize_mr_seed<SEED>.md/.csv`; the MR
scores vary much between seeds, so run several (`--seed 1`, ...).
"""
from __future__ import annotations

import argparse
import csv
import json
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from segxai.data.shared import require_shared
from segxai.io import load_image
from segxai.pipelines.options import RunOptions
from segxai.pipelines.training import TrainingPlan, localize_file, train_localizer_files

ORGANS = {1: "spleen", 2: "right kidney", 3: "left kidney", 5: "liver"}


def dice(mask: np.ndarray, truth: np.ndarray) -> float:
    return float(2 * (mask & truth).sum() / max(mask.sum() + truth.sum(), 1))


def world_x(mask: np.ndarray, affine: np.ndarray) -> float:
    """The RAS x (mm) of a mask's centroid: smaller is further to the patient's left."""
    return float((affine[:3, :3] @ np.argwhere(mask).mean(0) + affine[:3, 3])[0]) if mask.any() else float("nan")


def evaluate(localizer: Path, image: Path, labels: Path, folder: Path) -> dict[str, tuple[float, float, float]]:
    """Dice and centroid x of each organ's ROI on one scan, and the share of the organ inside the ROI grown by
    the text ROI's default margin (8 voxels), the region a restricted explanation perturbs."""
    truth, affine = np.asarray(load_image(labels).array[0]).astype(int), load_image(image).affine
    out = {}
    for value, prompt in ORGANS.items():
        rois = [np.asarray(load_image(localize_file(localizer, [image], prompt, folder / f"{value}_{margin}.nii.gz",
                                                    margin=margin)[0]).array[0]) > 0 for margin in (0.0, 8.0)]
        organ = truth == value
        out[prompt] = (dice(rois[0], organ), world_x(rois[0], affine), float((rois[1] & organ).sum() / organ.sum()))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--preset", default="unet2d-deep", help="the localizer's U-Net (unet2d: the small one)")
    parser.add_argument("--contrast-only", action="store_true", help="train only the --any-contrast localizer")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = require_shared("totalsegmentator-ct-mr")
    scans = {"CT": (data / "example_ct_sm.nii.gz", data / "example_seg.nii.gz"),
             "MR": (data / "example_mr_sm.nii.gz", data / "example_seg_mr.nii.gz")}
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        (folder / "names.json").write_text(json.dumps({str(v): n for v, n in ORGANS.items()}))
        for any_contrast in (True,) if args.contrast_only else (False, True):
            start = time.perf_counter()
            localizer, _ = train_localizer_files(
                [scans["CT"][0]], [scans["CT"][1]], folder / "names.json", folder / f"loc{any_contrast}.pt",
                steps=args.steps, slices=True, any_contrast=any_contrast,
                intensity={"kind": "equalize"}, plan=TrainingPlan(preset=args.preset),
                options=RunOptions(seed=args.seed, progress=False))
            seconds = time.perf_counter() - start
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # an organ the localizer misses falls back with a warning
                scores = {scan: evaluate(localizer, *paths, folder) for scan, paths in scans.items()}
            for scan, organs in scores.items():
                left, right = organs["left kidney"][1], organs["right kidney"][1]
                for prompt, (value, _, covered) in organs.items():
                    rows.append({"any_contrast": any_contrast, "scan": scan, "prompt": prompt, "dice": round(value, 3),
                                 "covered_by_roi_8": round(covered, 3),
                                 "left_of_right_kidney": bool(left < right) if prompt == "left kidney" else "",
                                 "train_seconds": round(seconds)})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / f"localize_mr_seed{args.seed}.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    lines = [f"Localizer trained on the TotalSegmentator CT's axial slices ({args.preset}, tiny encoder, equalised "
             f"intensities, {args.steps} steps, seed {args.seed}), ROI = probability >= 0.5 without margin, Dice "
             "against each scan's own label map; 'organ inside ROI+8': the share of the organ's voxels inside the "
             "ROI grown by 8 voxels, the text ROI's default margin.", "",
             "| --any-contrast | scan | prompt | Dice | organ inside ROI+8 | left kidney ROI left of right kidney ROI "
             "| training s |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {'yes' if r['any_contrast'] else 'no'} | {r['scan']} | {r['prompt']} | {r['dice']:.3f} | "
              f"{r['covered_by_roi_8']:.3f} | {r['left_of_right_kidney']} | {r['train_seconds']} |" for r in rows]
    (out / f"localize_mr_seed{args.seed}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
