"""The run configuration (`segxai run CONFIG.yaml`), validated by pydantic models of its sections.

Every key is checked: an unknown key, a missing one or a bad value raises one `SegxaiError` naming the key and
what is allowed (`evaluation.sanity.steps: input should be greater than or equal to 1, not 0`), so a typo never
silently falls back to a default. Values are not coerced (`seed: "3"` is an error). ROIs and targets use the
grammar of `segxai.pipelines.grammar`; relative paths are read against the config file's folder.
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer, PlainValidator,
                      PrivateAttr, ValidationError, ValidationInfo, field_validator, model_validator)

from segxai.errors import SegxaiError
from segxai.pipelines.grammar import EveryInstance, RoiSpec, parse_roi, read_target

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


def _text(value: Any) -> Any:
    if isinstance(value, str) and not value:
        raise ValueError("expected a non-empty string")
    return value


def _under_base(value: Path, info: ValidationInfo) -> Path:
    base = (info.context or {}).get("base")
    return value if base is None or value.is_absolute() else Path(base) / value


def _roi(value: Any, info: ValidationInfo) -> RoiSpec:
    """An ROI spec; files it names (masks, localizers) must exist when the configuration is read."""
    if isinstance(value, RoiSpec):
        return value
    spec = parse_roi(value, (info.context or {}).get("base"))
    if spec.path is not None and not spec.path.is_file():
        hint = "; the case's own mask is the ROI reference[:CLS][+M]" if spec.kind == "mask" else ""
        raise ValueError(f"ROI {spec.spec!r}: the file {spec.path} does not exist{hint}")
    return spec


def _target(value: Any) -> str:
    if isinstance(read_target(value), EveryInstance):
        raise ValueError(f"{value!r} is for `segxai explain`; a run takes class:, instance: or voxel: targets")
    return value


Text = Annotated[str, BeforeValidator(_text)]
FilePath = Annotated[Path, Field(strict=False), BeforeValidator(_text), AfterValidator(_under_base)]
Count = Annotated[int, Field(ge=1)]
Roi = Annotated[RoiSpec, PlainValidator(_roi), PlainSerializer(str)]


class Section(BaseModel):
    """Base of every section: frozen, unknown keys refused, values taken as typed (YAML types them), numbers
    finite (`.inf` and `.nan` refused)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class ModelConfig(Section):
    """The model (`segxai.models.load`: a segxai checkpoint, an nnU-Net v2 folder, a MONAI bundle or a TorchScript
    file) and how to run it. `model: abdomen.pt` is short for `{path: abdomen.pt}`; `checkpoint` is the older
    name of `path`. `folds`, `checkpoint_name` and `mirror` are nnU-Net's; `activation` is for TorchScript."""

    path: FilePath
    device: Text | None = None
    folds: Annotated[tuple[Annotated[str, BeforeValidator(str)], ...], Field(strict=False)] | None = None
    checkpoint_name: Text = "checkpoint_final.pth"
    mirror: bool = False
    activation: Literal["softmax", "sigmoid", "none"] | None = None

    @model_validator(mode="before")
    @classmethod
    def _short_form(cls, value: Any) -> Any:
        if isinstance(value, str):
            return {"path": value}
        if isinstance(value, dict) and "checkpoint" in value and "path" not in value:
            return {("path" if k == "checkpoint" else k): v for k, v in value.items()}
        return value

    @property
    def checkpoint(self) -> Path:
        return self.path

    def load(self) -> Any:
        """The loaded model (`segxai.models.case.LoadedModel`)."""
        from segxai.models.loading import load

        return load(self.path, device=self.device, folds=self.folds, checkpoint_name=self.checkpoint_name,
                    mirror=self.mirror, activation=self.activation)


