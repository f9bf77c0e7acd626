"""Find the cases of a dataset folder: one image file per case, or one sub-folder per case.

A sub-folder holds either the case's modalities (ordered by `modalities` glob patterns, else by name) or a DICOM
series (read whole). Known layouts (Kvasir-SEG, MSD) are the same reader with their folder names and mask
patterns as defaults; the nnU-Net layout (FLARE22) groups `CASE_0000`, `CASE_0001`, ... files into one case. Nothing is read here beyond listing folders: unreadable files fail their own case later.
"""
from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from pathlib import Path

from segxai.errors import SegxaiError
from segxai.io.image import file_kind, file_stem
from segxai.pipelines.runs.config import CHANNEL_SUFFIX_LAYOUTS, DatasetConfig

CHANNEL_SUFFIX = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


@dataclass(frozen=True)
class CaseFiles:
    """The files of one case: its name (unique in the dataset), its image path(s) (several = modalities), its
    mask, and why it cannot be read when listing already shows it (`problem`, reported when the case runs).
    The worker reads them with `segxai.models.case.load_case`."""

    name: str
    images: tuple[Path, ...]
    mask: Path | None = None
    problem: str | None = None


def discover_cases(config: DatasetConfig) -> list[CaseFiles]:
    """The dataset's cases in name order (at most `config.limit`)."""
    folder = config.root / config.images
    if not folder.is_dir():
        raise SegxaiError(f"dataset: image folder {folder} does not exist")
    mask_folder = _mask_folder(config)
    cases: dict[str, CaseFiles] = {}
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith(".") or not fnmatch.fnmatch(entry.name, config.include):
            continue
        if mask_folder is not None and entry.resolve() == mask_folder:
            continue
        case = _case(entry, config)
        if case is None:
            continue
        if case.name in cases:
            raise SegxaiError(f"dataset: two entries make case {case.name!r} ({cases[case.name].images[0]} and {entry})")
        cases[case.name] = case
    if config.masks is None:
        _refuse_mask_folders(cases)
    if config.layout in CHANNEL_SUFFIX_LAYOUTS:
        cases = _group_channels(cases, config)
    if not cases:
        raise SegxaiError(f"dataset: no cases (image files or case folders) in {folder}")
    found = sorted(cases.values(), key=lambda c: c.name)
    return found[: config.limit] if config.limit else found


def _refuse_mask_folders(cases: dict[str, CaseFiles]) -> None:
    """A sub-folder whose files are named like the single-file cases beside it holds their masks, not a case
    with that many modalities: without `dataset.masks` that is a configuration mistake, said so."""
    singles = {name for name, case in cases.items() if len(case.images) == 1 and case.images[0].is_file()}
    for case in cases.values():
        named = sorted({file_stem(p) for p in case.images if p.parent.name == case.name} & singles)
        if named:
            folder = case.images[0].parent
            raise SegxaiError(f"dataset: the folder {folder} holds files named like the cases ({', '.join(named[:3])}"
                              f"{', ...' if len(named) > 3 else ''}); if they are masks, set dataset.masks (e.g. "
                              f"{folder.name}/{{case}}{''.join(case.images[0].suffixes)}), else leave it out with "
                              "dataset.include")


def _group_channels(cases: dict[str, CaseFiles], config: DatasetConfig) -> dict[str, CaseFiles]:
    """nnU-Net naming: single-file cases `CASE_0000`, `CASE_0001`, ... become one case with those modalities."""
    grouped: dict[str, list[tuple[str, Path]]] = {}
    for case in cases.values():
        match = CHANNEL_SUFFIX.match(case.name)
        if match is None or len(case.images) != 1:
            raise SegxaiError(f"dataset: {case.images[0]} does not follow the {config.layout} naming CASE_0000")
        grouped.setdefault(match["case"], []).append((match["channel"], case.images[0]))
    return {name: CaseFiles(name, tuple(path for _, path in sorted(files)), _mask(config, name, files[0][1].name))
            for name, files in grouped.items()}


def _case(entry: Path, config: DatasetConfig) -> CaseFiles | None:
    """A case from a file or a folder; None for entries that are not images (notes, spreadsheets)."""
    if entry.is_file():
        if not _is_image(entry):
            return None
        return CaseFiles(file_stem(entry), (entry,), _mask(config, file_stem(entry), entry.name))
    mask = _mask(config, entry.name, entry.name)
    files = sorted(p for p in entry.iterdir() if p.is_file() and not p.name.startswith(".") and _is_image(p)
                   and (mask is None or p.resolve() != mask.resolve()))
    if not files or all(file_kind(p) == "dicom" for p in files):
        return CaseFiles(entry.name, (entry,), mask)  # a DICOM series (or an empty folder, which fails when read)
    if not config.modalities:
        return CaseFiles(entry.name, tuple(files), mask)
    chosen = [[p for p in files if fnmatch.fnmatch(p.name, pattern)] for pattern in config.modalities]
    for pattern, matches in zip(config.modalities, chosen):
        if len(matches) != 1:
            return CaseFiles(entry.name, tuple(files), mask,
                        problem=f"modality pattern {pattern!r} matches {len(matches)} files in {entry}, not one")
    return CaseFiles(entry.name, tuple(m[0] for m in chosen), mask)


def _mask(config: DatasetConfig, case: str, name: str) -> Path | None:
    return None if config.masks is None else config.root / config.masks.format(case=case, name=name)


def _mask_folder(config: DatasetConfig) -> Path | None:
    """The folder masks live in when it sits among the images (so it is not taken for a case)."""
    if config.masks is None:
        return None
    first = Path(config.masks).parts[0]
    return None if "{" in first else (config.root / first).resolve()


def _is_image(path: Path) -> bool:
    try:
        file_kind(path)
    except SegxaiError:
        return False
    return True
