"""Seeded synthetic phantoms (abdominal CT, brain MRI with lesions) in 2D and 3D for tests, the demo and training.

Every phantom is built from ellipsoids on a normalised (z, y, x) grid; a 2D shape is the z = 0 plane, so a 2D
abdomen has the anatomy of the central axial slice of the 3D one with the same seed. Intensities are piecewise
constant per tissue plus smooth texture and Gaussian noise, with tissue means far enough apart that a tiny U-Net
learns them from intensity and shape. Images are in radiological convention: row 0 is anterior and the image's
left is the patient's right.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Callable, Literal, Sequence

import numpy as np
from scipy import ndimage

from segxai.errors import SegxaiError
from segxai.instances import label_instances

__all__ = ["Phantom", "abdomen_phantom", "brain_phantom", "phantom_dataset"]

# An ellipsoid: centre (z, y, x) and radii (z, y, x) in normalised [-1, 1] coordinates, rotation in degrees in the
# axial (y, x) plane. An infinite z radius makes a cylinder spanning all slices.
Blob = tuple[tuple[float, float, float], tuple[float, float, float], float]
_INF = float("inf")

ABDOMEN_NAMES = {1: "liver", 2: "spleen", 3: "kidney_right", 4: "kidney_left", 5: "aorta", 6: "spine"}
# Mean HU per tissue: air, subcutaneous fat, soft-tissue background, then organs 1..6 (>= 40 HU apart).
_ABDOMEN_HU = np.array([-1000.0, -100.0, 30.0, 110.0, 70.0, 160.0, 200.0, 250.0, 600.0])
# Texture amplitude (HU) per tissue: none in air, trabecular-like in bone.
_ABDOMEN_TEXTURE = np.array([0.0, 8.0, 10.0, 8.0, 8.0, 8.0, 8.0, 6.0, 40.0])
_BODY: Blob = ((0.0, 0.02, 0.0), (_INF, 0.8, 0.95), 0.0)
_FAT_DEPTH = 0.86  # inner edge of the subcutaneous fat ring, as a fraction of the body radii
# Organs in painting order (later ones win where they touch), each a union of ellipsoids.
_ORGANS: tuple[tuple[int, tuple[Blob, ...]], ...] = (
    (1, (((0.15, -0.1, -0.4), (1.2, 0.38, 0.34), -20.0), ((0.25, -0.36, -0.02), (0.7, 0.15, 0.3), 15.0))),
    (2, (((0.3, 0.12, 0.6), (0.55, 0.26, 0.16), 40.0),)),
    (3, (((-0.3, 0.36, -0.38), (0.6, 0.17, 0.11), -25.0),)),
    (4, (((-0.2, 0.36, 0.38), (0.6, 0.17, 0.11), 25.0),)),
    (6, (((0.0, 0.46, 0.0), (_INF, 0.14, 0.16), 0.0),)),
    (5, (((0.0, 0.2, 0.08), (_INF, 0.1, 0.1), 0.0),)),
)

BRAIN_CHANNELS = ("FLAIR", "T1")
# Mean (FLAIR, T1) per tissue: background, ventricular CSF, grey matter, white matter; lesions are added per lesion.
_BRAIN_MEANS = np.array([[0.0, -1.6, 0.45, -0.25], [0.0, -1.8, -0.4, 0.7]])
_BRAIN_TEXTURE = 0.08
_BRAIN: Blob = ((0.0, 0.0, 0.0), (0.88, 0.92, 0.8), 0.0)
_CORTEX_DEPTH = 0.84  # inner edge of the grey-matter rim, as a fraction of the brain radii
_VENTRICLES: tuple[Blob, ...] = (
    ((0.1, -0.1, -0.1), (0.35, 0.28, 0.065), 12.0),
    ((0.1, -0.1, 0.1), (0.35, 0.28, 0.065), -12.0),
)
_LESION_RADII = (1.5, 5.0)  # voxels
_LESION_GAP = 2  # background voxels between two lesions at least
_FLAIR_CONTRAST = (0.8, 2.5)
_T1_CONTRAST = (0.1, 0.5)

_MIN_SIZE = 24


@dataclass
class Phantom:
    """A synthetic case: image, semantic labels, their names and, for lesion phantoms, instance ids."""

    image: np.ndarray
    labels: np.ndarray
    names: dict[int, str]
    channel_names: tuple[str, ...]
    instances: np.ndarray | None = None

    def label_of(self, name: str) -> int:
        """The label value of structure `name`, so callers need not hard-code label numbers."""
        for value, known in self.names.items():
            if known == name:
                return value
        raise SegxaiError(f"unknown structure {name!r}; known: {', '.join(sorted(self.names.values()))}")


def abdomen_phantom(shape: Sequence[int] = (96, 96), seed: int = 0, noise: float = 12.0) -> Phantom:
    """An axial abdominal CT slice (2D) or volume (3D) in HU with liver, spleen, kidneys, aorta and spine labelled.

    The seed jitters organ positions, sizes and rotations, so different seeds give varied training cases.
    """
    dims = _generation_shape(_check_shape(shape))
    _check_noise(noise)
    rng = np.random.default_rng(seed)
    grid = _grid(dims)
    body = _quadric(grid, _jitter((_BODY,), rng, shift=0.02, scale=0.05, angle=3.0)[0])
    inner = body <= _FAT_DEPTH**2
    labels = np.zeros(dims, dtype=np.int64)
    for value, blobs in _ORGANS:
        labels[_union(grid, _jitter(blobs, rng)) & inner] = value
    tissue = np.where(labels > 0, labels + 2, np.where(inner, 2, (body <= 1).astype(np.int64)))
    image = _render(tissue, _ABDOMEN_HU[None], _ABDOMEN_TEXTURE[None], noise, rng, sigma=max(dims) / 16)
    return Phantom(_nifti_layout(image, len(dims)), _nifti_layout(labels, len(dims)), dict(ABDOMEN_NAMES), ("CT",))


def brain_phantom(shape: Sequence[int] = (48, 48, 48), n_lesions: int = 8, seed: int = 0,
                  noise: float = 0.05) -> Phantom:
    """A two-channel (FLAIR, T1) brain MRI with `n_lesions` separate white-matter lesions and their instance ids.

    Values look z-normalised inside the head and are exactly 0 outside it. Lesions vary in size and contrast and
    are at least two voxels apart, so each is its own 18-connected (4 in 2D) component.
    """
    dims = _generation_shape(_check_shape(shape))
    _check_noise(noise)
    n_lesions = operator.index(n_lesions)
    if n_lesions < 0:
        raise SegxaiError(f"n_lesions must be >= 0, not {n_lesions}")
    rng = np.random.default_rng(seed)
    grid = _grid(dims)
    brain = _quadric(grid, _jitter((_BRAIN,), rng, shift=0.02, scale=0.05, angle=4.0)[0])
    folds = _CORTEX_DEPTH + 0.05 * _smooth_noise(rng, dims, sigma=max(dims) / 24)
    tissue = np.where(brain <= 1, np.where(np.sqrt(brain) > folds, 2, 3), 0)
    tissue[_union(grid, _jitter(_VENTRICLES, rng, shift=0.02, scale=0.08, angle=4.0)) & (tissue > 0)] = 1
    lesions = _place_lesions(tissue == 3, n_lesions, rng)
    tissue = np.where(lesions > 0, lesions + 3, tissue)
    contrast = np.stack([rng.uniform(*_FLAIR_CONTRAST, n_lesions), -rng.uniform(*_T1_CONTRAST, n_lesions)])
    means = np.concatenate([_BRAIN_MEANS, _BRAIN_MEANS[:, 3:4] + contrast], axis=1)
    texture = np.full_like(means, _BRAIN_TEXTURE)
    image = _render(tissue, means, texture, noise, rng, sigma=max(dims) / 8) * (tissue > 0)
    labels = _nifti_layout((lesions > 0).astype(np.int64), len(dims))
    instances = label_instances(labels > 0).astype(np.int64)
    return Phantom(_nifti_layout(image, len(dims)), labels, {1: "lesion"}, BRAIN_CHANNELS, instances)


def phantom_dataset(kind: Literal["abdomen", "brain"], n: int, shape: Sequence[int], seed: int = 0,
                    **kwargs: float | int) -> list[Phantom]:
    """`n` phantoms of one kind with independent seeds spawned from `seed`; `kwargs` go to the phantom function."""
    makers: dict[str, Callable[..., Phantom]] = {"abdomen": abdomen_phantom, "brain": brain_phantom}
    if kind not in makers:
        raise SegxaiError(f"unknown phantom kind {kind!r}; known: {', '.join(makers)}")
    if operator.index(n) < 1:
        raise SegxaiError(f"n must be >= 1, not {n}")
    children = np.random.SeedSequence(seed).spawn(n)
    return [makers[kind](shape, seed=int(child.generate_state(1)[0]), **kwargs) for child in children]


def _check_shape(shape: Sequence[int]) -> tuple[int, ...]:
    """Validate a 2D (H, W) or 3D (H, W, D) spatial shape with every size at least 24.

    3D phantoms use the NIfTI layout segxai.io reads: axial slices along the last axis."""
    try:
        dims = tuple(operator.index(size) for size in shape)
    except TypeError:
        raise SegxaiError(f"shape must be a sequence of 2 or 3 integers, not {shape!r}") from None
    if len(dims) not in (2, 3) or min(dims) < _MIN_SIZE:
        raise SegxaiError(f"shape must be (H, W) or (H, W, D) with every size >= {_MIN_SIZE}, not {dims}")
    return dims


def _generation_shape(dims: tuple[int, ...]) -> tuple[int, ...]:
    """Phantoms are drawn slice-first, (D, H, W); a 3D (H, W, D) request is drawn as (D, H, W)."""
    return dims if len(dims) == 2 else (dims[2], dims[0], dims[1])


def _nifti_layout(array: np.ndarray, spatial_dims: int) -> np.ndarray:
    """Move the slice axis of a drawn (..., D, H, W) volume last, (..., H, W, D); 2D arrays pass through."""
    return np.ascontiguousarray(np.moveaxis(array, -3, -1)) if spatial_dims == 3 else array


def _check_noise(noise: float) -> None:
    if not np.isfinite(noise) or noise < 0:
        raise SegxaiError(f"noise must be a finite standard deviation >= 0, not {noise}")


def _grid(dims: tuple[int, ...], normalised: bool = True) -> list[np.ndarray]:
    """Sparse (z, y, x) coordinate arrays, in [-1, 1] or in voxels; a 2D shape gets the single slice z = 0."""
    axes = [np.linspace(-1.0, 1.0, size) if normalised else np.arange(size, dtype=float) for size in dims]
    coords = np.meshgrid(*axes, indexing="ij", sparse=True)
    return coords if len(dims) == 3 else [np.zeros((1, 1)), *coords]


def _quadric(grid: list[np.ndarray], blob: Blob) -> np.ndarray:
    """Squared normalised radius of every voxel for an ellipsoid: <= 1 inside."""
    (cz, cy, cx), (rz, ry, rx), angle = blob
    dy, dx = grid[1] - cy, grid[2] - cx
    cos, sin = np.cos(np.radians(angle)), np.sin(np.radians(angle))
    along, across = cos * dy + sin * dx, cos * dx - sin * dy
    return ((grid[0] - cz) / rz) ** 2 + (along / ry) ** 2 + (across / rx) ** 2


def _union(grid: list[np.ndarray], blobs: Sequence[Blob]) -> np.ndarray:
    return np.logical_or.reduce([_quadric(grid, blob) <= 1 for blob in blobs])


def _jitter(blobs: Sequence[Blob], rng: np.random.Generator, shift: float = 0.04, scale: float = 0.1,
            angle: float = 6.0) -> list[Blob]:
    """Move, resize and rotate one structure's ellipsoids together, so each seed gives a different case."""
    offset = rng.uniform(-shift, shift, 3)
    factor = rng.uniform(1 - scale, 1 + scale, 3)
    turn = rng.uniform(-angle, angle)
    return [(tuple(np.add(c, offset)), tuple(np.multiply(r, factor)), a + turn) for c, r, a in blobs]


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Low-frequency Gaussian random field with unit standard deviation."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    return field / field.std()


