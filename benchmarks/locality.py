"""Benchmark: occluding the liver of the real CT with frozen norms and incremental inference, against Captum.

    .venv/bin/python benchmarks/locality.py --out benchmarks/results [--nets batch,instance] [--profile]

The sample CT of `cases.load_case("ct")` (112x96x32) with two 3D MONAI U-Nets fitted to it: batch norm
(`ct`) and MONAI's default instance norm (`ct-instance`). The target is the summed liver logit over the
predicted liver; occlusion has window 8, stride 8 and fill 0. For each network, in one run:

- Captum `Occlusion` on the whole volume (every window, whole passes): the reference map;
- segxai on the whole volume (`roi` = every voxel) with crops only (`incremental="off"`): windows beyond one
  receptive field of the liver are not run, the network runs on a crop when that saves enough;
- segxai with `incremental="auto"`: each layer recomputed only on the box a window changed.

With the instance-norm network both segxai runs use `norm="frozen"` (else its receptive field is global). Reported
per run: forward passes, voxel-passes, seconds, peak memory, the largest difference from Captum's map relative
to its largest value, and Pearson's r with it; the targets (issue 16) are <= 1e-4 (batch norm), r >= 0.999
(instance norm), >= 8x less time than Captum and >= 3x less than crops only. With `--profile` the incremental
run is profiled and its top functions by own time are listed (where the time goes).
"""
from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import cases  # benchmarks/cases.py, beside this file
from measuring import cpu_name, markdown, measured
from perturbation import captum_occlusion

from segxai.methods.perturb import Occlusion
from segxai.metrics import write_csv
from segxai.targets import ClassRegion

SEED, WINDOW, BATCH = 0, 8, 8
NETS = {"batch": "ct", "instance": "ct-instance"}


def liver_target(case: cases.Case, x: torch.Tensor) -> ClassRegion:
    """The summed liver logit over the liver the model predicts."""
    liver = case.label_of("liver")
    predicted = case.model.predict(x) == liver
    return ClassRegion(liver, predicted, score="logit", reduce="sum")


def compare(found: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
    """Largest difference relative to the reference's largest magnitude, and Pearson's r over all voxels."""
    a, b = found.double().flatten(), reference.double().flatten()
    r = float(torch.corrcoef(torch.stack([a, b]))[0, 1])
    return {"max_rel_diff_vs_captum": float((a - b).abs().max() / b.abs().max()), "pearson_vs_captum": r}


def top_functions(profile: cProfile.Profile, count: int = 8) -> list[dict[str, Any]]:
    """The functions with the most own time in a profile."""
    stats = pstats.Stats(profile)
    total = sum(row[2] for row in stats.stats.values())
    rows = sorted(stats.stats.items(), key=lambda item: item[1][2], reverse=True)[:count]
    return [{"function": f"{Path(file).name}:{line}({name})" if file != "~" else name, "calls": row[1],
             "own_seconds": round(row[2], 3), "share_%": round(100 * row[2] / total, 1)}
            for (file, line, name), row in rows]


def network_rows(kind: str, profile: bool) -> tuple[list[dict[str, Any]], list[dict[str, Any]], cases.Case]:
    """Captum, segxai crops only and segxai incremental on one network; the profile rows when asked."""
    case = cases.load_case(NETS[kind])
    x = torch.from_numpy(case.normalized(0))
    model, target = case.model, liver_target(case, x)
    with torch.no_grad():  # warm up once so no measured call pays the start-up cost
        model(x[None])
    everywhere = torch.ones(x.shape[1:], dtype=torch.bool)
    norm = "frozen" if kind == "instance" else "exact"
    runs = {"Captum": lambda: captum_occlusion(model, x[None], target, WINDOW, WINDOW, BATCH)}
    for label, mode in (("segxai crops", "off"), ("segxai incremental", "auto")):
        method = Occlusion(model, window=WINDOW, stride=WINDOW, fill="zero", norm=norm, incremental=mode)
        runs[label] = lambda method=method: method.explain(x, target, roi=everywhere, seed=SEED,
                                                           batch_size=BATCH, progress=False)
    rows, maps, found = [], {}, []
    for tool, call in runs.items():
        profiler = cProfile.Profile() if profile and tool == "segxai incremental" else None
        if profiler is not None:
            profiler.enable()
        result, cost = measured(model, call)
        if profiler is not None:
            profiler.disable()
            found = top_functions(profiler)
        stats = getattr(result, "stats", {})
        attribution = result.attribution if hasattr(result, "attribution") else result
        maps[tool] = attribution.reshape(x.shape[1:])
        rows.append({"norm": kind, "tool": tool, **cost, "regions": stats.get("regions"),
                     "cropped": stats.get("cropped"), "incremental": stats.get("incremental"),
                     "norm_deviation_max": stats.get("norm_deviation_max")})
    captum = rows[0]
    for row in rows:
        row.update(compare(maps[row["tool"]], maps["Captum"]))
        row["speedup_vs_captum"] = captum["seconds"] / row["seconds"]
        row["speedup_vs_crops"] = rows[1]["seconds"] / row["seconds"]
    return rows, found, case


def run(out: Path, kinds: list[str], profile: bool) -> str:
    start = time.perf_counter()
    rows, profiles, dice = [], {}, {}
    for kind in kinds:
        found, profiles[kind], case = network_rows(kind, profile)
        rows += found
        dice[kind] = case.dice.get("liver", float("nan"))
    out.mkdir(parents=True, exist_ok=True)
    write_csv(rows, out / "locality.csv")
    header = (f"{date.today()}, {cpu_name()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}; "
              f"CT 112x96x32, liver Dice " + ", ".join(f"{k} norm {v:.3f}" for k, v in dice.items()) +
              f"; window {WINDOW}, stride {WINDOW}, fill 0, batch {BATCH}; total {time.perf_counter() - start:.0f} s.")
    parts = ["# Liver occlusion on the real CT: frozen norms and incremental inference vs Captum", header,
             markdown(rows, ("norm", "tool", "forward_passes", "voxel_passes", "seconds", "peak_mb", "regions",
                             "cropped", "incremental", "norm_deviation_max", "max_rel_diff_vs_captum",
                             "pearson_vs_captum", "speedup_vs_captum", "speedup_vs_crops"))]
    for kind, found in profiles.items():
        if found:
            parts += [f"Where the incremental run's time goes ({kind} norm, own time per function):",
                      markdown(found, ("function", "calls", "own_seconds", "share_%"))]
    text = "\n\n".join(parts) + "\n"
    (out / "locality.md").write_text(text)
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--nets", default="batch,instance", help="comma-separated: batch, instance")
    parser.add_argument("--profile", action="store_true", help="profile the incremental runs")
    args = parser.parse_args(argv)
    kinds = [k for k in args.nets.split(",") if k]
    unknown = set(kinds) - set(NETS)
    if unknown:
        parser.error(f"unknown nets {sorted(unknown)}; choose from {sorted(NETS)}")
    torch.manual_seed(SEED)
    np.random.seed(SEED)
    print(run(args.out, kinds, args.profile), flush=True)


if __name__ == "__main__":
    main()
