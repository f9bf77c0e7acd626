"""Explanation: what every method returns. Signed, unnormalised maps plus the cost and settings that made them.

Maps stay quantitative (comparable across lesions, patients and models); normalising and thresholding are
explicit helpers, and saving keeps the source scan's geometry.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import numpy as np
import torch

from segxai.errors import SegxaiError

Reduce = Literal["sum", "abs", "max_abs"]


@dataclass
class Explanation:
    """Attribution per input channel on the input grid, `(C, *spatial)` (or `(B, C, *spatial)` when `batched`).

    `stats` is a plain dict: method, params, seed, target, forward/backward passes (batch items), seconds,
    peak_memory_bytes. `inputs`, `roi` and `target_mask` (CPU tensors on the spatial grid) are kept so the
    explanation can draw itself.
    """

    attribution: torch.Tensor
    stats: dict[str, Any] = field(default_factory=dict)
    inputs: torch.Tensor | None = None
    roi: torch.Tensor | None = None
    target_mask: torch.Tensor | None = None
    batched: bool = False

    @property
    def spatial_dims(self) -> int:
        return self.attribution.ndim - 1 - int(self.batched)

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return tuple(self.attribution.shape[-self.spatial_dims:])

    def channel_map(self, reduce: Reduce = "sum") -> torch.Tensor:
        """One map over the spatial grid: sum over channels (signed), sum of |values|, or the signed value of
        the channel with the largest magnitude."""
        channel_axis = self.attribution.ndim - self.spatial_dims - 1
        a = self.attribution
        if reduce == "sum":
            return a.sum(channel_axis)
        if reduce == "abs":
            return a.abs().sum(channel_axis)
        if reduce == "max_abs":
            index = a.abs().argmax(channel_axis, keepdim=True)
            return a.gather(channel_axis, index).squeeze(channel_axis)
        raise SegxaiError(f"reduce must be 'sum', 'abs' or 'max_abs', not {reduce!r}")

    def normalized(self, signed: bool = False) -> torch.Tensor:
        """A copy scaled for display: min-max to [0, 1], or divided by max |value| to [-1, 1] when `signed`."""
        a = self.attribution.float()
        if signed:
            peak = a.abs().max()
            return a / peak if peak > 0 else torch.zeros_like(a)
        low, high = a.min(), a.max()
        return (a - low) / (high - low) if high > low else torch.zeros_like(a)

    def binarize(
        self, threshold: float | None = None, top_k: float | None = None, reduce: Reduce = "sum"
    ) -> torch.Tensor:
        """A boolean spatial mask from the channel-reduced map: min-max-normalised map >= `threshold`, or the
        `top_k` fraction (0 < top_k <= 1) of voxels with the highest values."""
        if (threshold is None) == (top_k is None):
            raise SegxaiError("binarize needs exactly one of threshold (0..1) or top_k (a fraction 0..1)")
        values = self.channel_map(reduce).float()
        if threshold is not None:
            low, high = values.min(), values.max()
            scaled = (values - low) / (high - low) if high > low else torch.zeros_like(values)
            return scaled >= threshold
        if not 0 < top_k <= 1:
            raise SegxaiError(f"top_k is a fraction of voxels in (0, 1], not {top_k}")
        flat = values.flatten()
        keep = max(1, int(round(top_k * flat.numel())))
        order = torch.argsort(flat, descending=True, stable=True)
        mask = torch.zeros_like(flat, dtype=torch.bool)
        mask[order[:keep]] = True
        return mask.reshape(values.shape)

    def save(
        self,
        out_dir: str | Path,
        like: Any = None,
        *,
        name: str = "attribution",
        channel_names: Sequence[str] | None = None,
        overlay: Callable[..., Path] | None = None,
    ) -> dict[str, Path]:
        """Write the maps, the stats JSON and, given a drawing function, an overlay PNG into `out_dir`.

        3D maps (or any map when `like` is a NIfTI image/path) become NIfTI with the reference affine, one file
        per input channel; 2D maps become `.npy` (exact values) plus a PNG of the normalised map. Each batch
        item gets its own suffix. Every file is written atomically.

        Args:
            out_dir: folder to write into (created if missing).
            like: the source image (a `segxai.io.Image` or a NIfTI path) whose grid and affine the maps keep.
            name: file stem.
            channel_names: one name per attribution channel (default c0, c1, ...).
            overlay: `segxai.report.save_overlay` or a function of the same signature; None writes no overlay.

        Returns:
            The written paths by key (`{name}_{channel}`, `{name}_overlay`, `{name}_stats`).
        """
        from segxai.io import atomic_write, save_array

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        attribution = self.attribution.detach().cpu().float().numpy()
        inputs = None if self.inputs is None else self.inputs.detach().cpu().float().numpy()
        if not self.batched:
            attribution = attribution[None]
            inputs = None if inputs is None else inputs[None]
        as_nifti = self.spatial_dims == 3 or _is_nifti(like)
        names = list(channel_names) if channel_names is not None else [f"c{i}" for i in range(attribution.shape[1])]
        if len(names) != attribution.shape[1]:
            raise SegxaiError(f"{len(names)} channel names for {attribution.shape[1]} attribution channels")
        written: dict[str, Path] = {}
        for item, maps in enumerate(attribution):
            stem = name if len(attribution) == 1 else f"{name}_b{item}"
            for channel, values in zip(names, maps):
                key = f"{stem}_{channel}"
                if as_nifti:
                    written[key] = save_array(values.astype(np.float32), out / f"{key}.nii.gz", like=like)
                else:
                    written[key] = save_array(values.astype(np.float32), out / f"{key}.npy")
                    written[f"{key}_png"] = save_array(_to_uint8(values), out / f"{key}.png")
            if overlay is None:
                continue
            underlay = inputs[item] if inputs is not None else np.zeros((1, *maps.shape[1:]), np.float32)
            written[f"{stem}_overlay"] = overlay(
                out / f"{stem}_overlay.png",
                underlay,
                maps.sum(0),
                mask=self._item_mask(item),
                roi=None if self.roi is None else self.roi.cpu().numpy(),
                title=f"{self.stats.get('method', 'attribution')} (sum over channels)",
            )
        with atomic_write(out / f"{name}_stats.json") as tmp:
            tmp.write_text(json.dumps(_jsonable(self.stats), indent=2))
        written[f"{name}_stats"] = out / f"{name}_stats.json"
        return written


    def _item_mask(self, item: int) -> np.ndarray | None:
        """The target footprint of batch item `item` (a spatial mask may be shared by all items)."""
        if self.target_mask is None:
            return None
        mask = self.target_mask.cpu().numpy()
        return mask[item] if mask.ndim > self.spatial_dims else mask


def _is_nifti(like: Any) -> bool:
    from segxai.io import Image

    if isinstance(like, Image):
        return like.kind == "nifti"
    return like is not None and str(like).endswith((".nii", ".nii.gz"))


def _to_uint8(values: np.ndarray) -> np.ndarray:
    peak = float(np.abs(values).max())
    scaled = 0.5 + 0.5 * values / peak if peak > 0 else np.full(values.shape, 0.5)
    return np.clip(np.round(scaled * 255), 0, 255).astype(np.uint8)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)
