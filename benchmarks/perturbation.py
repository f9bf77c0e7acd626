"""Benchmark: ROI-guided perturbation explanations against whole-input ones, on one 3D phantom, one real CT and
ten real 2D polyp images.

    .venv/bin/python benchmarks/perturbation.py --dataset phantom|ct|polyp|all --out benchmarks/results

For each case and organ it reports, per explanation call: forward passes, voxel-passes (input voxels carried
by the forward passes), wall seconds, peak memory increase, and the IoU of the binarised map with the organ.

- Occlusion: segxai restricted to the ROI (the organ grown by a margin) against Captum `Occlusion` and MONAI
  `OcclusionSensitivity` on the whole input, same window, stride and zero fill. segxai on the whole input is
  listed too; its map and MONAI's must equal Captum's (`max_abs_diff_vs_captum`).
- RISE and LIME: the same method with `roi=None`, and with the ROI at the same number of samples and at half and
  a quarter of it (`ROI_BUDGETS`), same seed: fewer features vary, so fewer samples may do (XAI-CLIP). The ratio
  table takes the cheapest restricted budget whose IoU is no worse than the unrestricted run's.

Every call goes through one `segxai.SegModel` and is measured by `segxai.measure.Measure`, so passes, voxels,
seconds and memory are counted the same way for segxai and its peers. The target is the mean probability of
the organ over its ground-truth mask; maps are binarised by keeping the top-k voxels, k = the organ's voxel
count, on the whole grid, for every method alike.
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from datetime import date
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import cases  # benchmarks/cases.py, beside this file
from measuring import cpu_name, markdown, measured

from segxai.explanation import Explanation
from segxai.methods import METHODS
from segxai.metrics import explanation_overlap, relative_change, write_csv
from segxai.model import SegModel
from segxai.roi import from_mask
from segxai.targets import ClassRegion

SEED = 0
# Fractions of the unrestricted number of samples that restricted RISE and LIME are run with.
ROI_BUDGETS = (1.0, 0.5, 0.25)
SAMPLES_PARAM = {"rise": "n_masks", "lime": "n_samples"}

# Per case: the organs with their occlusion (window, stride) pairs, the ROI margin (voxels), the batch size, and
# the RISE and LIME settings. The 4/4 occlusion (2,048 windows on the whole phantom) runs for the small organ only.
SETTINGS: dict[str, dict[str, Any]] = {
    "phantom": {"occlusion": {"kidney_left": ((8, 8), (4, 4)), "liver": ((8, 8),)}, "margin": 4, "batch": 16,
                "rise": {"n_masks": 500, "grid": 7}, "lime": {"n_samples": 300, "n_segments": 200}},
    "ct": {"occlusion": {"kidney_left": ((8, 8),), "liver": ((8, 8),)}, "margin": 4, "batch": 8,
           "rise": {"n_masks": 300, "grid": 7}, "lime": {"n_samples": 300, "n_segments": 300}},
    "polyp": {"occlusion": {"polyp": ((16, 8),)}, "margin": 8, "batch": 32,
              "rise": {"n_masks": 1000, "grid": 7}, "lime": {"n_samples": 500, "n_segments": 100}},
}


def overlap(attribution: torch.Tensor, mask: np.ndarray) -> dict[str, float]:
    """IoU and Dice of the map's top-k voxels (k = the organ's voxel count) with the organ mask."""
    scores = explanation_overlap(attribution, mask.astype(bool), top_k=float(mask.mean()))
    return {"iou": round(scores["iou"], 4), "dice": round(scores["dice"], 4)}


# --------------------------------------------------------------------------------------------- peers
class ScoreNet(nn.Module):
    """The target as a network returning `(B, 1)` "class scores", for MONAI's OcclusionSensitivity."""

    def __init__(self, model: SegModel, target: ClassRegion) -> None:
        super().__init__()
        self.model, self.target = model, target

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.target(self.model(x))[:, None]


