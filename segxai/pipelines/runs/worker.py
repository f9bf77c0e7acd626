"""Process one case: read it, explain every method x target x ROI, save the maps, evaluate them.

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
from segxai.pipelines.runs.config import RunConfig
from segxai.pipelines.runs.dataset import Case
from segxai.report.overlay import save_overlay

DONE, FAILED = "done", "failed"


class CaseWorker:
    """Holds the model and the run settings; `process(case)` returns the case's manifest record."""

    def __init__(self, config: RunConfig, out: Path, threads: int | None = None) -> None:
        from segxai.models.checkpoint import load_checkpoint
        from segxai.methods import get_method

        if threads is not None:
            torch.set_num_threads(threads)
        self.config = config
        self.out = Path(out)
        self.model, self.model_config = load_checkpoint(config.model.checkpoint, device=config.model.device)
        # Built once: a bad method setting is one clear error before any case runs, not a failure per case.
        self.explainers = [get_method(method.name, self.model, **method.params) for method in config.methods]

    def process(self, case: Case) -> dict[str, Any]:
        start = time.perf_counter()
        record: dict[str, Any] = {"case": case.name, "fingerprint": self.config.fingerprint,
                                  "images": [str(p) for p in case.images], "mask": None if case.mask is None else str(case.mask)}
        try:
            outputs, rows = self._explain_case(case)
            record.update(status=DONE, error=None, outputs=outputs, rows=rows)
        except Exception as error:  # any failure of one case is recorded; the run goes on
            message = str(error) if isinstance(error, SegxaiError) else f"{type(error).__name__}: {error}"
            record.update(status=FAILED, error=message, outputs={}, rows=[],
                          traceback=None if isinstance(error, SegxaiError) else traceback.format_exc(limit=4))
        record["seconds"] = time.perf_counter() - start
        record["worker"] = {"pid": os.getpid(), "max_rss_mb": _max_rss_mb()}
        return record

    def _explain_case(self, case: Case) -> tuple[dict[str, str], list[dict[str, Any]]]:
        from segxai.io import load_image, load_mask, save_array
        from segxai.pipelines.explain import output_format
        from segxai.preprocess import normalize_intensity

        if case.problem:
            raise SegxaiError(case.problem)
        image = load_image(case.images)
        labels = None if case.mask is None else load_mask(case.mask, like=image)
        x = self.model.prepare(normalize_intensity(image.array, self.model_config.get("intensity")))[0][0]
        folder = self.out / "cases" / case.name
        folder.mkdir(parents=True, exist_ok=True)
        extension, like = output_format(image)
        prediction = self.model.predict(x).cpu().numpy().astype(np.uint8)
        outputs = {"prediction": save_array(prediction, folder / f"prediction{extension}", like=like)}
        rows = []
        channels = list(image.channel_names)
        for spec in self.config.targets:
            for roi_spec in self.config.rois:
                variant_outputs, variant_rows = self._variant(case, x, spec, roi_spec, labels, prediction, like,
                                                              channels)
                outputs.update(variant_outputs)
                rows += variant_rows
        return {k: str(Path(p).relative_to(self.out)) for k, p in outputs.items()}, rows

    def _variant(self, case: Case, x: torch.Tensor, spec: str, roi_spec: str, labels: np.ndarray | None,
                 prediction: np.ndarray, like: Any, channels: list[str]) -> tuple[dict[str, Path], list[dict[str, Any]]]:
        """Every method on one target and ROI provider."""
        from segxai.pipelines.runs.rois import make_roi
        from segxai.pipelines.runs.suite import evaluate_explanation
        from segxai.targets import parse_target

        target = parse_target(spec)
        cls = getattr(target, "cls", None)
        truth = None if labels is None or cls is None else torch.from_numpy(labels == cls)
        roi = make_roi(roi_spec, cls, truth, prediction)
        name = variant_name(spec, roi_spec)
        outputs, rows = {}, []
        for method, explainer in zip(self.config.methods, self.explainers):

            def explain(inputs: torch.Tensor, explainer=explainer):
                return explainer.explain(inputs, target, roi=roi, seed=self.config.seed, progress=False)

            explanation = explain(x)
            names = channels if explanation.attribution.shape[0] == len(channels) else None
            written = explanation.save(self.out / "cases" / case.name / method.name, like=like, name=name,
                                       channel_names=names, overlay=save_overlay)
            outputs.update({f"{method.name}/{key}": path for key, path in written.items()})
            figures = evaluate_explanation(self.model, x, target, explanation, explain, truth,
                                           self.config.evaluation, seed=self.config.seed)
            rows.append({"case": case.name, "method": method.name, "target": spec, "roi": roi_spec, **figures})
        return outputs, rows


def variant_name(target: str, roi: str) -> str:
    """A file-name-safe name for one target and ROI provider, e.g. `class-1__mask-4`."""
    safe = lambda text: "".join(c if c.isalnum() or c in ".-" else "-" for c in text)  # noqa: E731
    return f"{safe(target)}__{safe(roi)}"


def _max_rss_mb() -> float:
    """Peak resident memory of this process so far (ru_maxrss is in KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024 if sys.platform == "darwin" else 1024)
