"""Readers for the real sample cases kept beside the repository in `../shared/data`.

They give tests and demos real anatomy (CT, MR, endoscopy, histology) through the same `load_image` /
`load_mask` path users take. Several label maps are model outputs, not ground truth (see each
folder's provenance notes in ../shared/data): fine for exercising explanations, not for measuring accuracy.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

import segxai
from segxai.errors import SegxaiError
from segxai.io import Image, load_image, load_mask

ENV_VARIABLE = "SEGXAI_SHARED_DATA"

# TotalSegmentator task "total": the labels present in example_seg.nii.gz (the sample's provenance notes).
TOTALSEGMENTATOR_CT_LABELS: dict[int, str] = {
    1: "spleen",
    2: "kidney_right",
    3: "kidney_left",
    4: "gallbladder",
    5: "liver",
    6: "stomach",
    7: "pancreas",
    8: "adrenal_gland_right",
    9: "adrenal_gland_left",
    10: "lung_upper_lobe_left",
    11: "lung_lower_lobe_left",
    13: "lung_middle_lobe_right",
    14: "lung_lower_lobe_right",
    18: "small_bowel",
    19: "duodenum",
    20: "colon",
    30: "vertebrae_L2",
    31: "vertebrae_L1",
    32: "vertebrae_T12",
    33: "vertebrae_T11",
    52: "aorta",
    63: "inferior_vena_cava",
    64: "portal_vein_and_splenic_vein",
    79: "spinal_cord",
    86: "autochthon_left",
    87: "autochthon_right",
    88: "iliopsoas_left",
    89: "iliopsoas_right",
    **{98 + i: f"rib_left_{7 + i}" for i in range(6)},
    **{110 + i: f"rib_right_{7 + i}" for i in range(6)},
    117: "costal_cartilages",
}

# TotalSegmentator task "total_mr": the labels present in example_seg_mr.nii.gz (the sample's provenance notes).
TOTALSEGMENTATOR_MR_LABELS: dict[int, str] = {
    1: "spleen",
    2: "kidney_right",
    3: "kidney_left",
    4: "gallbladder",
    5: "liver",
    6: "stomach",
    7: "pancreas",
    8: "adrenal_gland_right",
    9: "adrenal_gland_left",
    11: "lung_right",
    13: "small_bowel",
    14: "duodenum",
    15: "colon",
    19: "vertebrae",
    20: "intervertebral_discs",
    21: "spinal_cord",
    23: "aorta",
    24: "inferior_vena_cava",
    25: "portal_vein_and_splenic_vein",
    46: "autochthon_left",
    47: "autochthon_right",
    48: "iliopsoas_left",
    49: "iliopsoas_right",
}

BRATS_LABELS: dict[int, str] = {1: "necrotic core", 2: "oedema", 3: "enhancing tumour"}
BRATS_MODALITIES = ("t1c", "t1n", "t2f", "t2w")

_TOTALSEGMENTATOR_FILES = {
    "ct": ("example_ct_sm.nii.gz", "example_seg.nii.gz"),
    "mr": ("example_mr_sm.nii.gz", "example_seg_mr.nii.gz"),
}


@dataclass
class LabelledImage:
    """An image with its label map (spatial shape, int64) and the names of its labels."""

    name: str
    image: Image
    labels: np.ndarray
    names: dict[int, str]


def shared_data_dir() -> Path | None:
    """`$SEGXAI_SHARED_DATA` if it exists, else `<repo>/../shared/data` if it exists, else None."""
    configured = os.environ.get(ENV_VARIABLE)
    if configured and Path(configured).is_dir():
        return Path(configured)
    beside_repo = Path(segxai.__file__).resolve().parents[1].parent / "shared" / "data"
    return beside_repo if beside_repo.is_dir() else None


def require_shared(name: str) -> Path:
    """The folder of shared dataset `name`, or a SegxaiError saying where it was looked for."""
    root = shared_data_dir()
    if root is None or not (root / name).is_dir():
        raise SegxaiError(
            f"shared dataset {name!r} not found (looked in {root or '../shared/data'}); set {ENV_VARIABLE} "
            "to the folder holding it"
        )
    return root / name


def load_totalsegmentator(modality: Literal["ct", "mr"] = "ct") -> LabelledImage:
    """The small abdominal CT (122x101x30) or MR (117x91x20) at 3 mm with its TotalSegmentator label map."""
    if modality not in _TOTALSEGMENTATOR_FILES:
        raise SegxaiError(f"modality must be 'ct' or 'mr', got {modality!r}")
    folder = require_shared("totalsegmentator-ct-mr")
    image_file, label_file = _TOTALSEGMENTATOR_FILES[modality]
    image = load_image(folder / image_file)
    names = TOTALSEGMENTATOR_CT_LABELS if modality == "ct" else TOTALSEGMENTATOR_MR_LABELS
    return LabelledImage(f"totalsegmentator-{modality}", image, load_mask(folder / label_file, like=image), dict(names))


def load_brats_example() -> LabelledImage:
    """The BraTS glioma case: t1c, t1n, t2f, t2w stacked as channels (240x240x155, 1 mm) and its tumour labels."""
    folder = require_shared("brats-glioma-example")
    image = load_image([folder / f"{modality}.nii.gz" for modality in BRATS_MODALITIES])
    labels = load_mask(folder / "segmentation_model_output.nii.gz", like=image)
    return LabelledImage("brats-glioma-example", image, labels, dict(BRATS_LABELS))


def load_endotect(limit: int | None = None) -> list[LabelledImage]:
    """EndoTect colonoscopy RGB images with binary polyp masks, sorted by file name (the first `limit`)."""
    folder = require_shared("endotect-polyp")
    return [
        _pair(image_file, folder / "masks" / f"{image_file.stem}.png", {1: "polyp"})
        for image_file in _first(sorted((folder / "images").glob("*.jpg")), limit)
    ]


def load_nuclei(limit: int | None = None) -> list[LabelledImage]:
    """H&E tiles (RGB) with nucleus instance-id masks (0 background, 1..N one id per nucleus)."""
    folder = require_shared("nuclei-he-miccai2015")
    return [
        _pair(image_file, folder / "masks" / f"{image_file.stem}_label.png", {1: "nucleus"})
        for image_file in _first(sorted((folder / "images").glob("image*.png")), limit)
    ]


def _first(files: list[Path], limit: int | None) -> list[Path]:
    if limit is not None and limit < 0:
        raise SegxaiError(f"limit must be None or >= 0, got {limit}")
    return files if limit is None else files[:limit]


def _pair(image_file: Path, mask_file: Path, names: dict[int, str]) -> LabelledImage:
    image = load_image(image_file)
    return LabelledImage(image_file.stem, image, load_mask(mask_file, like=image), names)
