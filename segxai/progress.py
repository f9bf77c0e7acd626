"""One progress helper (tqdm) so long loops in every method and in training look the same.

With the bar hidden (`--no-progress`), a long loop still prints a heartbeat line to stderr every
`HEARTBEAT_SECONDS` when `set_heartbeat` switched it on (the command line does; the Python API stays quiet).
"""
from __future__ import annotations

import sys
import time
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")

_heartbeat: list[float | None] = [None]


def set_heartbeat(seconds: float | None) -> None:
    """Print a `desc: i/total, elapsed` line every `seconds` from loops whose bar is hidden (None: never)."""
    _heartbeat[0] = None if seconds is None else float(seconds)


def progress_bar(items: Iterable[T], *, enabled: bool = True, total: int | None = None, desc: str = "",
                 initial: int = 0, status: Callable[[], str] | None = None) -> Iterator[T]:
    """Iterate `items` with a tqdm bar on stderr when `enabled`, plainly (with the heartbeat, if on) otherwise.

    Args:
        items: what to iterate.
        enabled: show the bar.
        total: the item count (default: `len(items)`), `initial` items being already done (a resumed run).
        desc: the label.
        status: a short text shown after the bar and in heartbeat lines (e.g. the running loss).
    """
    if total is None and hasattr(items, "__len__"):
        total = initial + len(items)  # type: ignore[arg-type]
    if not enabled:
        yield from _with_heartbeat(items, total, desc, initial, status)
        return
    from tqdm.auto import tqdm

    bar = tqdm(items, total=total, initial=initial, desc=desc, leave=False, dynamic_ncols=True)
    for item in bar:
        yield item
        if status is not None:
            bar.set_postfix_str(status(), refresh=False)


def _with_heartbeat(items: Iterable[T], total: int | None, desc: str, initial: int,
                    status: Callable[[], str] | None) -> Iterator[T]:
    every = _heartbeat[0]
    if every is None:
        yield from items
        return
    start = last = time.monotonic()
    for done, item in enumerate(items, start=initial + 1):
        yield item
        now = time.monotonic()
        if now - last >= every:
            last = now
            extra = status() if status is not None else ""
            print(f"{desc or 'working'}: {done}/{total if total is not None else '?'} after {now - start:.0f} s"
                  f"{', ' + extra if extra else ''}", file=sys.stderr, flush=True)
