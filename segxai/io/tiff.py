"""TIFF and OME-TIFF (microscopy, pathology) with `tifffile`: images as `(C, *spatial)` with their pixel size,
label maps with their stored integer labels (instance ids kept), and writing label maps or maps back.

Axes follow the file's series axes: samples (S) and channels (C) become channels, Z/Y/X stay spatial in the stored
order (a Z-stack is `(C, Z, Y, X)`); a time axis or several series must have one element. The pixel size comes
from OME `PhysicalSize*` (with its unit), ImageJ `spacing`/`unit`, or the resolution tags, in mm.
"""
from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from pathlib import Path

import numpy as np

from segxai.errors import SegxaiError
from segxai.io.image import Image, reading

_TO_MM = {"m": 1e3, "cm": 10.0, "mm": 1.0, "µm": 1e-3, "um": 1e-3, "micron": 1e-3, "\\u00B5m": 1e-3, "nm": 1e-6,
          "inch": 25.4}
_SPATIAL = "ZYX"


def read_tiff(path: Path) -> Image:
    """A TIFF image as `(C, *spatial)` float32 (2D or a Z-stack), with `pixel_size` in mm when the file says."""
    data, axes, size = _read(path)
    rgb = "S" in axes and data.shape[axes.index("S")] == 3
    channel_axes = [i for i, a in enumerate(axes) if a in "CS"]
    if len(channel_axes) > 1:  # e.g. C and S together: merge them
        data = np.moveaxis(data, channel_axes, range(len(channel_axes)))
        data = data.reshape(-1, *data.shape[len(channel_axes):])
        axes = "C" + "".join(a for a in axes if a not in "CS")
    elif channel_axes:
        data, axes = np.moveaxis(data, channel_axes[0], 0), "C" + axes.replace(axes[channel_axes[0]], "")
    else:
        data, axes = data[None], "C" + axes
    spatial = axes[1:]
    names = ("R", "G", "B") if rgb and data.shape[0] == 3 else ()
    known = size and all(a in size for a in spatial)
    return Image(data, None, "tiff", (path,), names, tuple(size[a] for a in spatial) if known else None)


def read_tiff_labels(path: Path) -> np.ndarray:
    """A TIFF label map as int64 `(*spatial)`: its stored integer labels, so instance ids stay as given."""
    data, axes, _ = _read(path)
    if any(a in "CS" for a in axes):
        raise SegxaiError(f"mask {path} has channel axes ({axes}); a label map has one channel")
    if data.dtype.kind == "f" and not np.array_equal(data, np.rint(data)):
        raise SegxaiError(f"mask {path} holds non-integer values; a label map holds integer labels")
    return data.astype(np.int64)


def write_tiff(array: np.ndarray, path: Path, pixel_size: tuple[float, ...] | None = None) -> None:
    """Write a 2D/3D array as TIFF (ImageJ layout for stacks), with the pixel size (mm) as resolution in µm."""
    import tifffile

    metadata, resolution = {}, None
    if pixel_size is not None:
        resolution = (1e-3 / pixel_size[-1], 1e-3 / pixel_size[-2])  # pixels per µm, X then Y
        metadata = {"unit": "um", **({"spacing": pixel_size[0] * 1e3} if array.ndim == 3 else {})}
    imagej = array.dtype in (np.uint8, np.uint16, np.float32) and (array.ndim == 3 or pixel_size is not None)
    tifffile.imwrite(path, array, imagej=imagej, resolution=resolution, metadata=metadata if imagej else None,
                     photometric="minisblack")


def _read(path: Path) -> tuple[np.ndarray, str, dict[str, float]]:
    """The first series' data, axes (singleton T/Q/I dropped, YX kept) and pixel size per spatial axis (mm)."""
    import tifffile

    with reading(path), tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        data, axes = np.asarray(series.asarray()), series.axes.upper()
        size = _pixel_size(tif, series)
    for axis in [a for a in axes if a not in "CSZYX"]:
        index = axes.index(axis)
        if data.shape[index] != 1:
            raise SegxaiError(f"{path} has {data.shape[index]} {axis!r} planes (axes {axes}); segxai reads one "
                              "2D image or Z-stack per file: split the series first")
        data, axes = data.take(0, axis=index), axes.replace(axis, "")
    if "Z" in axes and data.shape[axes.index("Z")] == 1:
        data, axes = data.take(0, axis=axes.index("Z")), axes.replace("Z", "")
    if not ("Y" in axes and "X" in axes) or data.dtype.kind not in "biuf":
        raise SegxaiError(f"{path} holds {data.dtype} data with axes {axes}; segxai reads numeric Y, X (Z) images")
    return data, axes, size


def _pixel_size(tif, series) -> dict[str, float]:
    """Pixel size in mm per axis letter from OME, ImageJ or resolution metadata ({} when none is stored)."""
    if tif.is_ome and tif.ome_metadata:
        pixels = next((e for e in ElementTree.fromstring(tif.ome_metadata).iter() if e.tag.endswith("Pixels")), None)
        if pixels is not None:
            size = {}
            for axis in _SPATIAL:
                value = pixels.get(f"PhysicalSize{axis}")
                if value is not None:
                    size[axis] = float(value) * _TO_MM.get(pixels.get(f"PhysicalSize{axis}Unit", "µm"), 1e-3)
            if size:
                return size
    page = tif.pages[0]
    tags = page.tags
    if "XResolution" not in tags or "YResolution" not in tags:
        return {}
    imagej = tif.imagej_metadata or {}
    unit_tag = tags.get("ResolutionUnit")
    unit = {2: "inch", 3: "cm"}.get(int(unit_tag.value) if unit_tag is not None else 2)
    if imagej.get("unit"):
        unit = str(imagej["unit"])
    if unit not in _TO_MM:
        return {}
    per = lambda tag: tags[tag].value[0] / tags[tag].value[1]
    if per("XResolution") <= 0 or per("YResolution") <= 0 or (per("XResolution") == 1 and unit_tag is None):
        return {}
    size = {"X": _TO_MM[unit] / per("XResolution"), "Y": _TO_MM[unit] / per("YResolution")}
    if "spacing" in imagej:
        size["Z"] = float(imagej["spacing"]) * _TO_MM[unit]
    return size
