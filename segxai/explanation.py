"""Explanation: what every method returns. Signed, unnormalised maps plus the cost and settings that made them.

Maps stay quantitative (comparable across lesions, patients and models); normalising and thresholding are
explicit helpers, and saving keeps the source scan's geometry. Typed figures travel with the maps: the call's
`Cost` and one `ItemStats` per batch item; `stats` is their JSON-able view. Several results of one call come
back as `Explanations`.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Hashable, Iterator, Literal, Mapping, Sequence, overload

import numpy as np
import torch

from segxai.errors import SegxaiError
from segxai.measure import Cost

Reduce = Literal["sum", "abs", "max_abs"]


@dataclass(frozen=True)
class ItemStats:
    """Base of the typed figures a method reports for one batch item (subclasses add fields, e.g.
    `PerturbationStats.regions`, `IGStats.convergence_delta`)."""

    def as_fields(self) -> dict[str, Any]:
        """The fields as they are (shallow), e.g. to build a subclass's stats from a base instance."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def as_dict(self) -> dict[str, Any]:
        """The fields as a JSON-able dict (tensors and numpy scalars become numbers, tuples lists)."""
        return {name: _jsonable(value) for name, value in self.as_fields().items()}


def stats_view(header: Mapping[str, Any], cost: Cost, items: Sequence[ItemStats | None],
               batched: bool) -> dict[str, Any]:
    """The JSON-able stats of an explanation: `header` (method, params, seed, target, ...), every cost field,
    and the per-item figures: merged at the top for an unbatched explanation (one item), as `items` (one dict
    per batch item) for a batched one.

    Args:
        header: call-level entries, in the order they should appear.
        cost: the call's cost.
        items: one entry per batch item (None where a method recorded nothing).
        batched: whether the explanation keeps its batch axis.

    Returns:
        A new dict.
    """
    stats = {**header, **cost.as_dict()}
    figures = [{} if item is None else item.as_dict() for item in items]
    if batched:
        stats["items"] = figures
    elif figures:
        stats.update(figures[0])
    return stats


@dataclass
class Explanation:
    """Attribution per input channel on the input grid, `(C, *spatial)` (or `(B, C, *spatial)` when `batched`).

    `cost` is the call's typed cost, `items` the typed per-item figures (one per batch item, one when
    unbatched). `stats` is their JSON-able view (see `stats_view`: method, params, seed, target, cost fields,
    the item's figures), to which callers may add notes. `inputs`, `roi` and `target_mask` (CPU tensors on
    the spatial grid) are kept so the explanation can draw itself.
    """

    attribution: torch.Tensor
    stats: dict[str, Any] = field(default_factory=dict)
    inputs: torch.Tensor | None = None
    roi: torch.Tensor | None = None
    target_mask: torch.Tensor | None = None
    batched: bool = False
    cost: Cost = field(default_factory=Cost)
    items: tuple[ItemStats | None, ...] = ()

    def item(self, index: int = 0) -> ItemStats | None:
        """The typed figures of batch item `index` (0 for an unbatched explanation)."""
        if not 0 <= index < len(self.items):
            raise SegxaiError(f"this explanation has figures for {len(self.items)} item(s), not item {index}")
        return self.items[index]

    @property
    def spatial_dims(self) -> int:
        """The number of spatial axes (2 or 3)."""
        return self.attribution.ndim - 1 - int(self.batched)

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """The input grid's shape."""
        return tuple(self.attribution.shape[-self.spatial_dims:])

    def channel_map(self, reduce: Reduce = "sum") -> torch.Tensor:
        """One map over the spatial grid.

        Args:
            reduce: "sum" over channels (signed), "abs" (sum of |values|), or "max_abs" (the signed value of
                the channel with the largest magnitude).

        Returns:
            `(*spatial)`, or `(B, *spatial)` when batched.
        """
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
        """A copy scaled for display (the attribution itself stays unnormalised).

        Args:
            signed: divide by max |value| to [-1, 1], keeping signs; otherwise min-max to [0, 1].

        Returns:
            A float tensor shaped like the attribution (zeros for a constant map).
        """
        a = self.attribution.float()
        if signed:
            peak = a.abs().max()
            return a / peak if peak > 0 else torch.zeros_like(a)
        low, high = a.min(), a.max()
        return (a - low) / (high - low) if high > low else torch.zeros_like(a)

    def binarize(
        self, threshold: float | None = None, top_k: float | None = None, reduce: Reduce = "sum"
    ) -> torch.Tensor:
        """A boolean spatial mask from the channel-reduced map.

        Args:
            threshold: keep voxels whose min-max-normalised value is >= this (0..1).
            top_k: keep this fraction (0 < top_k <= 1) of voxels with the highest values (ties by position).
            reduce: how channels are reduced first (see `channel_map`).

        Returns:
            A boolean tensor shaped like `channel_map(reduce)`.
        """
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


class Explanations(Sequence[Explanation]):
    """Several explanations from one call (one per instance, per case, ...), each under a key.

    A sequence of `Explanation`; `by_key` maps keys to them and `cost` is what the call cost: given by the
    caller when the members shared work (then their own costs are that shared cost, not a part of it), the
    sum of the members' costs otherwise.
    """

    def __init__(self, explanations: Sequence[Explanation], keys: Sequence[Hashable] | None = None,
                 cost: Cost | None = None) -> None:
        """
        Args:
            explanations: the results, in order.
            keys: one distinct key per result (default 0, 1, ...).
            cost: the whole call's cost; None sums the members' costs.
        """
        self.explanations = tuple(explanations)
        self.keys = tuple(range(len(self.explanations))) if keys is None else tuple(keys)
        if len(self.keys) != len(self.explanations) or len(set(self.keys)) != len(self.keys):
            raise SegxaiError(f"need one distinct key per explanation, got {len(self.keys)} keys for "
                              f"{len(self.explanations)} explanations")
        self.cost = sum((e.cost for e in self.explanations), Cost()) if cost is None else cost

    @overload
    def __getitem__(self, index: int) -> Explanation: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[Explanation]: ...

    def __getitem__(self, index):
        return self.explanations[index]

    def __len__(self) -> int:
        return len(self.explanations)

    def __iter__(self) -> Iterator[Explanation]:
        return iter(self.explanations)

    def __repr__(self) -> str:
        return f"Explanations({len(self)} results, keys={list(self.keys)!r})"

    @property
    def by_key(self) -> dict[Hashable, Explanation]:
        """The explanations by key."""
        return dict(zip(self.keys, self.explanations))

    def save(self, out_dir: str | Path, like: Any = None, *, name: str = "attribution",
             **options: Any) -> dict[str, Path]:
        """Save every member with `Explanation.save` under the stem `{name}_{key}`.

        Args:
            out_dir: folder to write into.
            like: the source image whose grid and affine the maps keep.
            name: file stem prefix.
            **options: passed to `Explanation.save` (channel_names, overlay).

        Returns:
            All written paths by key.
        """
        written: dict[str, Path] = {}
        for key, explanation in zip(self.keys, self.explanations):
            written.update(explanation.save(out_dir, like, name=f"{name}_{key}", **options))
        return written


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
    if isinstance(value, (ItemStats, Cost)):
        return value.as_dict()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return value.tolist()
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)