def captum_occlusion(model, x, target, window, stride, batch) -> torch.Tensor:
    """Captum's occlusion map (score drops, zero baseline) on the whole input, channels occluded together."""
    from captum.attr import Occlusion

    channels = x.shape[1]
    spatial = x.ndim - 2
    forward = lambda batch_x: target(model(batch_x))
    with torch.no_grad():
        attribution = Occlusion(forward).attribute(
            x, sliding_window_shapes=(channels, *(window,) * spatial), strides=(channels, *(stride,) * spatial),
            baselines=0.0, perturbations_per_eval=batch)
    return attribution[0, 0]


def monai_occlusion(model, x, target, window, stride, batch) -> torch.Tensor:
    """MONAI's OcclusionSensitivity with a constant 0 fill, turned into score drops (reference - occluded)."""
    from monai.visualize import OcclusionSensitivity

    net = ScoreNet(model, target)
    sensitivity = OcclusionSensitivity(net, mask_size=window, n_batch=batch, verbose=False, mode=0.0,
                                       overlap=1.0 - stride / window, activate=False)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # MONAI's own list indexing, deprecated in torch
        reference = net(x)[0, 0]
        occluded, _ = sensitivity(x)
    return reference - occluded[0, 0]


# --------------------------------------------------------------------------------------------- comparisons
def occlusion_rows(model, x, mask, roi, target, window, stride, batch) -> list[dict[str, Any]]:
    """Occlusion by segxai (ROI and whole input), Captum and MONAI on one image and target."""
    occlusion = METHODS["occlusion"](model, window=window, stride=stride, fill="zero")
    explain = partial(occlusion.explain, x, target, seed=SEED, batch_size=batch, progress=False)
    runs = {
        "segxai ROI": partial(explain, roi=roi),
        "segxai whole": explain,
        "Captum": partial(captum_occlusion, model, x[None], target, window, stride, batch),
        "MONAI": partial(monai_occlusion, model, x[None], target, window, stride, batch),
    }
    rows, maps = [], {}
    for tool, run in runs.items():
        result, cost = measured(model, run)
        attribution = result.attribution[0] if isinstance(result, Explanation) else result
        maps[tool] = attribution
        extra = _method_stats(result.stats) if isinstance(result, Explanation) else {}
        rows.append({"method": "occlusion", "tool": tool, "window": window, "stride": stride, **cost,
                     **overlap(attribution, mask), **extra})
    for row in rows:  # the whole-input maps must agree: same windows, fill and score
        same_map = row["tool"] in ("segxai whole", "MONAI")
        row["max_abs_diff_vs_captum"] = float((maps[row["tool"]] - maps["Captum"]).abs().max()) if same_map else None
    return rows


def restriction_rows(model, x, mask, roi, target, name, params, batch) -> list[dict[str, Any]]:
    """One method (RISE or LIME) with the same settings and seed on the whole input, and restricted to the ROI
    with each fraction of its samples in `ROI_BUDGETS`."""
    samples = SAMPLES_PARAM[name]
    runs = [("segxai whole", None, 1.0)] + [(roi_tool(fraction), roi, fraction) for fraction in ROI_BUDGETS]
    rows = []
    for tool, region, fraction in runs:
        budget = {**params, samples: round(params[samples] * fraction)}
        rows.append({"method": name, "tool": tool, "budget": fraction,
                     **method_row(model, x, mask, region, target, name, budget, batch)})
    return rows


def method_row(model, x, mask, roi, target, name, params, batch) -> dict[str, Any]:
    """One measured segxai call of method `name` (ROI or None): its cost, overlap with the organ and stats."""
    method = METHODS[name](model, **params)
    run = partial(method.explain, x, target, roi=roi, seed=SEED, batch_size=batch, progress=False)
    result, cost = measured(model, run)
    return {**cost, **overlap(result.attribution[0], mask), **_method_stats(result.stats)}


