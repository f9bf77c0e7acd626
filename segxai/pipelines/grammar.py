"""The one grammar of the file pipelines: ROIs, targets and method settings, as written on the command line
(`--roi`, `--region`, `--target`, `--param`) and in run configurations (`rois`, `targets`). A form means the
same everywhere; margins are always `+M` (voxels).

| ROI | meaning |
|---|---|
| `none` | no ROI: the whole input |
| `box:START:SIZE` | a box, comma-separated per spatial axis, e.g. `box:10,20,5:32,32,8` |
| `box:CORNER,SIDE` | a square (a cube in 3D) of side SIDE from CORNER, e.g. `box:64,80,32` |
| `mask:FILE[+M]` | the non-zero voxels of a mask file on the image grid, grown by M voxels |
| `reference[:CLS][+M]` | the case's reference mask (`--reference`, `dataset.masks`) of class CLS, grown |
| `prediction[:CLS][+M]` | the model's own prediction of class CLS, grown |
| `text:PROMPT@LOCALIZER[+M]` | the organ a trained localizer finds from PROMPT, grown by M (default 8) |

CLS defaults to the target's class. Targets: `class:CLS`, `instance:[CLS:]INDEX`, `voxel:[CLS:]i,j,k`
(`segxai.targets.parse_target`; `VOXEL_ORDER` says what i,j,k are) and, for `segxai explain` only, `instances:CLS` (every predicted instance of
CLS, each explained by itself).
"""
from __future__ import annotations

import ast
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from segxai.errors import SegxaiError
from segxai.models.case import Case
from segxai.targets import Target, parse_target

ROI_FORMS = ("none, box:START:SIZE, box:CORNER,SIDE, mask:FILE[+M], reference[:CLS][+M], prediction[:CLS][+M], "
             "text:PROMPT@LOCALIZER[+M]")
GROWN = ("mask", "reference", "prediction", "text")
TEXT_MARGIN = 8.0


