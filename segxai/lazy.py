"""Lazy package attributes: `import segxai` and its sub-packages stay cheap; heavy parts import on first use."""
from __future__ import annotations

import importlib
from typing import Any, Callable, Iterable


def lazy_exports(
    package: str, attributes: dict[str, str], modules: Iterable[str] | dict[str, str] = ()
) -> tuple[Callable[[str], Any], Callable[[], list[str]], list[str]]:
    """Return a package's `__getattr__`, `__dir__` and `__all__` for attributes living in `attributes[name]`
    (a module path) and for sub-modules named in `modules` (names below `package`, or a mapping from an
    attribute name to the full path of a module that lives elsewhere)."""
    submodules = dict(modules) if isinstance(modules, dict) else {name: f"{package}.{name}" for name in modules}
    names = sorted(attributes) + sorted(submodules)

    def __getattr__(name: str) -> Any:
        if name in attributes:
            return getattr(importlib.import_module(attributes[name]), name)
        if name in submodules:
            return importlib.import_module(submodules[name])
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return names

    return __getattr__, __dir__, names