def roi_tool(fraction: float) -> str:
    """The tool name of a restricted run with `fraction` of the samples."""
    return "segxai ROI" if fraction == 1 else f"segxai ROI x{fraction:g}"


def _method_stats(stats: dict[str, Any]) -> dict[str, Any]:
    """What the method reports about its work: regions run, LIME features, and the crop it computed on."""
    shape = stats.get("crop_shape")
    return {"regions": stats.get("regions"), "features": stats.get("features"), "cropped": stats.get("cropped"),
            "crop_shape": "x".join(map(str, shape)) if shape else None}


def explain_case(name: str, image_index: int, case: cases.Case, settings: dict[str, Any]) -> list[dict[str, Any]]:
    """Every comparison for every organ of one image of a case."""
    x = torch.from_numpy(case.normalized(image_index))
    batch = settings["batch"]
    rows = []
    for organ, windows in settings["occlusion"].items():
        mask = case.labels[image_index] == case.label_of(organ)
        roi = from_mask(mask, margin=settings["margin"])
        target = ClassRegion(case.label_of(organ), mask, score="prob", reduce="mean")
        found = []
        for window, stride in windows:
            found += occlusion_rows(case.model, x, mask, roi, target, window, stride, batch)
        for method in ("rise", "lime"):
            found += restriction_rows(case.model, x, mask, roi, target, method, settings[method], batch)
        where = {"dataset": name, "image": image_index, "organ": organ}
        sizes = {"organ_voxels": int(mask.sum()), "roi_voxels": int(roi.sum())}
        rows += [{**where, **row, **sizes} for row in found]
    return rows


# --------------------------------------------------------------------------------------------- tables
KEYS = ("organ", "method", "window", "stride", "tool")
PEERS = ("Captum", "MONAI")
COLUMNS = ("forward_passes", "voxel_passes", "seconds", "peak_mb", "iou", "dice")


def mean_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Average the numeric columns over images for each (organ, method, settings, tool)."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(row.get(k) for k in KEYS), []).append(row)
    means = []
    for key, group in groups.items():
        mean = dict(zip(KEYS, key))
        mean["images"] = len(group)
        for column in COLUMNS:
            mean[column] = float(np.mean([row[column] for row in group]))
        mean["budget"] = group[0].get("budget")
        mean["cropped"] = sum(bool(row.get("cropped")) for row in group)
        means.append(mean)
    return means


