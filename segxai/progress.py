"""One progress-bar helper (tqdm) so long loops in every method and in training look the same."""
from __future__ import annotations

from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")


def progress_bar(items: Iterable[T], *, enabled: bool = True, total: int | None = None, desc: str = "") -> Iterator[T]:
    """Iterate `items` with a tqdm bar on stderr when `enabled`, plainly otherwise."""
    if not enabled:
        yield from items
        return
    from tqdm.auto import tqdm

    yield from tqdm(items, total=total, desc=desc, leave=False, dynamic_ncols=True)
