"""The one place that maps between an image file's voxel grid and the grid a model runs on.

A model may transpose, crop and resample what it reads (nnU-Net does all three; a MONAI bundle's transforms may).
Explanations are computed on the model's grid; whatever a user gives on the command line (voxel targets, boxes,
masks) is on the image's grid and is mapped forwards, and every map is mapped back before it is written, so
outputs always share the scan's grid and affine. `SameGrid` is the identity of models that read images as
they are; `Reoriented` turns a volume to canonical RAS+ axes for models that read raw arrays (segxai checkpoints
and localizers trained on files), so that every scan reaches them the same way round.
"""
from __future__ import annotations

import dataclasses
from typing import Protocol, Sequence, runtime_checkable

import numpy as np
import torch

from segxai.errors import SegxaiError
from segxai.explanation import Explanation
from segxai.io import Image


@runtime_checkable
class GridMap(Protocol):
    """How the model's input grid relates to the image's grid (both spatial only; channels are untouched)."""

    image_shape: tuple[int, ...]
    model_shape: tuple[int, ...]

    def mask_to_model(self, mask: torch.Tensor) -> torch.Tensor:
        """A boolean mask on the image grid, on the model grid (no voxel of a small mask is lost)."""

    def index_to_model(self, index: Sequence[int]) -> tuple[int, ...]:
        """A voxel index of the image grid, as the nearest voxel of the model grid."""

    def values_to_image(self, values: torch.Tensor) -> torch.Tensor:
        """Continuous maps `(..., *model_shape)` (attributions, inputs) interpolated back to `(..., *image_shape)`."""

    def labels_to_image(self, labels: torch.Tensor) -> torch.Tensor:
        """A label or boolean map on the model grid, back on the image grid (nearest neighbour)."""


@dataclasses.dataclass(frozen=True)
class SameGrid:
    """The identity: the model reads the image's grid as it is."""

    image_shape: tuple[int, ...]

    @property
    def model_shape(self) -> tuple[int, ...]:
        return self.image_shape

    def mask_to_model(self, mask: torch.Tensor) -> torch.Tensor:
        return mask

    def index_to_model(self, index: Sequence[int]) -> tuple[int, ...]:
        return tuple(int(i) for i in index)

    def values_to_image(self, values: torch.Tensor) -> torch.Tensor:
        return values

    def labels_to_image(self, labels: torch.Tensor) -> torch.Tensor:
        return labels


def check_index(index: Sequence[int], shape: Sequence[int]) -> tuple[int, ...]:
    """`index` as ints, or a clear error when it does not name a voxel of `shape`."""
    index = tuple(int(i) for i in index)
    if len(index) != len(shape) or any(not 0 <= i < s for i, s in zip(index, shape)):
        raise SegxaiError(f"voxel {list(index)} is outside the image grid {list(shape)} (give one index per axis, "
                          "in the image file's own axis order)")
    return index


def explanation_on_image(explanation: Explanation, grid: GridMap, inputs: torch.Tensor | None = None) -> Explanation:
    """The explanation with its maps on the image grid: attribution interpolated back, ROI and target mask
    mapped back by nearest neighbour, and `inputs` (the image as the overlay should show it) in place of the
    model's inputs. The identity grid returns the explanation itself."""
    if isinstance(grid, SameGrid):
        return explanation
    if explanation.batched:
        raise SegxaiError("map a batched explanation back one item at a time")

    def labels(mask: torch.Tensor | None) -> torch.Tensor | None:
        return None if mask is None else grid.labels_to_image(mask)

    stats = {**explanation.stats, "grid": {"model": list(grid.model_shape), "image": list(grid.image_shape)}}
    return dataclasses.replace(
        explanation, attribution=grid.values_to_image(explanation.attribution.float()), stats=stats,
        inputs=inputs if inputs is not None else grid.values_to_image(explanation.inputs.float()),
        roi=labels(explanation.roi), target_mask=labels(explanation.target_mask))


@dataclasses.dataclass(frozen=True)
class AffineGrid:
    """Two grids related through world coordinates: `image_affine` and `model_affine` map each grid's voxel
    indices to the same world millimetres (how MONAI's transforms record reorientation, resampling and crops).
    Maps come back by linear interpolation, masks and labels by nearest neighbour; image voxels beyond the
    model grid's edge take the edge's value."""

    image_shape: tuple[int, ...]
    model_shape: tuple[int, ...]
    image_affine: np.ndarray
    model_affine: np.ndarray

    def _model_to_image(self) -> np.ndarray:
        """The matrix from model voxel indices to image voxel indices."""
        return np.linalg.inv(self.image_affine) @ self.model_affine

    def _sample(self, values: np.ndarray, target: tuple[int, ...], to_source: np.ndarray, order: int) -> np.ndarray:
        """`values` `(N, *source)` read at every voxel of `target` through the voxel-to-voxel matrix `to_source`."""
        from scipy.ndimage import affine_transform

        dims = len(target)
        matrix, offset = to_source[:dims, :dims], to_source[:dims, dims]
        return np.stack([affine_transform(v, matrix, offset, output_shape=target, order=order, mode="nearest")
                         for v in values])

    def mask_to_model(self, mask: torch.Tensor) -> torch.Tensor:
        array = np.asarray(mask.cpu(), dtype=np.float32)[None]
        out = self._sample(array, self.model_shape, self._model_to_image(), 0)[0] > 0.5
        points = np.argwhere(array[0] > 0)
        if len(points):
            out[tuple(self._to_model_points(points).T)] = True
        return torch.from_numpy(out)

    def _to_model_points(self, points: np.ndarray) -> np.ndarray:
        homogeneous = np.c_[points, np.ones(len(points))] @ np.linalg.inv(self._model_to_image()).T
        rounded = np.rint(homogeneous[:, :-1]).astype(int)
        return np.clip(rounded, 0, np.asarray(self.model_shape) - 1)

    def index_to_model(self, index: Sequence[int]) -> tuple[int, ...]:
        point = np.asarray([check_index(index, self.image_shape)])
        return tuple(int(v) for v in self._to_model_points(point)[0])

    def values_to_image(self, values: torch.Tensor) -> torch.Tensor:
        lead = values.shape[:-len(self.model_shape)]
        flat = values.detach().float().cpu().reshape(-1, *self.model_shape).numpy()
        out = self._sample(flat, self.image_shape, np.linalg.inv(self._model_to_image()), 1)
        return torch.from_numpy(out.astype(np.float32).reshape(*lead, *self.image_shape))

    def labels_to_image(self, labels: torch.Tensor) -> torch.Tensor:
        array = np.asarray(labels.cpu())
        out = self._sample(array[None].astype(np.float32), self.image_shape, np.linalg.inv(self._model_to_image()), 0)
        return torch.from_numpy(np.rint(out[0]).astype(array.dtype))