class DatasetConfig(Section):
    """A folder of cases: one file per case, or one sub-folder per case (modalities or a DICOM series).

    `masks` is a path pattern under `root` with `{case}` (the case name) and `{name}` (the image file name);
    `modalities` orders the files of a sub-folder case by glob patterns; `include` filters case entries. A
    `layout` sets the defaults of `images` and `masks`.
    """

    root: FilePath
    layout: Literal[tuple(LAYOUTS)] = "folder"
    images: Text = "."
    masks: Text | None = None
    modalities: Annotated[tuple[Text, ...], Field(strict=False)] = ()
    include: Text = "*"
    limit: Count | None = None

    @model_validator(mode="before")
    @classmethod
    def _layout_defaults(cls, value: Any) -> Any:
        if not isinstance(value, dict) or value.get("layout", "folder") not in LAYOUTS:
            return value
        images, masks = LAYOUTS[value.get("layout", "folder")]
        return {"images": images, "masks": masks, **value}

    @field_validator("masks")
    @classmethod
    def _mask_pattern(cls, pattern: str | None) -> str | None:
        if pattern is None:
            return None
        if "{case}" not in pattern and "{name}" not in pattern:
            raise ValueError(f"the pattern {pattern!r} needs {{case}} or {{name}} to tell cases apart")
        try:
            pattern.format(case="case", name="name")
        except (KeyError, IndexError, ValueError) as error:
            raise ValueError(f"bad pattern {pattern!r} ({error!r}); only {{case}} and {{name}} are filled in") from None
        return pattern


