"""`segxai run`: a dataset x methods x targets x ROIs, resumable, with summaries and a report.

Cases already finished with the same settings (per the manifest) are skipped; the others run on the chosen
executor and each record reaches the manifest as soon as its case ends. Summaries and the report are rebuilt
from the whole manifest at the end, so a resumed run reports every case, not only the new ones. One run at a
time writes an output folder: a second one on the same folder waits for the first (an advisory lock), then
skips what it finished.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from segxai.pipelines.runs.config import RunConfig, load_config
from segxai.pipelines.runs.dataset import discover_cases
from segxai.pipelines.runs.executors import run_cases
from segxai.pipelines.runs.manifest import Manifest

MANIFEST = "manifest.jsonl"


@dataclass
class RunResult:
    """The output folder, every case's record (this run's and earlier ones'), what this run did, and the
    summary tables and report it wrote."""

    out: Path
    records: list[dict[str, Any]]
    processed: list[str]
    skipped: list[str]
    written: dict[str, Path]

    @property
    def failed(self) -> list[str]:
        return [r["case"] for r in self.records if r["status"] != "done"]

    def failure_counts(self) -> dict[str, int]:
        """How many cases failed with each error (the case's own name and files replaced by `<case>`), most
        frequent first."""
        counts: dict[str, int] = {}
        for record in self.records:
            if record["status"] == "done":
                continue
            error = str(record.get("error") or "unknown error")
            for own in sorted([*record.get("images", []), *([record["mask"]] if record.get("mask") else []),
                               record["case"]], key=len, reverse=True):
                error = error.replace(own, "<case>")
            counts[error] = counts.get(error, 0) + 1
        return dict(sorted(counts.items(), key=lambda item: -item[1]))


def run(config: RunConfig | str | Path, *, out: str | Path | None = None, executor: str = "local", workers: int = 2,
        progress: bool = True, command: str | None = None, on_wait: Callable[[str], None] | None = None) -> RunResult:
    """Run (or resume) the configured run; `out` overrides the configuration's output folder. While another
    run holds the folder, `on_wait` is told (a line naming it) and this run waits, then skips the cases that
    one finished."""
    from segxai.atomic import folder_lock
    from segxai.io import prepare_output_dir
    from segxai.pipelines.runs.evidence import evidence_tables, write_evidence
    from segxai.pipelines.runs.report import write_run_report
    from segxai.pipelines.runs.summary import summaries, write_summaries

    config = config if isinstance(config, RunConfig) else load_config(config)
    cases = discover_cases(config.dataset)
    inputs = [config.model.checkpoint, *(p for c in cases for p in c.images)]
    target = prepare_output_dir(config.out if out is None else out, inputs)
    with folder_lock(target, on_wait):
        manifest = Manifest(target / MANIFEST)  # read under the lock: it holds every record of earlier runs
        todo = [c for c in cases if not manifest.finished(c.name, config.fingerprint)]
        run_cases(config, target, todo, manifest.add, executor=executor, workers=workers, progress=progress)
        manifest.compact()
        records = [manifest.records[c.name] for c in cases if c.name in manifest.records]
        rows = manifest.rows(c.name for c in cases)
        tables = summaries(rows)
        written = write_summaries(rows, tables, target)
        evidence = evidence_tables(records, config)
        written.update(write_evidence(evidence, target))
        written["report"] = write_run_report(target, config, records, tables["by_method"],
                                             tables["by_method_target"], command=command, evidence=evidence)
    done = {c.name for c in todo}
    return RunResult(target, records, [c.name for c in todo], [c.name for c in cases if c.name not in done], written)
