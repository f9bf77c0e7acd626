"""Atomic writes: a crash or a concurrent reader never sees a half-written output, and a good file is never
clobbered by a failed write."""
from __future__ import annotations

import os
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from segxai.errors import SegxaiError


@contextmanager
def atomic_write(path: str | os.PathLike[str], suffix: str | None = None) -> Iterator[Path]:
    """Yield a temp path beside `path`; on success move it onto `path`, on failure delete it.

    The temp name is `.tmp-XXXXXXXX-<name>` so it keeps the target's extension (writers such as nibabel
    pick the format from it); `suffix` is appended when the name does not already end with it.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise SegxaiError(f"cannot write {path}: directory {path.parent} does not exist")
    name = f".tmp-{secrets.token_hex(4)}-{path.name}"
    if suffix and not name.endswith(suffix):
        name += suffix
    temp = path.parent / name
    try:
        yield temp
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)



def write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write `data` to `path` atomically (creating its directory) and return the path."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as temp:
        temp.write_bytes(data)
    return Path(path)
