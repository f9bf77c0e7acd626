"""The run configuration (`segxai run CONFIG.yaml`): plain dataclasses, validated while reading.

Every key is checked: an unknown key or a bad value raises `SegxaiError` naming it (`evaluation.sanity.steps:
...`), so a typo never silently falls back to a default. Relative paths are read against the config file's folder.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

from segxai.errors import SegxaiError

LAYOUTS = {
    # layout: (default images folder, default mask pattern); {case} is the case name, {name} the image file name
    "folder": (".", None),
    "kvasir-seg": ("images", "masks/{name}"),
    "msd": ("imagesTr", "labelsTr/{name}"),
    # nnU-Net raw layout (FLARE22 ships in it): CASE_0000.nii.gz, CASE_0001.nii.gz, ... are the modalities of CASE
    "nnunet": ("imagesTr", "labelsTr/{case}.nii.gz"),
    "flare22": ("imagesTr", "labelsTr/{case}.nii.gz"),
}
CHANNEL_SUFFIX_LAYOUTS = ("nnunet", "flare22")
ROI_KINDS = ("none", "mask", "prediction")


@dataclass(frozen=True)
class ModelConfig:
    """A segxai checkpoint and the device to run it on."""

    checkpoint: Path
    device: str | None = None


@dataclass(frozen=True)
class DatasetConfig:
    """A folder of cases: one file per case, or one sub-folder per case (modalities or a DICOM series).

    `masks` is a path pattern under `root` with `{case}` (the case name) and `{name}` (the image file name);
    `modalities` orders the files of a sub-folder case by glob patterns; `include` filters case entries.
    """

    root: Path
    layout: str = "folder"
    images: str = "."
    masks: str | None = None
    modalities: tuple[str, ...] = ()
    include: str = "*"
    limit: int | None = None


@dataclass(frozen=True)
class MethodConfig:
    """One explanation method by its `segxai.methods` name, with constructor parameters."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class EvaluationConfig:
    """Which parts of the evaluation suite run, and their settings (None switches a part off)."""

    threshold: float = 0.5
    pointing_tolerance: float = 0.0
    faithfulness_steps: int | None = 10
    sanity_steps: int | None = 3
    sanity_max_correlation: float = 0.5
    stability_noise: float | None = 0.05
    stability_samples: int = 1


