"""What both benchmarks share: measuring one call (passes, voxel-passes, seconds, peak memory) the same way for
segxai and its peers, the machine's name, and markdown tables."""
from __future__ import annotations

import ctypes
import gc
import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any

from segxai.measure import Measure
from segxai.model import SegModel


def release_memory() -> None:
    """Collect garbage and hand freed heap pages back to the OS, so each call's peak RSS starts level."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the peak is then only approximate
        pass


def measured(model: SegModel, run: Callable[[], Any]) -> tuple[Any, dict[str, Any]]:
    """Run `run()` and return its result with the passes, voxel-passes, seconds and peak memory it cost."""
    release_memory()
    with Measure(model) as cost:
        result = run()
    return result, {
        "forward_passes": cost.counts["forward_passes"],
        "voxel_passes": cost.counts["forward_voxels"],
        "seconds": round(cost.seconds, 4),
        "peak_mb": round(cost.peak_memory_bytes / 2**20, 1),
    }


def cpu_name() -> str:
    """The CPU model (Linux), else the architecture."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def markdown(rows: list[dict[str, Any]], columns: tuple[str, ...]) -> str:
    def cell(value: Any) -> str:
        if value is None:
            return ""
        if isinstance(value, float):
            return f"{value:.3g}" if abs(value) < 1000 else f"{value:.4g}"
        return str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)
