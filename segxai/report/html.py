"""A self-contained HTML report: sections of text, figures and tables, plus how to reproduce the run.

The page is rendered from the packaged jinja2 template `templates/report.html` with autoescaping on, so
titles, captions, table cells and the command are always shown as text, never run as markup.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence
from urllib.parse import quote

import numpy as np

from segxai.atomic import write_bytes
from segxai.errors import SegxaiError

if TYPE_CHECKING:
    from jinja2 import Environment


@dataclass
class Figure:
    """An image shown in a section; `path` is relative to the report's directory; a `wide` one (three views)
    takes the section's whole width."""

    path: str
    caption: str = ""
    wide: bool = False


@dataclass
class Section:
    """A titled block: plain-text paragraphs (split on blank lines), figures in a grid, a table of rows, and
    `markup`: trusted HTML made by segxai itself (the interactive viewer), inserted as is."""

    title: str
    text: str = ""
    figures: list[Figure] = field(default_factory=list)
    table: list[dict[str, object]] = field(default_factory=list)
    markup: str = ""


def write_report(
    path: str | Path,
    title: str,
    sections: Sequence[Section],
    *,
    command: str | None = None,
    summary: dict[str, object] | None = None,
) -> Path:
    """Write the report to `path` atomically; every figure must already exist next to it."""
    from segxai import __version__

    path = Path(path)
    for section in sections:
        _check_figures(path.parent, section)
    html = _environment().get_template("report.html").render(
        title=title,
        generated=datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        version=__version__,
        summary=[(str(key), _format_value(value)) for key, value in (summary or {}).items()],
        sections=[_section_context(section) for section in sections],
        command=command,
    )
    return write_bytes(path, html.encode("utf-8"))


def _format_value(value: object) -> str:
    """A table cell: floats with 4 significant digits, None as empty, anything else as `str`."""
    if value is None:
        return ""
    if isinstance(value, (float, np.floating)):
        return f"{value:.4g}"
    return str(value)


@functools.cache
def _environment() -> Environment:
    from jinja2 import Environment, PackageLoader, StrictUndefined

    return Environment(
        loader=PackageLoader("segxai.report", "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def _check_figures(root: Path, section: Section) -> None:
    for figure in section.figures:
        if not (root / figure.path).is_file():
            raise SegxaiError(f"figure {figure.path!r} of section {section.title!r} not found "
                              f"(looked for {root / figure.path})")


def quantity_rows(stats: dict[str, Any], skip: Sequence[str] = ()) -> list[dict[str, object]]:
    """`{"quantity", "value"}` rows of an explanation's stats in units a reader takes in: bytes as MB, seconds
    as s, names with spaces; nested entries (params, target, ...), unset ones and `skip` left out."""
    rows: list[dict[str, object]] = []
    for key, value in stats.items():
        if key in skip or value is None or isinstance(value, (dict, list, tuple)):
            continue
        name = key.replace("_", " ")
        if key.endswith("_bytes") and isinstance(value, (int, float)):
            name, value = name.removesuffix(" bytes") + " (MB)", round(value / 2**20, 1)
        elif key == "seconds" and isinstance(value, (int, float)):
            name, value = "time (s)", round(float(value), 2)
        rows.append({"quantity": name, "value": value})
    return rows


def _section_context(section: Section) -> dict[str, Any]:
    from markupsafe import Markup

    # a column empty in every row (e.g. "validation Dice" of a model trained without validation cases) is left out
    columns = [column for column in dict.fromkeys(key for row in section.table for key in row)
               if any(_format_value(row.get(column)) != "" for row in section.table)]
    return {
        "title": section.title,
        "paragraphs": [p.strip() for p in re.split(r"\n\s*\n", section.text) if p.strip()],
        "figures": [{"src": quote(Path(f.path).as_posix()), "caption": f.caption, "wide": f.wide}
                    for f in section.figures],
        "markup": Markup(section.markup),
        "columns": columns,
        "rows": [[_format_value(row.get(column)) for column in columns] for row in section.table],
    }
