"""The run manifest: one JSON line per processed case (status, outputs, metric rows, error, cost).

Records are appended and flushed to disk as each case finishes, so an interrupted run keeps every finished case;
a line torn by a crash is ignored when reading (that case simply runs again). The last record of a case wins,
and `compact` rewrites the file atomically (fsync'ed) with one record per case at the end of a run. Only the
process holding the output folder's lock (`segxai.atomic.folder_lock`, taken by the runner) opens a Manifest,
so no record another process appended is lost to a rewrite.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable

from segxai.atomic import write_bytes
from segxai.pipelines.runs.worker import DONE


class Manifest:
    """The records of one output folder, by case name."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.records: dict[str, dict[str, Any]] = {}
        text = self.path.read_text(encoding="utf-8") if self.path.is_file() else ""
        for line in text.splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a torn last line from an interrupted write
            if isinstance(record, dict) and "case" in record:
                self.records[record["case"]] = record
        if text and not text.endswith("\n"):
            self.compact()  # drop the torn line so the next record starts on a line of its own

    def finished(self, case: str, fingerprint: str) -> bool:
        """Whether `case` was done with these settings (failed cases, or other settings, run again)."""
        record = self.records.get(case)
        return record is not None and record.get("status") == DONE and record.get("fingerprint") == fingerprint

    def add(self, record: dict[str, Any]) -> None:
        """Append one case's record and force it to disk."""
        self.records[record["case"]] = record
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, default=str) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def compact(self) -> Path:
        """Rewrite the file atomically with the latest record of each case."""
        lines = "".join(json.dumps(r, default=str) + "\n" for r in self.records.values())
        return write_bytes(self.path, lines.encode("utf-8"), durable=True)

    def rows(self, cases: Iterable[str] | None = None) -> list[dict[str, Any]]:
        """The metric rows of the finished cases (all, or those named)."""
        chosen = self.records if cases is None else {c: self.records[c] for c in cases if c in self.records}
        return [row for record in chosen.values() if record.get("status") == DONE for row in record["rows"]]
