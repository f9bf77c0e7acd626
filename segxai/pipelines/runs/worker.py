"""Process one case: read it (the case loader, sharing the worker's model), explain every method x target x ROI,
save the maps, evaluate them and aggregate their attribution mass per segment of the label map.

A `CaseWorker` loads the model once and is reused for many cases (in-process, or one per Ray worker). It never
raises for a bad case: `process` returns a manifest record with status "failed" and the error, so one unreadable
file does not stop a run. Only interrupts (KeyboardInterrupt, SystemExit) pass through.
"""
from __future__ import annotations

import os
import resource
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import torch

from segxai.errors import SegxaiError
from segxai.models.case import Case
from segxai.pipelines.grammar import RoiSpec
from segxai.pipelines.runs.config import RunConfig
from segxai.pipelines.runs.dataset import CaseFiles
from segxai.report.views import views_like

DONE, FAILED = "done", "failed"


class CaseWorker:
    """Holds the model and the run settings; `process(case)` returns the case's manifest record."""

    def __init__(self, config: RunConfig, out: Path, threads: int | None = None) -> None:
        from segxai.methods import get_method

        if threads is not None:
            torch.set_num_threads(threads)
        self.config = config
        self.out = Path(out)
        self.model = config.model.load()
        # Built once: a bad method setting is one clear error before any case runs, not a failure per case.
        self.explainers = [get_method(method.name, self.model.model, **method.params) for method in config.methods]
        self.names = {int(label): str(name) for label, name in self.model.config.get("names", {}).items()}

    def process(self, case: CaseFiles) -> dict[str, Any]:
        start = time.perf_counter()
        record: dict[str, Any] = {"case": case.name, "fingerprint": self.config.fingerprint,
                                  "images": [str(p) for p in case.images], "mask": None if case.mask is None else str(case.mask)}
        try:
            outputs, rows, segments = self._explain_case(case)
            record.update(status=DONE, error=None, outputs=outputs, rows=rows, segments=segments)
        except Exception as error:  # any failure of one case is recorded; the run goes on
            message = str(error) if isinstance(error, SegxaiError) else f"{type(error).__name__}: {error}"
            record.update(status=FAILED, error=message, outputs={}, rows=[], segments=[],
                          traceback=None if isinstance(error, SegxaiError) else traceback.format_exc(limit=4))
        record["seconds"] = time.perf_counter() - start
        record["worker"] = {"pid": os.getpid(), "max_rss_mb": _max_rss_mb()}
        return record

    def _explain_case(self, files: CaseFiles) -> tuple[dict[str, str], list[dict[str, Any]], list[dict[str, Any]]]:
        from segxai.io import save_array
        from segxai.models.case import load_case

        if files.problem:
            raise SegxaiError(files.problem)
        case = load_case(files.images, reference=files.mask, model=self.model, name=files.name)
        folder = self.out / "cases" / case.name
        folder.mkdir(parents=True, exist_ok=True)
        extension, like = case.map_format
        prediction = case.prediction.numpy().astype(np.uint8)
        outputs = {"prediction": save_array(prediction, folder / f"prediction{extension}", like=like)}
        rows, segments = [], []
        for spec in self.config.targets:
            for roi in self.config.rois:
                variant_outputs, variant_rows, variant_segments = self._variant(case, spec, roi)
                outputs.update(variant_outputs)
                rows += variant_rows
                segments += variant_segments
        return {k: str(Path(p).relative_to(self.out)) for k, p in outputs.items()}, rows, segments

    def _variant(self, case: Case, spec: str, roi_spec: RoiSpec
                 ) -> tuple[dict[str, Path], list[dict[str, Any]], list[dict[str, Any]]]:
        """Every method on one target and ROI: outputs, metric rows and segment-mass rows."""
        from segxai.metrics import segment_mass
        from segxai.pipelines.runs.suite import evaluate_explanation
        from segxai.targets import parse_target

        target = case.target_to_model(parse_target(spec))
        cls = getattr(target, "cls", None)
        truth = None if cls is None or case.reference is None else case.to_model(case.reference_of(cls))
        roi = roi_spec.resolve(case, cls)
        name = variant_name(spec, str(roi_spec))
        _, like = case.map_format
        channels = case.channel_names
        labels = self._labels(case)
        outputs, rows, segments = {}, [], []
        for method, explainer in zip(self.config.methods, self.explainers):

            def explain(inputs: torch.Tensor, explainer=explainer):
                return explainer.explain(inputs, target, roi=roi, seed=self.config.seed, progress=False)

            explanation = explain(case.inputs)
            names = channels if explanation.attribution.shape[0] == len(channels) else None
            on_image = case.to_image(explanation)  # what is written and aggregated over the image's label map
            written = on_image.save(self.out / "cases" / case.name / method.name, like=like, name=name,
                                    channel_names=names, overlay=views_like(like))
            outputs.update({f"{method.name}/{key}": path for key, path in written.items()})
            figures = evaluate_explanation(self.model.model, case.inputs, target, explanation, explain, truth,
                                           self.config.evaluation, seed=self.config.seed)
            keys = {"case": case.name, "method": method.name, "target": spec, "roi": str(roi_spec)}
            rows.append({**keys, **figures})
            if labels is not None:
                segments += [{**keys, **r} for r in segment_mass(on_image, labels, names=self.names,
                                                                  channel_names=names)]
        return outputs, rows, segments

    def _labels(self, case: Case) -> torch.Tensor | None:
        """The label map the attribution mass is aggregated over (None when aggregation is off)."""
        aggregation = self.config.evaluation.aggregation
        if aggregation is None:
            return None
        if aggregation.labels == "reference":
            if case.reference is None:
                raise SegxaiError(f"case {case.name} has no reference mask to aggregate over")
            return torch.from_numpy(np.asarray(case.reference))
        return case.prediction


def variant_name(target: str, roi: str) -> str:
    """A file-name-safe name for one target and ROI, e.g. `class-1__reference-4`."""
    safe = lambda text: "".join(c if c.isalnum() or c in ".-" else "-" for c in text)  # noqa: E731
    return f"{safe(target)}__{safe(roi)}"


def _max_rss_mb() -> float:
    """Peak resident memory of this process so far (ru_maxrss is in KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024 if sys.platform == "darwin" else 1024)
