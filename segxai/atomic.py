"""Atomic writes: a crash or a concurrent reader never sees a half-written output, and a good file is never
clobbered by a failed write."""
from __future__ import annotations

import os
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from segxai.errors import SegxaiError

LOCK_NAME = ".segxai.lock"


@contextmanager
def atomic_write(path: str | os.PathLike[str], suffix: str | None = None, durable: bool = False) -> Iterator[Path]:
    """Yield a temp path beside `path`; on success move it onto `path`, on failure delete it.

    The temp name is `.tmp-XXXXXXXX-<name>` so it keeps the target's extension (writers such as nibabel
    pick the format from it); `suffix` is appended when the name does not already end with it. `durable`
    (manifests, checkpoints) forces the new content to disk before the rename and the rename after it, so a
    power cut leaves the old file or the new one, never an empty one.
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
        if durable:
            _fsync(temp)
        os.replace(temp, path)
        if durable:
            _fsync(path.parent)
    finally:
        temp.unlink(missing_ok=True)

def _fsync(path: Path) -> None:
    """Force a file's (or a directory's entries') data to disk."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_bytes(path: str | os.PathLike[str], data: bytes, durable: bool = False) -> Path:
    """Write `data` to `path` atomically (creating its directory; `durable`: fsync'ed) and return the path."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, durable=durable) as temp:
        temp.write_bytes(data)
    return Path(path)


@contextmanager
def folder_lock(folder: str | os.PathLike[str], on_wait: Callable[[str], None] | None = None) -> Iterator[Path]:
    """Hold an advisory lock (`flock`) on `folder/.segxai.lock` for one writer at a time, e.g. one run per
    output folder. When another process holds it, `on_wait` is called with a line naming it, then this waits.
    The lock goes with the process, so a killed writer never leaves the folder locked.

    Args:
        folder: an existing folder.
        on_wait: told when the lock is busy (e.g. print a line), or None to wait silently.
    Yields:
        The lock file's path.
    """
    import fcntl

    path = Path(folder) / LOCK_NAME
    with open(path, "a+", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            if on_wait is not None:
                on_wait(f"{folder} is in use by {holder}; waiting for it to finish")
            fcntl.flock(handle, fcntl.LOCK_EX)
        handle.seek(0)
        handle.truncate()
        handle.write(f"process {os.getpid()}\n")
        handle.flush()
        try:
            yield path
        finally:
            handle.truncate(0)
            fcntl.flock(handle, fcntl.LOCK_UN)
