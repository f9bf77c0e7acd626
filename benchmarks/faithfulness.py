"""Benchmark: block-intervention faithfulness of CausalBlocks, Grad-CAM, RISE and a random ranking on 256x256
RGB polyps (PdCR's protocol, METHODS.md 4.5).

    .venv/bin/python benchmarks/faithfulness.py [--out benchmarks/results] [--images N]

For each held-out polyp (all 10 unless `--images` caps them) where the model predicts any polyp, the region is
PdCR's 32x32 box on the block grid, centred on the model's predicted polyp (`causal_blocks.region_box`); images
with an empty prediction are skipped and listed. The outcome is the region Dice (in points) against the model's
own unperturbed prediction. Maps:

- CausalBlocks: PdCR's published settings (b=8, S=3, N=50, tau=0.02, 8x8 patches from the 30 training images);
- Grad-CAM: signed, at the default layer, for the soft region Dice (its differentiable version);
- RISE: 1000 masks for the region Dice, with the 30 training images as the fill, i.e. content from other images.

Each ranking (CausalBlocks most negative first, the others highest first, random seeded) then has its top-k
blocks outside the region treated together with the same pool patches (`block_intervention_curve`, 10 draws,
the same draws for every ranking); the drop of the region Dice vs k and its area (the mean drop over
k/48) measure faithfulness: higher = the ranking found the blocks the prediction depends on. Two baselines sit
beside the maps: the seeded random ranking, and each map blurred by a Gaussian of one block (`<method> blurred`;
ROAR/ROAD-style scores reward blurry maps, so a map should beat its own blurred copy). Areas get 95 % percentile-
bootstrap intervals over images (seeded, `segxai.metrics.bootstrap_interval`). CausalBlocks' map also gets
`sign_consistency`, and its block effects (PdCR's ATE per block) are summarised: blocks with a negative,
positive and zero ATE, and the extreme ATEs. Per image x method rows go to `faithfulness.csv`, the summary to
`faithfulness.md`.
"""
from __future__ import annotations

import argparse
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import cases  # benchmarks/cases.py, beside this file
from causal_blocks import BLOCK, DRAWS, PATCHES_PER_IMAGE, REGION, SCREEN, SEED, TAU, region_box
from measuring import cpu_name, markdown, measured

from segxai.methods import RISE, CausalBlocks, GradCAM
from segxai.methods.perturb.causal_blocks import patch_pool
from segxai.metrics import bootstrap_interval, write_csv
from segxai.metrics.baselines import gaussian_blur
from segxai.metrics.faithfulness import block_intervention_curve, sign_consistency
from segxai.preprocess import normalize_intensity
from segxai.roi import from_box
from segxai.targets import RegionDice

KS = (0, 1, 2, 4, 8, 16, 32, 48)  # 48 blocks ring the 4x4-block region: all its 12-pixel receptive field reaches
SHOWN_KS = (1, 4, 16, 48)
EVAL_DRAWS = 10
RISE_MASKS = 1000
MAPS = ("CausalBlocks", "Grad-CAM", "RISE")
METHODS = (*MAPS, *(f"{name} blurred" for name in MAPS), "random")
BLUR_SIGMA = float(BLOCK)  # one block: the blurred map still ranks, but coarsely


def maps(case: cases.Case, x: torch.Tensor, region: torch.Tensor, patches: torch.Tensor,
         images: torch.Tensor, rise_masks: int = RISE_MASKS
         ) -> tuple[dict[str, tuple[Any, dict[str, Any]]], dict[str, Any]]:
    """Each method's map (channel-summed) of `x` for its region-Dice target with its cost, its blurred copy (at
    the map's cost) and the random control (no cost); and the explanations by method."""
    model, dice = case.model, RegionDice(1, region=region)
    methods = {
        "CausalBlocks": (CausalBlocks(model, block=BLOCK, pool=patches, screen_draws=SCREEN, draws=DRAWS, tau=TAU),
                         dice),
        "Grad-CAM": (GradCAM(model), RegionDice(1, region=region, soft=True)),
        "RISE": (RISE(model, n_masks=rise_masks, fill="pool", pool=images), dice),
    }
    out = {name: measured(model, lambda m=m, t=t: m.explain(x, t, seed=SEED, progress=False))
           for name, (m, t) in methods.items()}
    found = {name: (explanation.channel_map(), cost) for name, (explanation, cost) in out.items()}
    blurred = {f"{name} blurred": (gaussian_blur(values, BLUR_SIGMA), cost) for name, (values, cost) in found.items()}
    rankings = {**found, **blurred, "random": ("random", {"forward_passes": 0, "seconds": 0.0})}
    return rankings, {name: explanation for name, (explanation, _) in out.items()}