CANONICAL = "RAS"  # the one orientation models that read raw arrays work in, as nibabel and MONAI name it


@dataclasses.dataclass(frozen=True, eq=False)
class Reoriented:
    """The image's grid turned to canonical RAS+ axes (index 0 towards the patient's left -> right, then
    posterior -> anterior, inferior -> superior): an axis permutation and flips read from the affine, exact both
    ways (no interpolation), so a model sees every scan the same way round and maps come back voxel for voxel
    in the file's own orientation. `transform[i]` = (model axis, +1 or -1 for a flip) of image axis i."""

    image_shape: tuple[int, ...]
    transform: tuple[tuple[int, int], ...]

    @classmethod
    def of(cls, shape: Sequence[int], affine: np.ndarray, codes: str = CANONICAL) -> "Reoriented":
        """The turn of a grid of `shape` with voxel -> world `affine` to RAS+ (or to the axis `codes`, each the
        direction its axis increases towards, e.g. "IPL" for the report's radiological views)."""
        import nibabel.orientations as orientations

        if np.shape(affine) != (4, 4):
            raise SegxaiError(f"an affine is 4x4, got shape {np.shape(affine)}")
        start = orientations.io_orientation(np.asarray(affine, dtype=np.float64))
        ornt = orientations.ornt_transform(start, orientations.axcodes2ornt(tuple(codes)))
        return cls(tuple(int(n) for n in shape), tuple((int(a), int(f)) for a, f in ornt))

    @property
    def model_shape(self) -> tuple[int, ...]:
        shape = [0] * len(self.image_shape)
        for size, (axis, _) in zip(self.image_shape, self.transform):
            shape[axis] = size
        return tuple(shape)

    def model_affine(self, image_affine: np.ndarray) -> np.ndarray:
        """Voxel -> world of the turned grid (the same world as `image_affine`)."""
        import nibabel.orientations as orientations

        return np.asarray(image_affine, np.float64) @ orientations.inv_ornt_aff(np.asarray(self.transform),
                                                                               self.image_shape)

    def values_to_model(self, values):
        """Any array or tensor `(..., *image_shape)` on the model's grid (exact)."""
        lead = values.ndim - len(self.image_shape)
        flips = [lead + i for i, (_, flip) in enumerate(self.transform) if flip < 0]
        order = {axis: i for i, (axis, _) in enumerate(self.transform)}
        permutation = [*range(lead), *(lead + order[k] for k in range(len(self.transform)))]
        if isinstance(values, torch.Tensor):
            return (values.flip(flips) if flips else values).permute(permutation)
        return np.ascontiguousarray(np.transpose(np.flip(values, flips) if flips else values, permutation))

    def values_to_image(self, values):
        lead = values.ndim - len(self.image_shape)
        permutation = [*range(lead), *(lead + axis for axis, _ in self.transform)]
        flips = [lead + i for i, (_, flip) in enumerate(self.transform) if flip < 0]
        if isinstance(values, torch.Tensor):
            turned = values.permute(permutation)
            return turned.flip(flips) if flips else turned
        turned = np.transpose(values, permutation)
        return np.ascontiguousarray(np.flip(turned, flips) if flips else turned)

    mask_to_model = labels_to_model = values_to_model
    labels_to_image = values_to_image

    def index_to_model(self, index: Sequence[int]) -> tuple[int, ...]:
        index = check_index(index, self.image_shape)
        turned = [0] * len(index)
        for i, (axis, flip) in enumerate(self.transform):
            turned[axis] = index[i] if flip > 0 else self.image_shape[i] - 1 - index[i]
        return tuple(turned)


def canonical_grid(image: Image) -> GridMap:
    """The turn of a volume with an affine (NIfTI, DICOM) to RAS+, or the identity for pictures and arrays
    without geometry (a 2D picture has no patient axes to turn)."""
    if image.affine is None or image.spatial_dims != 3:
        return SameGrid(tuple(image.spatial_shape))
    grid = Reoriented.of(image.spatial_shape, image.affine)
    return SameGrid(grid.image_shape) if all(i == a and f > 0 for i, (a, f) in enumerate(grid.transform)) else grid


def grid_values(grid: GridMap, values: np.ndarray) -> np.ndarray:
    """An image array `(C, *image_shape)` on the model's grid, for the grids that map values forwards exactly
    (the identity and `Reoriented`)."""
    if isinstance(grid, SameGrid):
        return values
    if isinstance(grid, Reoriented):
        return grid.values_to_model(values)
    raise SegxaiError(f"{type(grid).__name__} does not map image values onto the model's grid")
