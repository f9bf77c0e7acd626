"""File pipelines: everything the `segxai` command does beyond parsing arguments and printing.

`grammar` (the ROI/target/settings grammar of the CLI and run configurations), `options` (`RunOptions`),
`explain`, `instances`, `evaluate`, `causal`, `training` (checkpoints, localizers), `explainseg`, `runs`
(dataset runs from YAML, local or Ray) and `demo`. Cases are read by `segxai.models.case.load_case`.
"""
from __future__ import annotations

from segxai.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {}, {
    "grammar", "options", "explain", "instances", "evaluate", "causal", "training", "explainseg", "runs", "demo"})
