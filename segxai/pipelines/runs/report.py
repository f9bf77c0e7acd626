"""The HTML report of a run: metric distributions, the method comparison, runtime vs passes, a grid of cases
and the configuration that produced it.

Figures are drawn with matplotlib's object API (`segxai.report.overlay.new_figure`/`png_bytes`, no pyplot) into
`figures/` beside the report; the case grid reuses the overlay PNGs each explanation already saved.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from segxai.atomic import write_bytes
from segxai.report import Figure, Section, write_report
from segxai.report.overlay import new_figure, png_bytes
from segxai.pipelines.runs.config import RunConfig

DISTRIBUTIONS = {
    "dice": "Dice of the binarised map vs the reference", "iou": "IoU of the binarised map vs the reference",
    "energy_inside": "share of positive attribution inside the reference",
    "deletion_auc": "deletion AUC (lower = more faithful)", "insertion_auc": "insertion AUC (higher = more faithful)",
    "sanity_spearman": "rank correlation to the original map, fully randomised model (lower = passes)",
    "stability_spearman": "rank correlation to the map under input noise (higher = more stable)",
}


def write_run_report(out: Path, config: RunConfig, records: Sequence[Mapping[str, Any]],
                     by_method: Sequence[Mapping[str, Any]], by_target: Sequence[Mapping[str, Any]],
                     command: str | None = None, evidence: Mapping[str, list[dict[str, Any]]] | None = None) -> Path:
    """Write `out/report.html` from the manifest records, the summaries per method and per method and target,
    and the dataset tables of `segxai.pipelines.runs.evidence` (heat maps, baselines, intervals)."""
    from segxai.pipelines.runs.evidence import evidence_sections

    rows = [row for record in records if record["status"] == "done" for row in record["rows"]]
    failed = [{"case": r["case"], "error": r["error"]} for r in records if r["status"] != "done"]
    methods = [m.name for m in config.methods]
    figures = [_boxplot(out, rows, methods, metric, caption) for metric, caption in DISTRIBUTIONS.items()
               if any(isinstance(row.get(metric), (int, float)) for row in rows)]
    sanity = config.evaluation.sanity
    sanity_text = "off" if sanity is None else (
        "the model's layers are randomised from the output down; a method passes when its map changes (rank "
        f"correlation to the original at most {sanity.max_correlation})")
    sections = [
        *([Section("Failed cases", text="These cases have no results; rerun the same command after fixing them.",
                   table=failed)] if failed else []),
        Section("Method comparison", text=(
            f"Means over cases, targets and ROIs; pointing_game and sanity_pass are rates. Sanity: {sanity_text}. "
            "Seconds and passes are those of the explanation alone."), table=list(by_method)),
        Section("By method and target", table=list(by_target)),
        *evidence_sections(out, evidence or {}, methods, config.report.level),
        Section("Metric distributions", figures=[f for f in figures if f is not None]),
        Section("Runtime vs passes", figures=[_runtime_scatter(out, rows, methods)] if rows else []),
        Section("Cases", text=("Attribution summed over channels, windowed symmetrically, target outlined (3D: three "
                               "orthogonal views through the target's centre, radiological convention)."),
                figures=_case_grid(out, records, config.report.cases)),
        Section("Configuration", table=[{"key": k, "value": v} for k, v in _flatten(config.source).items()]),
    ]
    summary_box = {"cases done": sum(r["status"] == "done" for r in records), "cases failed": len(failed),
                   "methods": ", ".join(methods), "targets": ", ".join(config.targets), "ROIs": ", ".join(map(str, config.rois))}
    return write_report(out / "report.html", "segxai run", sections, command=command, summary=summary_box)


def _boxplot(out: Path, rows: Sequence[Mapping[str, Any]], methods: list[str], metric: str, caption: str) -> Figure | None:
    values = [[float(r[metric]) for r in rows if r["method"] == m and isinstance(r.get(metric), (int, float))]
              for m in methods]
    if not any(values):
        return None
    fig = new_figure(1.2 + 1.1 * len(methods), 3.2)
    ax = fig.add_subplot()
    ax.boxplot([v if v else [float("nan")] for v in values], tick_labels=methods)
    ax.set_title(metric, fontsize=10)
    ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    path = write_bytes(out / "figures" / f"box_{metric}.png", png_bytes(fig))
    return Figure(str(path.relative_to(out)), caption)


def _runtime_scatter(out: Path, rows: Sequence[Mapping[str, Any]], methods: list[str]) -> Figure:
    fig = new_figure(5.0, 3.6)
    ax = fig.add_subplot()
    for method in methods:
        chosen = [r for r in rows if r["method"] == method]
        ax.scatter([r["forward_passes"] + r["backward_passes"] for r in chosen], [r["seconds"] for r in chosen],
                   label=method, s=14, alpha=0.8)
    ax.set_xlabel("forward + backward passes (batch items)")
    ax.set_ylabel("seconds")
    ax.legend(fontsize=8)
    path = write_bytes(out / "figures" / "runtime_vs_passes.png", png_bytes(fig))
    return Figure(str(path.relative_to(out)), "one point per case, method, target and ROI")


def _case_grid(out: Path, records: Sequence[Mapping[str, Any]], limit: int) -> list[Figure]:
    """The saved overlays of the first `limit` finished cases, every method and variant."""
    import PIL.Image

    def wide(path: str) -> bool:  # three views side by side take the report's whole width
        with PIL.Image.open(out / path) as image:
            return image.width > 2 * image.height

    done = [r for r in records if r["status"] == "done"][:limit]
    return [Figure(path, f"{record['case']}: {key.rsplit('_overlay', 1)[0].replace('/', ' / ')}", wide=wide(path))
            for record in done for key, path in record["outputs"].items() if key.endswith("_overlay")]


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, Mapping):
        flat: dict[str, Any] = {}
        for key, item in value.items():
            flat.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    if isinstance(value, list) and any(isinstance(v, (Mapping, list)) for v in value):
        return {k: v for i, item in enumerate(value) for k, v in _flatten(item, f"{prefix}[{i}]").items()}
    return {prefix: value}
