"""Writers: spatial arrays as NIfTI (with the source affine), PNG or NumPy, always atomically; safe output dirs."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import nibabel as nib
import numpy as np
import PIL.Image

from segxai.atomic import atomic_write
from segxai.errors import SegxaiError
from segxai.io.image import Image, PathLike, check_exists, file_kind, reading
from segxai.io.read import load_image, nifti_spatial
from segxai.io.tiff import write_tiff


def save_array(array: np.ndarray, path: PathLike, like: Image | PathLike | None = None) -> Path:
    """Write a spatial (2D or 3D) array as `.nii`/`.nii.gz` (with `like`'s affine), `.png`, `.tif` (with
    `like`'s pixel size) or `.npy`, atomically.

    `like` (an Image or an image path) gives the grid: the array must have its spatial shape, and the
    path is refused when it is one of the files `like` was read from.
    """
    path = Path(path)
    array = np.asarray(array)
    if array.ndim not in (2, 3):
        raise SegxaiError(f"save_array writes spatial arrays (2D or 3D); got shape {array.shape} for {path}")
    shape, affine, sources = _like_geometry(like)
    if shape is not None and array.shape != shape:
        raise SegxaiError(f"cannot save array of shape {array.shape} to {path}: the reference image has {shape}")
    if any(path.resolve() == source.resolve() for source in sources):
        raise SegxaiError(f"refusing to overwrite {path}: it is an input image; choose another output path")
    kind = file_kind(path)
    if kind not in ("nifti", "png", "numpy", "tiff"):
        raise SegxaiError(f"cannot write {path}: save_array writes .nii.gz, .nii, .png, .tif or .npy files")
    if kind == "png":
        array = _png_ready(array, path)
    with atomic_write(path) as temp:
        if kind == "nifti":
            _write_nifti(array, temp, np.eye(4) if affine is None else affine)
        elif kind == "png":
            PIL.Image.fromarray(array).save(temp, format="PNG")
        elif kind == "tiff":
            write_tiff(_nifti_dtype(array), temp, like.pixel_size if isinstance(like, Image) else None)
        else:
            with open(temp, "wb") as handle:
                np.save(handle, array)
    return path


def _like_geometry(like: Image | PathLike | None) -> tuple[tuple[int, ...] | None, np.ndarray | None, tuple[Path, ...]]:
    """(spatial shape, affine, source files) of the reference; a NIfTI path is read from its header only."""
    if like is None:
        return None, None, ()
    if isinstance(like, Image):
        return like.spatial_shape, like.affine, like.source
    path = Path(like)
    check_exists(path)
    if file_kind(path) == "nifti":
        with reading(path):
            nifti = nib.load(path)
        return nifti_spatial(nifti.shape, path)[0], np.asarray(nifti.affine, dtype=np.float64), (path,)
    image = load_image(path)
    return image.spatial_shape, image.affine, image.source


def _write_nifti(array: np.ndarray, temp: Path, affine: np.ndarray) -> None:
    nifti = nib.Nifti1Image(_nifti_dtype(array), affine)
    nifti.header.set_sform(affine, code=1)
    nifti.header.set_qform(affine, code=1)
    nifti.header.set_xyzt_units("mm")
    nib.save(nifti, temp)


def _nifti_dtype(array: np.ndarray) -> np.ndarray:
    """Floats -> float32, bool -> uint8, 64-bit integers -> the smallest of uint8/int16/int32 that holds them."""
    if array.dtype == np.bool_:
        return array.astype(np.uint8)
    if array.dtype.kind == "f":
        return array.astype(np.float32)
    if array.dtype.kind in "iu" and array.dtype.itemsize == 8:
        low, high = (int(array.min()), int(array.max())) if array.size else (0, 0)
        for dtype in (np.uint8, np.int16, np.int32):
            if np.iinfo(dtype).min <= low and high <= np.iinfo(dtype).max:
                return array.astype(dtype)
        raise SegxaiError(f"integer values {low}..{high} do not fit NIfTI int32")
    return array


def _png_ready(array: np.ndarray, path: Path) -> np.ndarray:
    """A bool, uint8 or uint16 (16-bit label maps, e.g. instance ids) 2D array (bool -> 0/255); anything else
    needs the caller to normalise."""
    if array.ndim != 2:
        raise SegxaiError(f"cannot write {path}: PNG holds 2D arrays, got shape {array.shape}; use .nii.gz for 3D")
    if array.dtype == np.bool_:
        array = array.astype(np.uint8) * 255
    elif array.dtype not in (np.uint8, np.uint16):
        raise SegxaiError(
            f"cannot write {array.dtype} array to {path}: PNG output takes bool, uint8 or uint16; normalise to 0..255 "
            "uint8 first (or save as .npy / .nii.gz to keep the values)"
        )
    return array


def check_output_file(out: PathLike, inputs: Sequence[PathLike | None]) -> Path:
    """Refuse an output file path that is one of `inputs` (also through a link) or an existing directory, before
    any work is done; every command that writes one file (a checkpoint, a mask) checks its inputs with this.

    Args:
        out: the file to write.
        inputs: every file the command reads (None entries are skipped).
    Returns:
        `out` as a Path.
    """
    out = Path(out)
    if out.is_dir():
        raise SegxaiError(f"output {out} is an existing directory; give a file path")
    for item in inputs:
        if item is None:
            continue
        source = Path(item)
        same = source.resolve() == out.resolve() or (out.exists() and source.exists() and os.path.samefile(source, out))
        if same:
            raise SegxaiError(f"refusing to write {out}: it is the input {item}; choose another output path so "
                              "inputs are never overwritten")
    return out


def prepare_output_dir(out_dir: PathLike, inputs: Sequence[PathLike] = ()) -> Path:
    """Create `out_dir` (resolved) after checking writing there can never overwrite one of `inputs`."""
    out = Path(out_dir).resolve()
    if out.exists() and not out.is_dir():
        raise SegxaiError(f"output directory {out} is an existing file; choose a directory")
    for item in inputs:
        source = Path(item).resolve()
        if source == out:
            raise SegxaiError(f"output directory {out} is the input {item}; choose another directory")
        if source.parent == out:
            raise SegxaiError(
                f"output directory {out} contains input {item}; choose another directory so inputs are never "
                "overwritten"
            )
    out.mkdir(parents=True, exist_ok=True)
    return out