class MethodConfig(Section):
    """One method by its registered name (`segxai.methods.METHODS`), with constructor parameters."""

    name: Text
    params: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _short_form(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value

    @field_validator("name")
    @classmethod
    def _registered(cls, name: str) -> str:
        from segxai.methods import METHODS

        if name not in METHODS:
            raise ValueError(f"unknown method {name!r}; choose one of {', '.join(sorted(METHODS))}")
        return name

    @field_validator("params")
    @classmethod
    def _identifiers(cls, params: dict[str, Any]) -> dict[str, Any]:
        bad = [key for key in params if not key.isidentifier()]
        if bad:
            raise ValueError(f"parameter names are identifiers, not {bad[0]!r}")
        return params


class FaithfulnessConfig(Section):
    """Deletion and insertion curves of `steps` steps (and PdCR block curves of `block`-voxel blocks when set),
    each beside a seeded random ranking and the map blurred by `sigma` voxels."""

    steps: Count = 10
    block: Count | None = None
    sigma: Annotated[float, Field(gt=0.0)] = 2.0


class BaselinesConfig(Section):
    """The trivial localisation baselines (the ROI, blurred ROI, centred blob, blurred map); blur of `sigma` voxels."""

    sigma: Annotated[float, Field(gt=0.0)] = 2.0


class AggregationConfig(Section):
    """Attribution mass per segment of the `labels` map (the model's prediction or the case's reference); cases
    whose robust z-score exceeds `outlier_z` in a cell are flagged."""

    labels: Literal["prediction", "reference"] = "prediction"
    outlier_z: Annotated[float, Field(gt=0.0)] = 3.5


class SanityConfig(Section):
    """Cascading randomisation over `steps` layers; a map passes when its rank correlation to the original is
    at most `max_correlation`."""

    steps: Count = 3
    max_correlation: Annotated[float, Field(ge=-1.0, le=1.0)] = 0.5


class StabilityConfig(Section):
    """Similarity of maps under Gaussian input noise of `noise` x the input's sd, over `samples` draws."""

    noise: Annotated[float, Field(ge=0.0)] = 0.05
    samples: Count = 1


class EvaluationConfig(Section):
    """The evaluation suite: binarisation threshold, pointing-game tolerance, and the parts that run (a part
    given as `false` is off, `true` or absent runs with its defaults)."""

    threshold: Annotated[float, Field(ge=0.0, le=1.0)] = 0.5
    pointing_tolerance: Annotated[float, Field(ge=0.0)] = 0.0
    faithfulness: FaithfulnessConfig | None = FaithfulnessConfig()
    sanity: SanityConfig | None = SanityConfig()
    stability: StabilityConfig | None = StabilityConfig()
    baselines: BaselinesConfig | None = BaselinesConfig()
    aggregation: AggregationConfig | None = AggregationConfig()

    @field_validator("faithfulness", "sanity", "stability", "baselines", "aggregation", mode="before")
    @classmethod
    def _switch(cls, value: Any) -> Any:
        return {} if value is True else None if value is False else value


class ReportConfig(Section):
    """How many cases the report's grid shows, and the bootstrap intervals over cases (coverage `level`,
    `resamples` draws seeded by the run's seed)."""

    cases: Annotated[int, Field(ge=0)] = 8
    level: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.95
    resamples: Count = 2000


class RunConfig(Section):
    """Everything one run needs; `fingerprint` identifies the settings a finished case was computed with."""

    model: ModelConfig
    dataset: DatasetConfig
    methods: Annotated[tuple[MethodConfig, ...], Field(strict=False, min_length=1)]
    targets: Annotated[tuple[Annotated[Text, AfterValidator(_target)], ...], Field(strict=False, min_length=1)]
    rois: Annotated[tuple[Roi, ...], Field(strict=False, min_length=1)] = (parse_roi("none"),)
    evaluation: EvaluationConfig = EvaluationConfig()
    out: Annotated[FilePath, Field(validate_default=True)] = Path("run_out")
    seed: Annotated[int, Field(ge=0)] = 0
    report: ReportConfig = ReportConfig()
    _source: dict[str, Any] = PrivateAttr(default_factory=dict)

    @field_validator("methods", "rois")
    @classmethod
    def _once_each(cls, items: tuple) -> tuple:
        names = [item.name if isinstance(item, MethodConfig) else str(item) for item in items]
        if len(set(names)) != len(names):
            raise ValueError(f"each entry may appear once (outputs are kept per entry), got {names}")
        return items

    @model_validator(mode="after")
    def _references_exist(self) -> "RunConfig":
        if self.dataset.masks is None and any(roi.kind == "reference" for roi in self.rois):
            raise ValueError("the reference ROIs need the cases' masks: set dataset.masks (or a layout that has them)")
        aggregation = self.evaluation.aggregation
        if self.dataset.masks is None and aggregation is not None and aggregation.labels == "reference":
            raise ValueError("evaluation.aggregation.labels: reference needs the cases' masks: set dataset.masks")
        return self

    @property
    def source(self) -> dict[str, Any]:
        """The configuration as it was read (for the report)."""
        return self._source

    @property
    def fingerprint(self) -> str:
        settings = self.model_dump(exclude={"out", "report"})
        return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def load_config(path: str | Path) -> RunConfig:
    """Read and validate a YAML run configuration.

    Args:
        path: the YAML file; relative paths in it are read from its folder.
    Returns:
        The validated configuration.
    """
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
    """Validate a configuration mapping (as read from YAML); relative paths are taken from `base`.

    Args:
        data: the mapping.
        base: the folder relative paths are read from.
    Returns:
        The validated configuration; a bad one raises `SegxaiError` naming every wrong key.
    """
    try:
        config = RunConfig.model_validate(data, context={"base": Path(base)})
    except ValidationError as error:
        errors = error.errors(include_url=False)
        raise SegxaiError("; ".join(_message(e) for e in errors if not _follows_from(e, errors))) from None
    config._source = dict(data)
    return config


def _follows_from(error: dict[str, Any], errors: list[dict[str, Any]]) -> bool:
    """A list found too short only because one of its items was refused (that item's error says why)."""
    loc = error["loc"]
    return error["type"] == "too_short" and any(len(e["loc"]) > len(loc) and e["loc"][:len(loc)] == loc for e in errors)


def _message(error: dict[str, Any]) -> str:
    """One pydantic error as `key: what is wrong`, with the known keys or allowed values where that helps."""
    loc = error["loc"]
    where = "".join(f"[{key}]" if isinstance(key, int) else f".{key}" for key in loc).lstrip(".") or "config"
    kind = error["type"]
    if kind == "extra_forbidden":
        return f"{where}: unknown key; known keys: {', '.join(_section(loc[:-1]).model_fields)}"
    if kind == "missing":
        return f"{where}: required key is missing"
    if kind == "value_error":
        return f"{where}: {error['ctx']['error']}"
    if kind == "too_short":
        return f"{where}: expected a non-empty list"
    text = re.sub(r" or instance of \w+", "", error["msg"]).replace("a valid tuple", "a list")
    text = text.replace("a valid dictionary", "a mapping")
    return f"{where}: {text[0].lower()}{text[1:]}, not {error['input']!r}"


def _section(loc: tuple) -> type[BaseModel]:
    """The section model at a location of the configuration (list indices skipped)."""
    model: type[BaseModel] = RunConfig
    for key in loc:
        if isinstance(key, str):
            model = _model_in(model.model_fields[key].annotation) or model
    return model


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return next((found for arg in get_args(annotation) if (found := _model_in(arg)) is not None), None)