def evaluate_image(case: cases.Case, index: int, patches: torch.Tensor, images: torch.Tensor,
                   rise_masks: int = RISE_MASKS) -> list[dict[str, Any]] | None:
    """The rows of one image (one per method), or None when the model predicts no polyp on it."""
    x = torch.from_numpy(case.normalized(index))
    predicted = case.model.predict(x) == 1
    if not predicted.any():
        return None
    corner = region_box(predicted.numpy())
    region = from_box(corner, (REGION, REGION), x.shape[1:])
    dice = RegionDice(1, region=region)
    common = dict(block=BLOCK, fill="pool", pool=patches, draws=EVAL_DRAWS, exclude=region, seed=SEED)
    rows = []
    rankings, explanations = maps(case, x, region, patches, images, rise_masks)
    for name, (ranking, cost) in rankings.items():
        curve = block_intervention_curve(case.model, x, dice, ranking, ks=list(KS),
                                         supportive="low" if name.startswith("CausalBlocks") else "high", **common)
        row = {"image": index, "method": name, "corner": f"{corner[0]}/{corner[1]}",
               "predicted_in_region": round(float(predicted[region].float().mean()), 3),
               "base_dice": 100 * curve.base, "area": 100 * curve.area,
               **{f"drop_k{k}": 100 * float(d) for k, d in zip(KS, curve.drops) if k},
               **{f"se_k{k}": 100 * float(s) for k, s in zip(KS, curve.ses) if k},
               "map_passes": cost["forward_passes"], "map_seconds": cost["seconds"],
               "curve_passes": curve.cost.forward_passes, "curve_seconds": round(curve.cost.seconds, 3)}
        if name == "Grad-CAM":
            row["layer"] = explanations[name].stats.get("layer")
        if name == "CausalBlocks":
            row.update(block_effects(ranking))
            row["nonzero_blocks"] = row["negative_ate_blocks"] + row["positive_ate_blocks"]
            if row["nonzero_blocks"]:  # the check needs at least one block beyond +-tau
                check = sign_consistency(case.model, x, dice, ranking, supportive="low", tau=TAU, **common)
                row.update({"negative_delta": _points(check.negative_delta), "negative_blocks": check.negative_blocks,
                            "positive_delta": _points(check.positive_delta), "positive_blocks": check.positive_blocks,
                            "sign_consistent": check.consistent})
        rows.append(row)
    return rows


def block_effects(ate: torch.Tensor) -> dict[str, Any]:
    """PdCR's block effects of one ATE map (constant on each block, already in Dice points): blocks by sign and
    the extreme ATEs."""
    blocks = ate.unfold(0, BLOCK, BLOCK).unfold(1, BLOCK, BLOCK)[..., 0, 0].flatten()
    return {"negative_ate_blocks": int((blocks < 0).sum()), "positive_ate_blocks": int((blocks > 0).sum()),
            "zero_ate_blocks": int((blocks == 0).sum()), "min_ate": float(blocks.min()),
            "max_ate": float(blocks.max())}


def _points(delta: float | None) -> float | None:
    """A Dice change in points (None stays None)."""
    return None if delta is None else 100 * delta


def mean_se(values: list[float]) -> str:
    """`mean ± standard error` over images."""
    values = np.asarray(values, dtype=float)
    se = values.std(ddof=1) / np.sqrt(len(values)) if len(values) > 1 else 0.0
    return f"{values.mean():.2f} ± {se:.2f}"


def interval(values: list[float]) -> str:
    """`mean [low, high]`, the seeded 95 % percentile-bootstrap interval over images."""
    found = bootstrap_interval(values, seed=SEED)
    return f"{found.mean:.2f} [{found.low:.2f}, {found.high:.2f}]"


def summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per method: mean ± se over images of the area (and its bootstrap interval) and of the drop at
    `SHOWN_KS`, how often it beats the random ranking and its blurred copy, and the map cost."""
    table = []
    area = {(r["image"], r["method"]): r["area"] for r in rows}
    for name in METHODS:
        mine = [r for r in rows if r["method"] == name]
        beats = {other: f"{sum(r['area'] > area[(r['image'], other)] for r in mine)}/{len(mine)}"
                 for other in ("random", f"{name} blurred") if (mine[0]["image"], other) in area and other != name}
        table.append({"method": name, "images": len(mine), "area": mean_se([r["area"] for r in mine]),
                      "area 95% CI": interval([r["area"] for r in mine]),
                      "beats random": beats.get("random", ""), "beats its blurred copy": beats.get(f"{name} blurred", ""),
                      **{f"drop k={k}": mean_se([r[f"drop_k{k}"] for r in mine]) for k in SHOWN_KS},
                      "map s/image": float(np.mean([r["map_seconds"] for r in mine])),
                      "map passes/image": float(np.mean([r["map_passes"] for r in mine]))})
    return table


def run(out: Path, limit: int | None = None, rise_masks: int = RISE_MASKS) -> str:
    """Evaluate the first `limit` (default all) held-out polyps, write the csv and md to `out`; returns the md."""
    start = time.perf_counter()
    case, train_images = cases.load_polyp_256()
    train = [normalize_intensity(i, case.config["intensity"]) for i in train_images]
    patches = patch_pool(train, BLOCK, per_image=PATCHES_PER_IMAGE, seed=SEED)
    images = torch.from_numpy(np.stack(train))
    with torch.no_grad():  # warm up once so no measured call pays the start-up cost
        case.model(torch.from_numpy(case.normalized(0))[None])
    rows, skipped = [], []
    for index in range(len(case.images) if limit is None else min(limit, len(case.images))):
        found = evaluate_image(case, index, patches, images, rise_masks)
        if found is None:
            skipped.append(index)
        else:
            rows += found
        print(f"image {index}: {'skipped (empty prediction)' if found is None else 'done'}, "
              f"{time.perf_counter() - start:.0f} s", flush=True)
    write_csv(rows, out / "faithfulness.csv")
    n = len({r["image"] for r in rows})
    causal = {r["image"]: r for r in rows if r["method"] == "CausalBlocks"}
    beats = {other: sum(causal[r["image"]]["area"] > r["area"] for r in rows if r["method"] == other)
             for other in METHODS[1:]}
    effects = [{"image": r["image"], **{k: r[k] for k in ("negative_ate_blocks", "positive_ate_blocks",
                                                            "zero_ate_blocks", "min_ate", "max_ate")}}
               for r in causal.values()]
    area = {name: np.mean([r["area"] for r in rows if r["method"] == name]) for name in METHODS}
    seconds = {name: np.mean([r["map_seconds"] for r in rows if r["method"] == name]) for name in METHODS}
    layers = sorted({r["layer"] for r in rows if r["method"] == "Grad-CAM"})
    checked = [r for r in causal.values() if "sign_consistent" in r]
    negative = [r["negative_delta"] for r in checked if r["negative_delta"] is not None]
    header = (f"{date.today()}, {cpu_name()}, {torch.get_num_threads()} torch thread(s), torch {torch.__version__}; "
              f"held-out polyps at 256x256 (model validation Dice {case.dice.get('polyp', float('nan')):.3f}), "
              f"{n} images (skipped, empty prediction: {skipped or 'none'}); region 32x32 on the predicted polyp, "
              f"b={BLOCK}, CausalBlocks S={SCREEN}, N={DRAWS}, tau={TAU}; Grad-CAM at {', '.join(layers)}; "
              f"RISE {rise_masks} masks filled from the training images; blurred copies: Gaussian sigma "
              f"{BLUR_SIGMA:g} px; "
              f"{len(patches)} pool patches; top-k blocks treated with pool patches, k in {KS}, "
              f"{EVAL_DRAWS} draws; total {time.perf_counter() - start:.0f} s.")
    text = "\n\n".join([
        "# Block-intervention faithfulness on 256x256 polyps: CausalBlocks vs Grad-CAM vs RISE vs random",
        header,
        "Region-Dice drop (Dice points, mean ± se over images) when the top-k blocks of each ranking are "
        "replaced by patches of other images; area = mean drop over k/48 (higher = more faithful). "
        "Map cost per image (seconds on this CPU, forward passes):",
        markdown(summary(rows), ("method", "images", "area", "area 95% CI", "beats random", "beats its blurred copy",
                                 *(f"drop k={k}" for k in SHOWN_KS), "map s/image", "map passes/image")),
        "CausalBlocks' block effects (PdCR: ATE per 8x8 block on the region Dice, points; negative = the block's "
        "content supports the segmentation; zero = not screened in or within tau):",
        markdown(effects, ("image", "negative_ate_blocks", "positive_ate_blocks", "zero_ate_blocks", "min_ate",
                           "max_ate")),
        f"CausalBlocks' area exceeds Grad-CAM's on {beats['Grad-CAM']}/{n} images, RISE's on {beats['RISE']}/{n} "
        f"and random's on {beats['random']}/{n}. Sign consistency (images with a non-zero ATE map): consistent on "
        f"{sum(r['sign_consistent'] for r in checked)}/{len(checked)}; treating all negative-ATE blocks together "
        f"changes the Dice by {mean_se(negative) if negative else 'n/a'} points; "
        f"{sum(r['positive_blocks'] for r in checked)} blocks have a positive ATE (a Dice against the model's own "
        "prediction starts at 100 and cannot rise, so that half of the check is empty here).",
        "Mean areas, largest first: " + ", ".join(f"{name} {area[name]:.1f}" for name in
                                                   sorted(METHODS, key=lambda m: -area[m])) +
        f" points; RISE's map took {seconds['RISE'] / seconds['CausalBlocks']:.1f}x CausalBlocks' time. This is {n} "
        f"images of one weak model (validation Dice {case.dice.get('polyp', float('nan')):.2f}), the outcome is the "
        "Dice against the model's own prediction, and the test treats blocks with the same pool patches that "
        "CausalBlocks estimates its effects with, which favours it.",
    ]) + "\n"
    (out / "faithfulness.md").write_text(text)
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--images", type=int, default=None, help="evaluate only the first N held-out polyps")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (the table used 1)")
    parser.add_argument("--rise-masks", type=int, default=RISE_MASKS, help="RISE masks (fewer: a quicker run)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(run(args.out, args.images, args.rise_masks), flush=True)


if __name__ == "__main__":
    main()
