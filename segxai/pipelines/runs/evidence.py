"""Dataset-level evidence of a run: which structures drive which predictions, scores beside their trivial
baselines, and faithfulness with bootstrap intervals over cases.

Built from the manifest records at the end of a run (so a resumed run covers every case): the attribution mass
per segment of every explanation (`segments`), its distribution across cases (`segments_distribution`, the
median density the report's heat map shows) and each case's robust z-score (`segments_outliers`); the map's
localisation beside the ROI, blurred ROI, centred blob and blurred map (`baselines`); and the means over cases
with their seeded bootstrap intervals (`intervals`). Written as CSV, and Parquet with pyarrow.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from segxai.metrics import interval_table, segment_distribution, segment_matrix, segment_outliers, write_csv
from segxai.metrics.baselines import baseline_table
from segxai.metrics.faithfulness.baselines import RANKINGS
from segxai.pipelines.runs.config import RunConfig
from segxai.pipelines.runs.summary import write_parquet
from segxai.pipelines.runs.worker import DONE
from segxai.report import Figure, Section
from segxai.report.heatmap import save_heatmap

MAX_LISTED = 50  # flagged case/cell pairs listed in the report
VALUE = "density"  # the segment figure summarised across cases: scale-free, so cases and methods compare
CURVES = ("deletion_auc", "insertion_auc", "block_area")
INTERVAL_COLUMNS = ("dice", "baseline_roi_dice", "leakage",
                    *(f"{curve}{suffix}" for curve in CURVES for suffix in RANKINGS))


def evidence_tables(records: Sequence[Mapping[str, Any]], config: RunConfig) -> dict[str, list[dict[str, Any]]]:
    """The dataset tables of the finished records (a table without rows is left out).

    Args:
        records: the manifest records.
        config: the run's configuration (outlier threshold, interval level, resamples and seed).
    Returns:
        The tables by name: `segments`, `segments_distribution`, `segments_outliers`, `baselines`, `intervals`.
    """
    done = [r for r in records if r["status"] == DONE]
    segments = [row for r in done for row in r.get("segments", [])]
    rows = [row for r in done for row in r["rows"]]
    tables: dict[str, list[dict[str, Any]]] = {}
    if segments:
        threshold = config.evaluation.aggregation.outlier_z if config.evaluation.aggregation else 3.5
        tables["segments"] = segments
        tables["segments_distribution"] = segment_distribution(segments, VALUE)
        tables["segments_outliers"] = segment_outliers(segments, VALUE, threshold=threshold)
    variants = [{**row, "variant": f"{row['method']} | ROI {row['roi']}"} for row in rows if "baseline_roi_dice" in row]
    if variants:
        tables["baselines"] = baseline_table(variants, "dice", by="variant")
    columns = [c for c in INTERVAL_COLUMNS if any(c in row for row in rows)]
    if rows and columns:
        tables["intervals"] = interval_table(rows, columns, by=("method", "roi"), level=config.report.level,
                                             resamples=config.report.resamples, seed=config.seed)
    return tables


def write_evidence(tables: Mapping[str, list[dict[str, Any]]], out: Path) -> dict[str, Path]:
    """Each table as `out/<name>.csv` (and `.parquet` when pyarrow is installed)."""
    written: dict[str, Path] = {}
    for name, table in tables.items():
        written[name] = write_csv(table, out / f"{name}.csv")
        parquet = write_parquet(table, out / f"{name}.parquet")
        if parquet is not None:
            written[f"{name}_parquet"] = parquet
    return written


def evidence_sections(out: Path, tables: Mapping[str, list[dict[str, Any]]], methods: Sequence[str],
                      level: float) -> list[Section]:
    """The report's sections: heat maps (one per method) and flagged cases, the baseline comparison, and the
    intervals; figures are written to `out/figures/`."""
    sections = []
    if "segments_distribution" in tables:
        figures = [f for m in methods if (f := _heatmap(out, tables["segments_distribution"], m)) is not None]
        flagged = [r for r in tables["segments_outliers"] if r["outlier"]]
        sections.append(Section("Which structures drive which predictions", text=(
            "Per method, the median over cases of each segment's density: its share of |attribution| over its share "
            "of the voxels (1 = as its size predicts; red = the target leans on it). Rows are target | ROI, columns "
            f"the segments of the label map. {len(flagged)} case/cell pairs have a robust z-score (median/MAD) "
            "beyond the outlier threshold; they are listed below (segments.csv has every case)."),
            figures=figures, table=[{k: r[k] for k in ("case", "method", "target", "roi", "name", "channel", "value",
                                                       "z") if k in r} for r in flagged[:MAX_LISTED]]))
    if "baselines" in tables:
        sections.append(Section("Localisation beside trivial baselines", text=(
            "Mean Dice of the binarised map against the reference, beside what trivial maps of the same case get "
            "by the same rule: the ROI itself (the explanation's ROI, else the target's region), the blurred ROI, a "
            "centred blob of the ROI's area and the blurred map; leakage is the share of |attribution| outside the "
            "reference. A variant that does not beat the ROI only restates the target's definition."),
            table=tables["baselines"]))
    if "intervals" in tables:
        sections.append(Section("Faithfulness and localisation with bootstrap intervals", text=(
            f"Means over cases with {level:.0%} percentile-bootstrap intervals [low, high] (cases resampled, seeded by the run's "
            "seed). Deletion AUC: lower is more faithful; insertion AUC and block area: higher. The _random and "
            "_blurred rows are the same curves for a seeded random ranking and for the blurred map: a map that does "
            "not beat them carries no ranking information beyond chance or blur."), table=tables["intervals"]))
    return sections


def _heatmap(out: Path, distribution: Sequence[Mapping[str, Any]], method: str) -> Figure | None:
    rows = [{**r, "target": f"{r['target']} | {r['roi']}"} for r in distribution if r.get("method") == method]
    if not rows:
        return None
    targets, segments, matrix = segment_matrix(rows, "median")
    safe = "".join(c if c.isalnum() or c in ".-" else "-" for c in method)
    path = save_heatmap(out / "figures" / f"segments_{safe}.png", matrix, targets, segments,
                        title=f"{method}: median density over cases")
    return Figure(str(path.relative_to(out)), f"{method}: attribution density per segment (median over cases)")