@dataclass(frozen=True)
class RoiSpec:
    """A parsed ROI (`spec` as written); `resolve` turns it into a mask on one case's grid."""

    spec: str
    kind: str
    margin: float | None = None
    cls: int | None = None
    path: Path | None = None
    prompt: str | None = None
    box: tuple[tuple[int, ...], ...] = ()

    def __str__(self) -> str:
        return self.spec

    def resolve(self, case: Case, cls: int | None = None) -> torch.Tensor | None:
        """The ROI on the grid `case`'s model reads (None for `none`); `cls` is the target's class, the default
        CLS. Boxes, mask files, references and text ROIs are given on the image's grid and mapped forwards;
        margins are grown on the model's grid."""
        from segxai import roi

        margin = self.margin or 0.0
        if self.kind == "none":
            return None
        if self.kind == "box":
            return case.to_model(roi.from_box(*self._box(case.image.spatial_dims), case.image.spatial_shape))
        if self.kind == "mask":
            from segxai.io import load_mask

            return roi.from_mask(case.to_model(load_mask(self.path, like=case.image) > 0), margin)
        if self.kind == "text":
            from segxai.localize import load_localizer

            found = roi.from_text(self.prompt, load_localizer(self.path), case.image, margin=0)
            return roi.from_mask(case.to_model(found), TEXT_MARGIN if self.margin is None else self.margin)
        chosen = self.cls if self.cls is not None else cls
        if chosen is None:
            raise SegxaiError(f"ROI {self.spec!r} needs a class: write {self.kind}:CLS or use a target with a class")
        if self.kind == "prediction":
            return roi.from_predicted_labels(case.model_prediction, chosen, margin)
        truth = case.reference_of(chosen)
        if truth is None:
            raise SegxaiError(f"ROI {self.spec!r} needs the case's reference mask (--reference on the command line, "
                              "dataset.masks in a run)")
        if not bool(truth.any()):
            raise SegxaiError(f"ROI {self.spec!r}: the reference mask of case {case.name} holds no voxel of class "
                              f"{chosen}")
        return roi.from_mask(case.to_model(truth), margin)

    def _box(self, dims: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        if len(self.box) == 2:
            return self.box[0], self.box[1]
        values = self.box[0]
        if len(values) != dims + 1:
            raise SegxaiError(f"ROI {self.spec!r}: give box:CORNER,SIDE with {dims} corner values and a side "
                              f"(e.g. box:{','.join(['8'] * dims)},32) or box:START:SIZE")
        return values[:-1], (values[-1],) * dims


def parse_roi(spec: str, base: str | Path | None = None) -> RoiSpec:
    """Read an ROI spec (syntax only: files are read when it is resolved on a case).

    Args:
        spec: a form of the table above, e.g. `prediction:1+4` or `mask:liver.nii.gz`.
        base: the folder relative file names are read from (a run configuration's folder); None: as given.
    Returns:
        The parsed spec.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise SegxaiError(f"an ROI is a non-empty string ({ROI_FORMS}), not {spec!r}")
    body, margin = _split_margin(spec)
    kind, colon, rest = body.partition(":")
    if margin is not None and kind not in GROWN:
        raise SegxaiError(f"ROI {spec!r}: only {', '.join(GROWN)} ROIs take a +MARGIN")
    if kind == "none" and not colon:
        return RoiSpec(spec, "none")
    if kind == "box" and rest:
        return RoiSpec(spec, "box", box=_box_values(rest, spec))
    if kind in ("reference", "prediction") and (not colon or rest):
        cls = None if not colon else _class(rest, spec)
        return RoiSpec(spec, kind, margin, cls=cls)
    if kind == "mask" and rest:
        return RoiSpec(spec, "mask", margin, path=_path(rest, base))
    if kind == "text":
        prompt, at, path = rest.rpartition("@")
        if not at or not prompt.strip() or not path:
            raise SegxaiError(f"ROI {spec!r}: give text:PROMPT@LOCALIZER.pt, e.g. 'text:left kidney@localizer.pt'")
        return RoiSpec(spec, "text", margin, path=_path(path, base), prompt=prompt)
    raise SegxaiError(f"unknown ROI {spec!r}; use {ROI_FORMS}")


def _split_margin(spec: str) -> tuple[str, float | None]:
    """`BODY+M` -> (BODY, M); a `+` followed by no number belongs to the body (a file name, a prompt)."""
    body, plus, tail = spec.rpartition("+")
    if not plus:
        return spec, None
    try:
        margin = float(tail)
    except ValueError:
        return spec, None
    if not math.isfinite(margin) or margin < 0:
        raise SegxaiError(f"ROI {spec!r}: the margin must be a non-negative number of voxels")
    return body, margin


def _box_values(text: str, spec: str) -> tuple[tuple[int, ...], ...]:
    """`START:SIZE` -> (start, size); `CORNER,SIDE` -> (corner + side,)."""
    try:
        values = tuple(tuple(int(v) for v in part.split(",")) for part in text.split(":"))
    except ValueError:
        values = ()
    if len(values) not in (1, 2) or any(len(v) < 2 for v in values):
        raise SegxaiError(f"ROI {spec!r}: give box:START:SIZE (e.g. box:10,20,5:32,32,8) or box:CORNER,SIDE "
                          "(e.g. box:64,80,32), whole numbers per axis")
    return values


def _class(text: str, spec: str) -> int:
    if not text.isdigit():
        raise SegxaiError(f"ROI {spec!r}: the class is a whole number (margins are written +M, e.g. "
                          f"{spec.partition(':')[0]}:1+4)")
    return int(text)


def _path(text: str, base: str | Path | None) -> Path:
    path = Path(text).expanduser()
    return path if base is None or path.is_absolute() else Path(base) / path


# ----------------------------------------------------------------------------------------------- targets
@dataclass(frozen=True)
class EveryInstance:
    """`instances:CLS`: every predicted instance of class CLS, each explained by itself."""

    cls: int


def read_target(spec: str) -> Target | EveryInstance:
    """A target spec: `class:CLS`, `instance:[CLS:]INDEX`, `voxel:[CLS:]i,j,k` or `instances:CLS`."""
    if not isinstance(spec, str):
        raise SegxaiError(f"a target is a string such as 'class:1', not {spec!r}")
    kind, _, rest = spec.partition(":")
    if kind == "instances":
        if not rest.isdigit():
            raise SegxaiError(f"target instances:CLS needs a class number, got {spec!r}")
        return EveryInstance(int(rest))
    return parse_target(spec)


# ----------------------------------------------------------------------------------------------- settings
def parse_params(items: Sequence[str]) -> dict[str, Any]:
    """`NAME=VALUE` settings; values are read as Python literals (8, 0.5, (8, 8, 4), 'blur') or kept as text."""
    params: dict[str, Any] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.isidentifier():
            raise SegxaiError(f"--param takes NAME=VALUE, got {item!r}")
        try:
            params[name] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            params[name] = value
    return params


def parse_method_params(items: Sequence[str]) -> dict[str, dict[str, Any]]:
    """`METHOD.NAME=VALUE` settings grouped by method."""
    grouped: dict[str, dict[str, Any]] = {}
    for item in items:
        method, dot, rest = item.partition(".")
        if not dot:
            raise SegxaiError(f"--param takes METHOD.NAME=VALUE for evaluate, got {item!r}")
        grouped.setdefault(method, {}).update(parse_params([rest]))
    return grouped