def summary_rows(means: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """ROI-guided segxai against its reference, with the issue's targets: for occlusion the faster whole-input
    peer (>= 10x fewer voxel-passes, >= 5x faster), for RISE and LIME segxai unrestricted (>= 60 % less
    runtime) and the cheapest restricted budget with no worse IoU (else the full budget); IoU no worse in both.
    Ratios are reference / ROI-guided."""
    by_key = {tuple(m.get(k) for k in KEYS): m for m in means}
    summary = []
    for key, full_budget in by_key.items():
        if full_budget["tool"] != "segxai ROI":
            continue
        peers = [by_key[(*key[:-1], tool)] for tool in PEERS if (*key[:-1], tool) in by_key]
        reference = min(peers, key=lambda m: m["seconds"]) if peers else by_key[(*key[:-1], "segxai whole")]
        budgets = [by_key[(*key[:-1], roi_tool(f))] for f in ROI_BUDGETS if (*key[:-1], roi_tool(f)) in by_key]
        good = [m for m in budgets if m["iou"] >= reference["iou"]]
        guided = min(good, key=lambda m: m["seconds"]) if good else full_budget
        voxel_ratio = reference["voxel_passes"] / guided["voxel_passes"]
        speedup = reference["seconds"] / guided["seconds"]
        runtime_change = relative_change(guided["seconds"], reference["seconds"])
        fast_enough = voxel_ratio >= 10 and speedup >= 5 if peers else runtime_change <= -60
        summary.append({
            "organ": guided["organ"], "method": guided["method"], "window": guided["window"],
            "stride": guided["stride"], "budget": guided["budget"], "reference": reference["tool"],
            "voxel_pass_ratio": voxel_ratio,
            "speedup": speedup, "runtime_change_%": runtime_change, "iou_roi": guided["iou"],
            "iou_reference": reference["iou"], "iou_change": guided["iou"] - reference["iou"],
            "target_met": "yes" if fast_enough and guided["iou"] >= reference["iou"] else "no",
        })
    return summary


def settings_text(name: str) -> str:
    """The settings of case `name` in one line, for the results file."""
    settings = SETTINGS[name]
    windows = "; ".join(f"{organ} " + ", ".join(f"{w}/{s}" for w, s in pairs)
                        for organ, pairs in settings["occlusion"].items())
    return (f"ROI = organ mask grown by {settings['margin']} voxels; occlusion window/stride {windows}, zero fill; "
            f"RISE {settings['rise']}; LIME {settings['lime']} (SLIC); batch size {settings['batch']}; seed {SEED}")


def write_results(name: str, case: cases.Case, rows: list[dict[str, Any]], out: Path, seconds: float) -> str:
    """Write `<name>.csv` (one row per explanation call) and `<name>.md` (means and ratios); return the markdown."""
    write_csv(rows, out / f"{name}.csv")
    means = mean_rows(rows)
    for mean in means:
        mean["voxel_passes_M"] = mean["voxel_passes"] / 1e6
    images = len({row["image"] for row in rows})
    dice = ", ".join(f"{k} {v:.3f}" for k, v in case.dice.items())
    header = (f"{date.today()}, {cpu_name()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}; "
              f"{images} image(s), input {tuple(case.images[0].shape)}; total {seconds:.0f} s. Model Dice: {dice}.")
    legend = ("Means over images. voxel_passes_M: millions of input voxels carried by forward passes; peak_mb: "
              "peak resident memory increase during the call; iou/dice: top-k binarised map (k = organ voxels) vs "
              "organ; cropped: images on which segxai computed on a crop.")
    ratios = ("ROI-guided segxai vs the faster whole-input peer (occlusion) or vs segxai unrestricted (RISE, LIME; "
              "the cheapest restricted budget, as a fraction of the unrestricted samples, whose IoU is no worse); "
              "ratios are reference / ROI-guided.")
    text = "\n\n".join([
        f"# {name}: ROI-guided vs whole-input perturbation",
        header,
        f"Settings: {settings_text(name)}.",
        legend,
        markdown(means, ("organ", "method", "window", "stride", "tool", "forward_passes", "voxel_passes_M",
                         "seconds", "peak_mb", "iou", "dice", "cropped")),
        ratios,
        markdown(summary_rows(means), ("organ", "method", "window", "stride", "budget", "reference",
                                       "voxel_pass_ratio",
                                       "speedup", "runtime_change_%", "iou_roi", "iou_reference", "iou_change",
                                       "target_met")),
    ]) + "\n"
    (out / f"{name}.md").write_text(text)
    return text


# --------------------------------------------------------------------------------------------- main
def run(name: str, out: Path, limit: int | None) -> str:
    start = time.perf_counter()
    case = cases.load_case(name)
    settings = SETTINGS[name]
    with torch.no_grad():  # warm up the network once so the first measured call pays no start-up cost
        case.model(torch.from_numpy(case.normalized(0))[None])
    rows = []
    for index in range(len(case.images) if limit is None else min(limit, len(case.images))):
        rows += explain_case(name, index, case, settings)
    return write_results(name, case, rows, out, time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=("phantom", "ct", "polyp", "all"), default="all")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--images", type=int, default=None, help="explain only the first N images (polyp)")
    args = parser.parse_args(argv)
    torch.manual_seed(SEED)
    for name in ("phantom", "ct", "polyp") if args.dataset == "all" else (args.dataset,):
        print(run(name, args.out, args.images), flush=True)


if __name__ == "__main__":
    main()
