"""The architecture as the code has it: every import (function-level ones included) goes down the layer table of
the README, and no module grows past 450 lines."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "segxai"
MAX_LINES = 450

BASE = {"errors", "atomic", "lazy", "progress"}
CORE = {"grid", "model", "targets", "roi", "explanation", "measure", "instances", "preprocess"}
PACKAGES = {"io", "data", "methods", "models", "metrics", "report", "localize", "explainseg", "pipelines"}
BELOW = {
    "base": set(),
    "io": {"base"},
    "core": {"base", "io"},
    "data": {"base", "io", "core"},
    "methods": {"base", "io", "core"},
    "report": {"base", "io", "core"},
    "models": {"base", "io", "core", "data"},
    "metrics": {"base", "io", "core", "methods"},
    "localize": {"base", "io", "core", "data", "models"},
    "explainseg": {"base", "io", "core", "data", "models", "methods", "metrics"},
}
BELOW["pipelines"] = set().union(*BELOW.values(), BELOW) - {"pipelines"}
BELOW["cli"] = BELOW["pipelines"] | {"pipelines"}


def unit_of(module: str) -> str:
    """The layer of a dotted module name; the package root (version and lazy attributes only) counts as base."""
    parts = module.split(".")
    if len(parts) == 1 or parts[1].startswith("__version__"):
        return "base"
    name = parts[1]
    if name in BASE:
        return "base"
    if name in CORE:
        return "core"
    if name in PACKAGES:
        return name
    if name in {"cli", "cli_args", "__main__"}:
        return "cli"
    return f"unknown ({name})"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path, module: str | None = None) -> list[tuple[str, int]]:
    """Every segxai module `path` (the module `module`, by default its place in the package) imports, with its
    line, at any depth of the file."""
    module = module or module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join(anchor + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            if name == "segxai":
                found += [(f"segxai.{alias.name}", node.lineno) for alias in node.names]
            else:
                found.append((name, node.lineno))
    return [(name, line) for name, line in found if name.split(".")[0] == "segxai"]


MODULES = sorted(PACKAGE.rglob("*.py"))


def test_every_module_belongs_to_a_layer():
    unknown = [module_name(p) for p in MODULES if module_name(p) != "segxai" and unit_of(module_name(p)).startswith("unknown")]
    assert unknown == []


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_imports_go_only_downwards(path):
    here = unit_of(module_name(path))
    if module_name(path) == "segxai":
        return  # the root only names lazy attributes
    upward = [
        f"{name} (line {line}, layer {unit_of(name)})"
        for name, line in imported(path)
        if unit_of(name) != here and unit_of(name) not in BELOW[here]
    ]
    assert upward == [], f"{module_name(path)} ({here}) imports against the flow: {upward}"


def test_no_module_over_the_line_limit():
    long = {module_name(p): n for p in MODULES if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_the_checker_sees_upward_edges_at_any_depth(tmp_path):
    """The parser itself: function-level and relative imports of a higher layer are found."""
    probe = tmp_path / "probe.py"
    probe.write_text("import numpy\n\ndef f():\n    from segxai.localize import model\n    from .report import html\n")
    names = [name for name, _ in imported(probe, module="segxai.roi")]
    assert names == ["segxai.localize", "segxai.report"]
    assert all(unit_of(name) not in BELOW[unit_of("segxai.roi")] for name in names)
