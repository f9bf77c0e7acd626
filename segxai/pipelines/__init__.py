"""File pipelines: explain/evaluate/causal on files, dataset runs (local or Ray) and the demo."""
from __future__ import annotations

from segxai.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {}, {"explain", "evaluate", "causal", "demo", "runs"})
