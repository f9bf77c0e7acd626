"""The `Image` every reader returns, and the small helpers all readers and writers share."""
from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from segxai.errors import SegxaiError

PathLike = str | os.PathLike[str]

AFFINE_TOLERANCE_MM = 1e-3
LABEL_TOLERANCE = 1e-3
_EXTENSIONS = {
    ".ome.tiff": "tiff",
    ".ome.tif": "tiff",
    ".tiff": "tiff",
    ".tif": "tiff",
    ".nii.gz": "nifti",
    ".nii": "nifti",
    ".png": "png",
    ".jpg": "jpeg",
    ".jpeg": "jpeg",
    ".npy": "numpy",
    ".dcm": "dicom",
}


@dataclass
class Image:
    """A channels-first image `(C, *spatial)` with its geometry and where it came from.

    Spatial axes are exactly as stored: NIfTI voxel axes (i, j, k) untransposed so `affine` applies
    directly (DICOM is arranged the same way), PNG/JPEG (rows, cols), TIFF its stored (Z,) Y, X. `affine`
    maps voxel indices to RAS world millimetres; it is None for PNG, JPEG, TIFF and NumPy files, which may
    carry a `pixel_size` (mm per spatial axis, e.g. from TIFF metadata) instead. `array` is stored as float32.
    """

    array: np.ndarray
    affine: np.ndarray | None = None
    kind: str = "numpy"
    source: tuple[Path, ...] = ()
    channel_names: tuple[str, ...] = ()
    pixel_size: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        self.array = np.asarray(self.array, dtype=np.float32)
        if self.array.ndim not in (3, 4):
            raise SegxaiError(f"an Image array is (C, *spatial) with 2 or 3 spatial axes; got shape {self.array.shape}")
        if self.affine is not None:
            self.affine = np.asarray(self.affine, dtype=np.float64)
            if self.affine.shape != (4, 4):
                raise SegxaiError(f"an Image affine is 4x4; got shape {self.affine.shape}")
        self.source = tuple(Path(p) for p in self.source)
        self.channel_names = tuple(self.channel_names) or tuple(f"c{i}" for i in range(self.array.shape[0]))
        if len(self.channel_names) != self.array.shape[0]:
            raise SegxaiError(
                f"{len(self.channel_names)} channel names {self.channel_names} for {self.array.shape[0]} channels"
            )
        if self.pixel_size is not None:
            self.pixel_size = tuple(float(v) for v in self.pixel_size)
            if len(self.pixel_size) != self.spatial_dims or min(self.pixel_size) <= 0:
                raise SegxaiError(f"pixel_size {self.pixel_size} needs one positive size per spatial axis")

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return tuple(int(n) for n in self.array.shape[1:])

    @property
    def spatial_dims(self) -> int:
        return self.array.ndim - 1

    @property
    def spacing(self) -> tuple[float, ...]:
        """Voxel size along each spatial axis in mm (the affine's column norms, else `pixel_size`, else ones)."""
        if self.affine is None:
            return tuple(self.pixel_size) if self.pixel_size is not None else (1.0,) * self.spatial_dims
        return tuple(float(np.linalg.norm(self.affine[:3, i])) for i in range(self.spatial_dims))


def check_exists(path: Path) -> None:
    if not path.exists():
        raise SegxaiError(f"{path}: no such file or directory")


def file_kind(path: Path) -> str:
    if path.is_dir():
        return "dicom"
    name = path.name.lower()
    for extension, kind in _EXTENSIONS.items():
        if name.endswith(extension):
            return kind
    raise SegxaiError(
        f"{path}: unknown file type; segxai reads {', '.join(_EXTENSIONS)} files and DICOM series directories"
    )


def file_stem(path: Path) -> str:
    """The file name without its segxai extension ('t1c.nii.gz' -> 't1c'); a directory's own name."""
    name = path.name
    for extension in _EXTENSIONS:
        if name.lower().endswith(extension):
            return name[: -len(extension)]
    return name


def describe(image: Image) -> str:
    if not image.source:
        return "(in memory)"
    if image.kind == "dicom":
        return "DICOM series " + ", ".join(sorted({str(p.parent) for p in image.source}))
    return ", ".join(str(p) for p in image.source)


def affines_differ(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    return a is not None and b is not None and not np.allclose(a, b, rtol=0.0, atol=AFFINE_TOLERANCE_MM)


@contextmanager
def reading(path: Path) -> Iterator[None]:
    """Turn whatever a decoder raises on a corrupt or truncated file into a SegxaiError naming the file."""
    try:
        yield
    except (SegxaiError, MemoryError):
        raise
    except Exception as exc:  # decoders raise many unrelated types (OSError, EOFError, zlib.error, SyntaxError...)
        raise SegxaiError(
            f"cannot read {path}: {type(exc).__name__}: {exc} (is the file complete and in the format its "
            "extension says?)"
        ) from None
