"""Cost accounting shared by every method: wall time, peak memory, and the model's pass counters."""
from __future__ import annotations

import os
import resource
import threading
import time
from typing import Any

import torch

from segxai.model import SegModel

_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _resident_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * _PAGE_SIZE
    except (OSError, ValueError, IndexError):
        return None


class Measure:
    """Context manager recording seconds, peak extra memory and the passes `model` ran inside it.

    On CUDA the peak is the allocator's high-water mark above the starting allocation; on the CPU a sampling
    thread reads the resident set size (Linux), falling back to the process high-water mark elsewhere.
    """

    def __init__(self, model: SegModel, interval: float = 0.002) -> None:
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

    def as_stats(self) -> dict[str, Any]:
        return {
            **self.counts,
            "seconds": round(self.seconds, 6),
            "peak_memory_bytes": int(max(self.peak_memory_bytes, 0)),
        }