def _render(tissue: np.ndarray, means: np.ndarray, texture: np.ndarray, noise: float,
            rng: np.random.Generator, sigma: float) -> np.ndarray:
    """(C, *spatial) image from a tissue map: per-tissue means (C, T), smooth texture and Gaussian noise.

    The texture is made zero-mean inside every tissue so each tissue keeps its nominal mean intensity.
    """
    channels, n_tissues = means.shape
    field = np.stack([_smooth_noise(rng, tissue.shape, sigma) for _ in range(channels)])
    flat = tissue.ravel()
    counts = np.maximum(np.bincount(flat, minlength=n_tissues), 1)
    field_means = np.stack([np.bincount(flat, f.ravel(), minlength=n_tissues) / counts for f in field])
    image = means[:, tissue] + texture[:, tissue] * (field - field_means[:, tissue])
    image += noise * rng.standard_normal(image.shape)
    return image.astype(np.float32)


def _place_lesions(allowed: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Paint `n` ellipsoidal lesions (ids 1..n, largest first) inside `allowed`, never closer than the gap.

    A lesion that does not fit anywhere is shrunk (down to the smallest radius) before giving up.
    """
    grid = _grid(allowed.shape, normalised=False)
    depth = ndimage.distance_transform_edt(allowed)
    high = min(_LESION_RADII[1], float(depth.max()) - 1.5)  # small phantoms get smaller large lesions
    low = min(_LESION_RADII[0], high)
    lesions = np.zeros(allowed.shape, dtype=np.int64)
    placed: list[tuple[np.ndarray, float]] = []
    for index, wanted in enumerate(_lesion_radii(n, low, high, rng), start=1):
        for radius in (wanted, max(0.75 * wanted, low), max(0.5 * wanted, low)):
            candidates = _free_centres(depth, grid, placed, radius)
            if candidates.size:
                break
        else:
            raise SegxaiError(f"cannot place lesion {index} of {n} in the white matter of a {allowed.shape} "
                              "phantom; ask for fewer lesions or a larger shape")
        centre = np.array(np.unravel_index(rng.choice(candidates), allowed.shape), dtype=float)
        centre = np.concatenate([np.zeros(3 - centre.size), centre])
        radii = radius * rng.uniform(0.75, 1.0, 3)
        lesions[_quadric(grid, (tuple(centre), tuple(radii), rng.uniform(0.0, 180.0))) <= 1] = index
        placed.append((centre, radius))
    return lesions


def _free_centres(depth: np.ndarray, grid: list[np.ndarray], placed: list[tuple[np.ndarray, float]],
                  radius: float) -> np.ndarray:
    """Flat indices where a lesion of `radius` stays inside the tissue and the gap away from placed lesions."""
    free = depth > radius + 1
    for centre, other in placed:
        free &= _squared_distance(grid, centre) >= (radius + other + _LESION_GAP + 1) ** 2
    return np.flatnonzero(free)


def _lesion_radii(n: int, low: float, high: float, rng: np.random.Generator) -> np.ndarray:
    """Bounding radii in voxels in [low, high], largest first; with two or more lesions one is tiny and one large."""
    radii = rng.uniform(low, high, n)
    if n >= 2:
        radii[:2] = rng.uniform(low, min(low + 0.5, high)), rng.uniform(max(high - 1.0, low), high)
    return np.sort(radii)[::-1]


def _squared_distance(grid: list[np.ndarray], centre: np.ndarray) -> np.ndarray:
    return sum((axis - c) ** 2 for axis, c in zip(grid, centre))