@dataclass(frozen=True)
class RunConfig:
    """Everything one run needs; `fingerprint` identifies the settings a finished case was computed with."""

    model: ModelConfig
    dataset: DatasetConfig
    methods: tuple[MethodConfig, ...]
    targets: tuple[str, ...]
    rois: tuple[str, ...] = ("none",)
    evaluation: EvaluationConfig = EvaluationConfig()
    out: Path = Path("run_out")
    seed: int = 0
    report_cases: int = 8
    source: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def fingerprint(self) -> str:
        settings = {k: v for k, v in asdict(self).items() if k not in ("out", "source", "report_cases")}
        return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def load_config(path: str | Path) -> RunConfig:
    """Read and validate a YAML run configuration."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise SegxaiError(f"run configuration {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise SegxaiError(f"cannot read run configuration {path}: {error}") from None
    return parse_config(data, base=path.parent)


def parse_config(data: Any, base: str | Path = ".") -> RunConfig:
    """Validate a configuration mapping (as read from YAML); relative paths are taken from `base`."""
    base = Path(base)
    top = _mapping(data, "config", required={"model", "dataset", "methods", "targets"},
                   optional={"rois", "evaluation", "out", "seed", "report"})
    report = _mapping(top.get("report", {}), "report", optional={"cases"})
    return RunConfig(
        model=_model(top["model"], base),
        dataset=_dataset(top["dataset"], base),
        methods=_methods(top["methods"]),
        targets=_targets(top["targets"]),
        rois=_rois(top.get("rois", ["none"])),
        evaluation=_evaluation(top.get("evaluation", {})),
        out=base / _text(top.get("out", "run_out"), "out"),
        seed=_int(top.get("seed", 0), "seed", minimum=0),
        report_cases=_int(report.get("cases", 8), "report.cases", minimum=0),
        source=dict(data),
    )


def _model(value: Any, base: Path) -> ModelConfig:
    if isinstance(value, str):
        value = {"checkpoint": value}
    model = _mapping(value, "model", required={"checkpoint"}, optional={"device"})
    device = model.get("device")
    return ModelConfig(base / _text(model["checkpoint"], "model.checkpoint"),
                       None if device is None else _text(device, "model.device"))


def _dataset(value: Any, base: Path) -> DatasetConfig:
    data = _mapping(value, "dataset", required={"root"},
                    optional={"layout", "images", "masks", "modalities", "include", "limit"})
    layout = _text(data.get("layout", "folder"), "dataset.layout")
    if layout not in LAYOUTS:
        raise SegxaiError(f"dataset.layout: unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    images, masks = LAYOUTS[layout]
    masks = data.get("masks", masks)
    if masks is not None:
        _mask_pattern(_text(masks, "dataset.masks"))
    modalities = data.get("modalities", [])
    if not isinstance(modalities, list) or not all(isinstance(m, str) and m for m in modalities):
        raise SegxaiError(f"dataset.modalities: expected a list of glob patterns, not {modalities!r}")
    limit = data.get("limit")
    return DatasetConfig(
        root=base / _text(data["root"], "dataset.root"), layout=layout,
        images=_text(data.get("images", images), "dataset.images"), masks=masks, modalities=tuple(modalities),
        include=_text(data.get("include", "*"), "dataset.include"),
        limit=None if limit is None else _int(limit, "dataset.limit", minimum=1),
    )


def _mask_pattern(pattern: str) -> None:
    if "{case}" not in pattern and "{name}" not in pattern:
        raise SegxaiError(f"dataset.masks: the pattern {pattern!r} needs {{case}} or {{name}} to tell cases apart")
    try:
        pattern.format(case="case", name="name")
    except (KeyError, IndexError, ValueError) as error:
        raise SegxaiError(f"dataset.masks: bad pattern {pattern!r} ({error!r}); only {{case}} and {{name}} are filled in") from None


def _methods(value: Any) -> tuple[MethodConfig, ...]:
    from segxai.methods import METHODS

    if not isinstance(value, list) or not value:
        raise SegxaiError("methods: expected a non-empty list of method names or {name, params} mappings")
    methods = []
    for i, item in enumerate(value):
        where = f"methods[{i}]"
        entry = _mapping({"name": item} if isinstance(item, str) else item, where, required={"name"},
                         optional={"params"})
        name = _text(entry["name"], f"{where}.name")
        if name not in METHODS:
            raise SegxaiError(f"{where}.name: unknown method {name!r}; choose one of {', '.join(sorted(METHODS))}")
        params = entry.get("params") or {}
        if not isinstance(params, dict) or not all(isinstance(k, str) and k.isidentifier() for k in params):
            raise SegxaiError(f"{where}.params: expected a mapping of parameter names to values, not {params!r}")
        methods.append(MethodConfig(name, dict(params)))
    names = [m.name for m in methods]
    if len(set(names)) != len(names):
        raise SegxaiError(f"methods: each method may appear once (outputs are kept per method), got {names}")
    return tuple(methods)


def _targets(value: Any) -> tuple[str, ...]:
    from segxai.targets import parse_target

    if not isinstance(value, list) or not value:
        raise SegxaiError("targets: expected a non-empty list of target specs such as 'class:1'")
    for i, spec in enumerate(value):
        try:
            parse_target(_text(spec, f"targets[{i}]"))
        except SegxaiError as error:
            raise SegxaiError(f"targets[{i}]: {error}") from None
    return tuple(value)


def _rois(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise SegxaiError("rois: expected a non-empty list such as ['none', 'mask:4', 'prediction:4']")
    for i, spec in enumerate(value):
        kind, _, margin = _text(spec, f"rois[{i}]").partition(":")
        if kind not in ROI_KINDS or (kind == "none" and margin):
            raise SegxaiError(f"rois[{i}]: unknown ROI provider {spec!r}; use none, mask[:MARGIN] or prediction[:MARGIN]")
        try:
            if margin and float(margin) < 0:
                raise ValueError
        except ValueError:
            raise SegxaiError(f"rois[{i}]: the margin of {spec!r} must be a non-negative number of voxels") from None
    if len(set(value)) != len(value):
        raise SegxaiError(f"rois: each ROI provider may appear once, got {value}")
    return tuple(value)


def _evaluation(value: Any) -> EvaluationConfig:
    data = _mapping(value, "evaluation", optional={"threshold", "pointing_tolerance", "faithfulness", "sanity",
                                                    "stability"})
    defaults = EvaluationConfig()
    faithfulness = _part(data, "faithfulness", {"steps"})
    sanity = _part(data, "sanity", {"steps", "max_correlation"})
    stability = _part(data, "stability", {"noise", "samples"})
    threshold = _number(data.get("threshold", defaults.threshold), "evaluation.threshold", 0.0, 1.0)
    return EvaluationConfig(
        threshold=threshold,
        pointing_tolerance=_number(data.get("pointing_tolerance", 0.0), "evaluation.pointing_tolerance", 0.0),
        faithfulness_steps=None if faithfulness is None else _int(
            faithfulness.get("steps", defaults.faithfulness_steps), "evaluation.faithfulness.steps", minimum=1),
        sanity_steps=None if sanity is None else _int(
            sanity.get("steps", defaults.sanity_steps), "evaluation.sanity.steps", minimum=1),
        sanity_max_correlation=_number(
            (sanity or {}).get("max_correlation", defaults.sanity_max_correlation),
            "evaluation.sanity.max_correlation", -1.0, 1.0),
        stability_noise=None if stability is None else _number(
            stability.get("noise", defaults.stability_noise), "evaluation.stability.noise", 0.0),
        stability_samples=_int((stability or {}).get("samples", defaults.stability_samples),
                               "evaluation.stability.samples", minimum=1),
    )


def _part(data: Mapping[str, Any], name: str, keys: set[str]) -> dict[str, Any] | None:
    """An optional suite part: absent = defaults, `false` = off, or a mapping of its settings."""
    value = data.get(name, {})
    if value is False or value is None:
        return None
    if value is True:
        return {}
    return _mapping(value, f"evaluation.{name}", optional=keys)


# ------------------------------------------------------------------------------------------ checks
def _mapping(value: Any, where: str, required: set[str] = frozenset(), optional: set[str] = frozenset()) -> dict:
    if not isinstance(value, dict):
        raise SegxaiError(f"{where}: expected a mapping, not {type(value).__name__}")
    unknown = sorted(set(map(str, value)) - required - optional)
    if unknown:
        known = ", ".join(sorted(required | optional))
        raise SegxaiError(f"{where}.{unknown[0]}: unknown key; known keys: {known}")
    missing = sorted(required - set(value))
    if missing:
        raise SegxaiError(f"{where}.{missing[0]}: required key is missing")
    return value


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise SegxaiError(f"{where}: expected a non-empty string, not {value!r}")
    return value


def _int(value: Any, where: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise SegxaiError(f"{where}: expected an integer >= {minimum}, not {value!r}")
    return value


def _number(value: Any, where: str, low: float, high: float = float("inf")) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise SegxaiError(f"{where}: expected a number in [{low}, {high}], not {value!r}")
    return float(value)
