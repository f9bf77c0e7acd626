"""Readers: NIfTI, PNG/JPEG and NumPy files (DICOM series in `segxai.io.dicom`, TIFF in `segxai.io.tiff`), as
`Image`s with geometry."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import nibabel as nib
import numpy as np
import PIL.Image

from segxai.errors import SegxaiError
from segxai.io.dicom import dicom_directory_files, read_dicom
from segxai.io.tiff import read_tiff, read_tiff_labels
from segxai.io.image import (
    AFFINE_TOLERANCE_MM,
    LABEL_TOLERANCE,
    Image,
    PathLike,
    affines_differ,
    check_exists,
    describe,
    file_kind,
    file_stem,
    reading,
)

_GRAY_MODES = {"1", "L", "I", "F", "I;16", "I;16L", "I;16B", "I;16N"}



def load_image(paths: PathLike | Sequence[PathLike]) -> Image:
    """Read one image, or several single-modality files stacked as channels in the given order.

    A directory, or a list of `.dcm` files, is read as one DICOM series. Files stacked together must
    share their spatial shape and (when they have one) their affine within 1e-3 mm.
    """
    items = [Path(paths)] if isinstance(paths, (str, os.PathLike)) else [Path(p) for p in paths]
    if not items:
        raise SegxaiError("load_image needs at least one path")
    for path in items:
        check_exists(path)
    if len(items) > 1 and all(file_kind(p) == "dicom" and p.is_file() for p in items):
        return read_dicom(items, name=items[0].parent.name)
    images = [_read_one(p) for p in items]
    return images[0] if len(images) == 1 else _stack(images)


def load_mask(path: PathLike, like: Image | None = None) -> np.ndarray:
    """Read a label map as int64 of spatial shape, checked against `like`'s grid when given.

    RGB/RGBA PNGs are black/white binary masks (channel 0 > 127 -> 1) and JPEG masks, being lossy, are
    always read that way; greyscale, 16-bit and palette PNGs keep their stored integer labels. NIfTI and
    NumPy label maps must hold integers (within 1e-3); TIFF label maps keep their stored labels (instance ids).
    """
    path = Path(path)
    check_exists(path)
    kind = file_kind(path)
    if kind == "nifti":
        data, affine = _load_nifti(path)
        spatial, channels = nifti_spatial(data.shape, path)
        if channels != 1:
            raise SegxaiError(f"mask {path} has {channels} channels (shape {data.shape}); a label map has one")
        labels = _as_labels(data.reshape(spatial), path)
    elif kind in ("png", "jpeg"):
        labels, affine = _pil_labels(_open_pil(path), path, kind).astype(np.int64), None
    elif kind == "tiff":
        labels, affine = read_tiff_labels(path), None
    elif kind == "numpy":
        labels, affine = _as_labels(_load_npy(path), path), None
        if labels.ndim not in (2, 3):
            raise SegxaiError(f"mask {path} has shape {labels.shape}; a NumPy label map is 2D or 3D")
    else:
        raise SegxaiError(f"mask {path}: DICOM label maps are not supported; convert the mask to NIfTI or PNG")
    if like is not None:
        _check_mask_geometry(labels.shape, affine, path, like)
    return labels


def _check_mask_geometry(shape: tuple[int, ...], affine: np.ndarray | None, path: Path, like: Image) -> None:
    if tuple(shape) != like.spatial_shape:
        raise SegxaiError(f"mask {path} has shape {tuple(shape)} but image {describe(like)} has {like.spatial_shape}")
    if affines_differ(affine, like.affine):
        raise SegxaiError(
            f"mask {path} has affine\n{np.round(affine, 4)}\nbut image {describe(like)} has\n"
            f"{np.round(like.affine, 4)}\n(they must agree within {AFFINE_TOLERANCE_MM} mm)"
        )


def _read_one(path: Path) -> Image:
    kind = file_kind(path)
    if kind == "nifti":
        return _read_nifti(path)
    if kind in ("png", "jpeg"):
        return _read_pil(path, kind)
    if kind == "numpy":
        return _read_numpy(path)
    if kind == "tiff":
        return read_tiff(path)
    files = dicom_directory_files(path) if path.is_dir() else [path]
    return read_dicom(files, name=path.name if path.is_dir() else path.parent.name)


def _stack(images: list[Image]) -> Image:
    """Stack modalities as channels after checking they live on one grid."""
    first = images[0]
    for image in images:
        if image.kind != first.kind:
            raise SegxaiError(f"cannot stack {image.kind} {describe(image)} with {first.kind} {describe(first)}")
        if image.kind == "nifti" and image.array.shape[0] != 1:
            raise SegxaiError(
                f"{describe(image)} has {image.array.shape[0]} channels; stacked NIfTI modalities must each have one"
            )
        if image.spatial_shape != first.spatial_shape:
            raise SegxaiError(
                f"cannot stack {describe(image)} with {describe(first)}: spatial shape "
                f"{image.spatial_shape} differs from {first.spatial_shape}"
            )
        if affines_differ(image.affine, first.affine):
            raise SegxaiError(
                f"cannot stack {describe(image)} with {describe(first)}: affine\n{np.round(image.affine, 4)}\n"
                f"differs from\n{np.round(first.affine, 4)}\nby more than {AFFINE_TOLERANCE_MM} mm"
            )
    names = [name for image in images for name in _stacked_names(image)]
    return Image(
        array=np.concatenate([image.array for image in images]),
        affine=first.affine,
        kind=first.kind,
        source=tuple(p for image in images for p in image.source),
        channel_names=tuple(names),
        pixel_size=first.pixel_size,
    )


def _stacked_names(image: Image) -> list[str]:
    stem = image.source[0].parent.name if image.kind == "dicom" else file_stem(image.source[0])
    if image.array.shape[0] == 1:
        return [stem]
    return [f"{stem}:{name}" for name in image.channel_names]


# NIfTI ----------------------------------------------------------------------------------------------


def _load_nifti(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The stored data (scaled, native dtype) and affine; reads everything so truncation is caught here."""
    with reading(path):
        nifti = nib.load(path)
        return np.asanyarray(nifti.dataobj), np.asarray(nifti.affine, dtype=np.float64)


