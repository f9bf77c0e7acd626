"""Cost accounting shared by every method: wall time, peak memory, and the model's pass counters; and the memory
budget sizes are checked against before anything is allocated."""
from __future__ import annotations

import dataclasses

import os
import resource
import threading
import time
from typing import Any, Protocol

import torch

from segxai.errors import SegxaiError


def memory_budget() -> int:
    """The bytes one allocation may take: this machine's physical memory (`SEGXAI_MEMORY_BUDGET` overrides)."""
    if os.environ.get("SEGXAI_MEMORY_BUDGET"):
        return int(float(os.environ["SEGXAI_MEMORY_BUDGET"]))
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return 2**40


def check_fits(nbytes: float, what: str, hint: str) -> None:
    """Refuse a size that cannot fit in memory before allocating it, with the estimate in the message.

    Args:
        nbytes: the estimated bytes.
        what: what would be allocated, with the setting that sizes it (e.g. "LIME states for n_samples=10**9").
        hint: what to change.
    """
    budget = memory_budget()
    if nbytes > budget:
        raise SegxaiError(f"{what} would need about {_gigabytes(nbytes)} of memory, more than the "
                          f"{_gigabytes(budget)} available; {hint}")


def _gigabytes(nbytes: float) -> str:
    return f"{nbytes / 1e9:.3g} GB"


class Counted(Protocol):
    """What a measure reads: the model's device and its pass counters (`segxai.SegModel` has both)."""

    device: torch.device

    def counts(self) -> dict[str, int]: ...

_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _resident_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * _PAGE_SIZE
    except (OSError, ValueError, IndexError):
        return None


@dataclasses.dataclass(frozen=True)
class Cost:
    """What an explanation cost: passes in batch items and in calls, input voxels carried through the network
    (the hardware-independent cost of cropped computation), wall seconds and peak extra memory."""

    forward_passes: int = 0
    backward_passes: int = 0
    forward_calls: int = 0
    backward_calls: int = 0
    forward_voxels: int = 0
    seconds: float = 0.0
    peak_memory_bytes: int = 0

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def __add__(self, other: "Cost") -> "Cost":
        """Two costs run one after the other: counts and seconds add up, the peak is the larger one."""
        summed = {f.name: getattr(self, f.name) + getattr(other, f.name) for f in dataclasses.fields(self)}
        return Cost(**{**summed, "peak_memory_bytes": max(self.peak_memory_bytes, other.peak_memory_bytes)})


class Measure:
    """Context manager recording seconds, peak extra memory and the passes `model` ran inside it.

    On CUDA the peak is the allocator's high-water mark above the starting allocation; on the CPU a sampling
    thread reads the resident set size (Linux), falling back to the process high-water mark elsewhere.
    """

    def __init__(self, model: Counted, interval: float = 0.002) -> None:
        self.model = model
        self.interval = interval
        self.seconds = 0.0
        self.peak_memory_bytes = 0
        self.counts: dict[str, int] = {}

    def __enter__(self) -> "Measure":
        self._counts = self.model.counts()
        self._cuda = self.model.device.type == "cuda"
        if self._cuda:
            torch.cuda.synchronize(self.model.device)
            torch.cuda.reset_peak_memory_stats(self.model.device)
            self._base = torch.cuda.memory_allocated(self.model.device)
        else:
            self._base = _resident_bytes()
            self._peak = self._base or 0
            self._stop = threading.Event()
            self._sampler = threading.Thread(target=self._sample, daemon=True) if self._base is not None else None
            if self._sampler is not None:
                self._sampler.start()
            else:
                self._base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        self._start = time.perf_counter()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            current = _resident_bytes() or 0
            self._peak = max(self._peak, current)

    def __exit__(self, *exc: Any) -> None:
        if self._cuda:
            torch.cuda.synchronize(self.model.device)
        self.seconds = time.perf_counter() - self._start
        if self._cuda:
            self.peak_memory_bytes = torch.cuda.max_memory_allocated(self.model.device) - self._base
        elif self._sampler is not None:
            self._stop.set()
            self._sampler.join()
            self._peak = max(self._peak, _resident_bytes() or 0)
            self.peak_memory_bytes = self._peak - self._base
        else:
            self.peak_memory_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - self._base
        after = self.model.counts()
        self.counts = {key: after[key] - self._counts[key] for key in after}

    @property
    def forward_passes(self) -> int:
        return self.counts.get("forward_passes", 0)

    @property
    def backward_passes(self) -> int:
        return self.counts.get("backward_passes", 0)

    @property
    def cost(self) -> Cost:
        """The measured cost (valid after the `with` block)."""
        known = {f.name for f in dataclasses.fields(Cost)}
        counts = {key: int(value) for key, value in self.counts.items() if key in known}
        return Cost(**counts, seconds=round(self.seconds, 6), peak_memory_bytes=int(max(self.peak_memory_bytes, 0)))

    def as_stats(self) -> dict[str, Any]:
        return self.cost.as_dict()
