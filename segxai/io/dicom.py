"""DICOM series: slices sorted along the slice normal, rescaled, on a NIfTI-style RAS affine (`segxai[dicom]`)."""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import numpy as np

from segxai.errors import SegxaiError
from segxai.io.image import Image, reading

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
_DICOM_POSITION_TOLERANCE_MM = 1e-3



def _import_pydicom() -> Any:
    try:
        return importlib.import_module("pydicom")
    except ImportError:
        raise SegxaiError("reading DICOM needs pydicom: pip install segxai[dicom]") from None


def dicom_directory_files(directory: Path) -> list[Path]:
    files = sorted(p for p in directory.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise SegxaiError(f"{directory} is a directory with no files; expected a DICOM series")
    return files


def read_dicom(files: list[Path], name: str) -> Image:
    """Read one DICOM series into (1, cols, rows, slices) with a RAS affine, like NIfTI converters do."""
    pydicom = _import_pydicom()
    slices = [(path, ds) for path in files if (ds := _read_dicom_file(pydicom, path)) is not None]
    if not slices:
        raise SegxaiError(f"no DICOM image slices among {len(files)} file(s) in {files[0].parent}")
    _check_one_series(slices)
    orientation = _common_geometry(slices)
    slices = _sort_slices(slices, np.cross(orientation[:3], orientation[3:]))
    affine = _dicom_affine(slices, orientation)
    volume = np.stack([_dicom_pixels(path, ds).T for path, ds in slices], axis=-1)
    if volume.shape[-1] == 1:
        volume = volume[..., 0]
    return Image(volume[None], affine, "dicom", tuple(path for path, _ in slices), (name,))


def _read_dicom_file(pydicom: Any, path: Path) -> Any:
    """The dataset of an image slice; None for non-DICOM or pixel-less files in a directory without `.dcm` names."""
    with reading(path):
        try:
            ds = pydicom.dcmread(path)
        except pydicom.errors.InvalidDicomError:
            if path.suffix.lower() == ".dcm":
                raise
            return None
    if "PixelData" not in ds:
        if path.suffix.lower() == ".dcm":
            raise SegxaiError(f"DICOM file {path} has no pixel data")
        return None
    return ds


def _check_one_series(slices: list[tuple[Path, Any]]) -> None:
    series = {str(getattr(ds, "SeriesInstanceUID", "")) for _, ds in slices}
    if len(series) > 1:
        raise SegxaiError(
            f"{slices[0][0].parent} holds {len(series)} DICOM series ({', '.join(sorted(series))}); "
            "pass the files of one series"
        )


def _dicom_attribute(path: Path, ds: Any, keyword: str) -> np.ndarray:
    if keyword not in ds:
        raise SegxaiError(f"DICOM file {path} lacks {keyword}, which segxai needs to place the slice in space")
    return np.asarray([float(v) for v in ds[keyword].value], dtype=np.float64)


def _common_geometry(slices: list[tuple[Path, Any]]) -> np.ndarray:
    """The series' ImageOrientationPatient, after checking orientation, size and pixel spacing agree."""
    first_path, first = slices[0]
    reference = (
        _dicom_attribute(first_path, first, "ImageOrientationPatient"),
        _dicom_attribute(first_path, first, "PixelSpacing"),
    )
    for path, ds in slices:
        if (ds.Rows, ds.Columns) != (first.Rows, first.Columns):
            raise SegxaiError(
                f"DICOM slice {path} is {ds.Rows}x{ds.Columns} but {first_path} is {first.Rows}x{first.Columns}"
            )
        for keyword, expected in zip(("ImageOrientationPatient", "PixelSpacing"), reference):
            value = _dicom_attribute(path, ds, keyword)
            if not np.allclose(value, expected, atol=1e-4):
                raise SegxaiError(
                    f"DICOM slice {path} has {keyword} {value.tolist()} but {first_path} has {expected.tolist()}"
                )
    return reference[0]


def _sort_slices(slices: list[tuple[Path, Any]], normal: np.ndarray) -> list[tuple[Path, Any]]:
    """Slices in order along the normal, after checking they are distinct and evenly spaced."""
    slices = sorted(slices, key=lambda item: _dicom_attribute(*item, "ImagePositionPatient") @ normal)
    steps = np.diff([_dicom_attribute(*item, "ImagePositionPatient") @ normal for item in slices])
    for i, step in enumerate(steps):
        if step < _DICOM_POSITION_TOLERANCE_MM:
            raise SegxaiError(
                f"DICOM slices {slices[i][0]} and {slices[i + 1][0]} have the same position along the slice normal"
            )
    if len(steps) > 1 and np.ptp(steps) > 1e-2 + 0.01 * steps.mean():
        raise SegxaiError(
            f"DICOM series {slices[0][0].parent} has uneven slice spacing ({steps.min():.3f} to "
            f"{steps.max():.3f} mm); is a slice missing?"
        )
    return slices


def _dicom_affine(slices: list[tuple[Path, Any]], orientation: np.ndarray) -> np.ndarray:
    """RAS affine of sorted slices for axes (column i, row j, slice k); DICOM patient space is LPS."""
    row_direction, column_direction = orientation[:3], orientation[3:]
    first = _dicom_attribute(*slices[0], "ImagePositionPatient")
    last = _dicom_attribute(*slices[-1], "ImagePositionPatient")
    row_spacing, column_spacing = _dicom_attribute(*slices[0], "PixelSpacing")
    lps = np.eye(4)
    lps[:3, 0] = row_direction * column_spacing
    lps[:3, 1] = column_direction * row_spacing
    if len(slices) > 1:
        lps[:3, 2] = (last - first) / (len(slices) - 1)
    else:
        lps[:3, 2] = np.cross(row_direction, column_direction) * _slice_thickness(slices[0][1])
    lps[:3, 3] = first
    return _LPS_TO_RAS @ lps


def _slice_thickness(ds: Any) -> float:
    return float(getattr(ds, "SpacingBetweenSlices", None) or getattr(ds, "SliceThickness", None) or 1.0)


def _dicom_pixels(path: Path, ds: Any) -> np.ndarray:
    """One slice as (rows, cols) float32 with RescaleSlope/Intercept applied."""
    with reading(path):
        pixels = ds.pixel_array
    if pixels.ndim != 2:
        raise SegxaiError(
            f"DICOM file {path} has pixel shape {pixels.shape}; multi-frame and colour DICOM are not supported"
        )
    slope = float(getattr(ds, "RescaleSlope", 1.0))
    intercept = float(getattr(ds, "RescaleIntercept", 0.0))
    return pixels.astype(np.float32) * np.float32(slope) + np.float32(intercept)