def nifti_spatial(shape: tuple[int, ...], path: Path) -> tuple[tuple[int, ...], int]:
    """(spatial shape, channels) of a stored NIfTI shape (X,Y), (X,Y,1), (X,Y,Z) or (X,Y,Z,C); Z=1 is 2D."""
    shape = tuple(int(n) for n in shape)
    if len(shape) in (2, 3, 4):
        spatial = shape[:3] if len(shape) > 2 and shape[2] > 1 else shape[:2]
        return spatial, shape[3] if len(shape) == 4 else 1
    raise SegxaiError(f"NIfTI {path} has shape {shape}; segxai reads 2D, 3D or 4D (X, Y, Z, C) images")


def _read_nifti(path: Path) -> Image:
    data, affine = _load_nifti(path)
    spatial, channels = nifti_spatial(data.shape, path)
    array = np.moveaxis(data, 3, 0) if data.ndim == 4 else data[None]
    names = (file_stem(path),) if channels == 1 else ()
    return Image(array.reshape(channels, *spatial), affine, "nifti", (path,), names)


# PNG / JPEG -----------------------------------------------------------------------------------------


def _open_pil(path: Path) -> PIL.Image.Image:
    with reading(path), PIL.Image.open(path) as pil:
        pil.load()
        return pil


def _read_pil(path: Path, kind: str) -> Image:
    """Grey -> (1, H, W); colour, palette and alpha images -> RGB (3, H, W); stored values, no rescaling."""
    pil = _open_pil(path)
    if pil.mode == "LA":
        pil = pil.convert("L")
    if pil.mode in _GRAY_MODES:
        return Image(np.asarray(pil)[None], None, kind, (path,), ("gray",))
    rgb = np.asarray(pil if pil.mode == "RGB" else pil.convert("RGB"))
    return Image(rgb.transpose(2, 0, 1), None, kind, (path,), ("R", "G", "B"))


def _pil_labels(pil: PIL.Image.Image, path: Path, kind: str) -> np.ndarray:
    if kind == "jpeg":
        values = np.asarray(pil)
        return (values[..., 0] if values.ndim == 3 else values) > 127
    if pil.mode in _GRAY_MODES or pil.mode == "P":
        return np.asarray(pil)
    if pil.mode == "LA":
        return np.asarray(pil)[..., 0]
    if pil.mode in ("RGB", "RGBA"):
        return _binary_from_rgb(np.asarray(pil)[..., :3], path)
    raise SegxaiError(f"mask {path} has PNG mode {pil.mode}; save masks as greyscale, 16-bit, palette or RGB PNG")


def _binary_from_rgb(rgb: np.ndarray, path: Path) -> np.ndarray:
    """A black/white mask stored as RGB -> {0, 1}; refuses colour-coded or dark label maps it would garble."""
    red = rgb[..., 0]
    if not (np.array_equal(red, rgb[..., 1]) and np.array_equal(red, rgb[..., 2])):
        raise SegxaiError(
            f"mask {path} is a colour RGB image (its channels differ); segxai reads RGB masks only as black/white "
            "binary masks: convert colours to a greyscale label map"
        )
    if red.any() and red.max() <= 127:
        raise SegxaiError(
            f"mask {path} is RGB with values up to {red.max()}; RGB masks are read as binary (> 127): save label "
            "maps as greyscale PNG instead"
        )
    return red > 127


# NumPy ----------------------------------------------------------------------------------------------


def _load_npy(path: Path) -> np.ndarray:
    with reading(path):
        data = np.load(path, allow_pickle=False)
    if data.dtype.kind not in "biuf":
        raise SegxaiError(f"{path} holds {data.dtype} values; segxai reads numeric arrays")
    return data


def _read_numpy(path: Path) -> Image:
    """A 2-D array is one 2D channel; a 3-D or 4-D array is channels-first (C, *spatial)."""
    data = _load_npy(path)
    if data.ndim not in (2, 3, 4):
        raise SegxaiError(f"{path} has shape {data.shape}; a NumPy image is (H, W), (C, H, W) or (C, X, Y, Z)")
    return Image(data[None] if data.ndim == 2 else data, None, "numpy", (path,))


def _as_labels(data: np.ndarray, path: Path) -> np.ndarray:
    if data.dtype.kind == "f":
        rounded = np.rint(data)
        bad = ~np.isfinite(data) | (np.abs(data - rounded) > LABEL_TOLERANCE)
        if bad.any():
            raise SegxaiError(
                f"mask {path} holds non-integer values (e.g. {data[bad].flat[0]}); a label map holds integer labels"
            )
        data = rounded
    return data.astype(np.int64)
