"""Benchmark: instance SmoothGrad for every lesion of a 3D two-channel brain MRI phantom, segxai against a
per-lesion loop of Captum's NoiseTunnel(Saliency).

    .venv/bin/python benchmarks/instance_saliency.py --out benchmarks/results

The network is a MONAI 3D UNet laid out as in the instance-saliency paper (batch norm, no residual units; three
down-samplings here), seeded and untrained: cost does not depend on the weights. Every lesion's target is its
summed lesion logit over its voxels; noise is 5 % of the FLAIR range, the same draws count for every tool.

- segxai shared: `explain_instances(..., "smoothgrad")`: one forward pass per noise draw for all lesions, one
  backward pass per lesion.
- segxai shared + crop: the same with `crop=True`: lesions computed on crops of their box plus the network's
  receptive field, lesions with overlapping crops sharing one (exact: `max_abs_diff_vs_shared`).
- Captum: for each lesion `NoiseTunnel(Saliency(f)).attribute(x, nt_type="smoothgrad", abs=False)` with the same
  number of draws, batch size and standard deviation.

Every call goes through one `segxai.SegModel` and is measured alike (forward passes, voxel-passes, seconds, peak
resident memory). `pearson_vs_shared` compares each map with segxai shared's (its noise draws differ from
Captum's, so it is high but below 1 for Captum).

`--case brats`: the instance paper's statistics (Spagnolo et al.) on the real BraTS example. A 3D U-Net is fitted
to the one case at 3 mm (`cases.load_brats`; its Dice is a training Dice, and the case's labels are themselves a
model's output); every connected component of each tumour class in its prediction and in the labels is typed
TP/FP/FN (`lesion_types`), explained by instance SmoothGrad (its summed logit over its voxels), and its peak
FLAIR saliency over the lesion dilated 3 voxels (`instance_rows`) is compared between types (Kruskal-Wallis,
Mann-Whitney U with Bonferroni, AUROC TP vs FP). Writes `instance_saliency_brats.md/.csv`.
"""
from __future__ import annotations

import argparse
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from measuring import cpu_name, markdown, measured

import cases  # benchmarks/cases.py, beside this file

from segxai.data import brain_phantom
from segxai.methods.instance_saliency import FoundInstance, explain_instances
from segxai.metrics import auroc, compare_groups, instance_rows, write_csv
from segxai.methods.smoothgrad import noise_sigma
from segxai.model import SegModel
from segxai.preprocess import normalize_intensity
from segxai.targets import ClassRegion

SEED = 0
SHAPE = (128, 128, 96)  # about a 1.5-mm brain MRI
LESIONS = 10
SAMPLES = 20
NOISE = 0.05  # fraction of the FLAIR range
BATCH = 4


def network() -> SegModel:
    """A seeded MONAI UNet with the paper's layout (batch norm, no residual units), two channels in and out."""
    from monai.networks.nets import UNet

    torch.manual_seed(SEED)
    net = UNet(spatial_dims=3, in_channels=2, out_channels=2, channels=(16, 32, 64, 128), strides=(2, 2, 2),
               num_res_units=0, norm="batch")
    return SegModel(net)


def captum_loop(model: SegModel, x: torch.Tensor, found: list[FoundInstance], sigma: float) -> list[torch.Tensor]:
    """Captum's NoiseTunnel(Saliency) once per lesion, on the whole volume."""
    from captum.attr import NoiseTunnel, Saliency

    maps = []
    for instance in found:
        target = ClassRegion(1, instance.mask, score="logit", reduce="sum")
        tunnel = NoiseTunnel(Saliency(lambda batch: target(model(batch))))
        maps.append(tunnel.attribute(x[None], nt_type="smoothgrad", nt_samples=SAMPLES, nt_samples_batch_size=BATCH,
                                     stdevs=sigma, abs=False)[0].detach())
    return maps


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(np.corrcoef(a.flatten().numpy(), b.flatten().numpy())[0, 1])


def run(out: Path) -> str:
    start = time.perf_counter()
    phantom = brain_phantom(SHAPE, n_lesions=LESIONS, seed=SEED)
    x = torch.from_numpy(normalize_intensity(phantom.image, {"kind": "zscore_nonzero"})).float()
    found = [FoundInstance(i, "reference", torch.from_numpy(phantom.instances == i))
             for i in range(1, int(phantom.instances.max()) + 1)]
    model = network()
    sigma = float(noise_sigma(x[None], NOISE, reference_channel=0)[0, 0])
    with torch.no_grad():  # warm up once so no measured call pays the start-up cost
        model(x[None])
    options = dict(instances=found, n_samples=SAMPLES, noise=NOISE, reference_channel=0, seed=SEED,
                   batch_size=BATCH, progress=False)
    shared, shared_cost = measured(model, lambda: explain_instances(model, x, 1, "smoothgrad", **options))
    shared_maps = [e.attribution for e in shared]
    cropped, crop_cost = measured(model, lambda: explain_instances(model, x, 1, "smoothgrad", crop=True, **options))
    captum, captum_cost = measured(model, lambda: captum_loop(model, x, found, sigma))
    rows = []
    for tool, maps, cost in (("segxai shared", shared_maps, shared_cost),
                             ("segxai shared + crop", [e.attribution for e in cropped], crop_cost),
                             ("Captum NoiseTunnel loop", captum, captum_cost)):
        rows.append({
            "tool": tool, **cost, "backward_passes": None, "speedup_vs_captum": captum_cost["seconds"] / cost["seconds"],
            "memory_ratio_vs_captum": cost["peak_mb"] / max(captum_cost["peak_mb"], 1e-9),
            "max_abs_diff_vs_shared": max(float((m - s).abs().max()) for m, s in zip(maps, shared_maps)),
            "pearson_vs_shared": float(np.mean([pearson(m, s) for m, s in zip(maps, shared_maps)])),
        })
    rows[1]["crops"] = cropped[0].stats["crops"]
    for row in rows:
        row.pop("backward_passes")
    write_csv(rows, out / "instance_saliency.csv")
    header = (f"{date.today()}, {cpu_name()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}; "
              f"brain phantom {SHAPE} with {len(found)} lesions, MONAI UNet (16, 32, 64, 128), batch norm; "
              f"{SAMPLES} noise draws at {NOISE:g} x FLAIR range, batch {BATCH}; total "
              f"{time.perf_counter() - start:.0f} s.")
    text = "\n\n".join([
        "# Instance SmoothGrad for 10 lesions: segxai vs a per-lesion Captum NoiseTunnel loop", header,
        markdown(rows, ("tool", "forward_passes", "voxel_passes", "seconds", "peak_mb", "speedup_vs_captum",
                        "memory_ratio_vs_captum", "max_abs_diff_vs_shared", "pearson_vs_shared", "crops")),
    ]) + "\n"
    (out / "instance_saliency.md").write_text(text)
    return text


FLAIR = 2  # t2f in the BraTS channel order (t1c, t1n, t2f, t2w)
TYPES = ("TP", "FP", "FN")


def run_brats(out: Path, samples: int = SAMPLES) -> str:
    """Peak FLAIR saliency of every TP/FP/FN component of each tumour class on the BraTS case."""
    start = time.perf_counter()
    case = cases.load_brats()
    x = torch.from_numpy(case.normalized(0))
    channels = list(case.config.get("channel_names") or ["t1c", "t1n", "t2f", "t2w"])
    rows = []
    for cls, name in case.names.items():
        reference = case.labels[0] == cls
        explanations = explain_instances(case.model, x, cls, "smoothgrad", reference=reference, n_samples=samples,
                                         noise=NOISE, reference_channel=FLAIR, seed=SEED, batch_size=BATCH,
                                         progress=False)
        rows += [{"class": name, **row} for row in instance_rows(explanations, channel=FLAIR, channel_names=channels)]
    write_csv(rows, out / "instance_saliency_brats.csv")
    peaks = {kind: [r["peak"] for r in rows if r["type"] == kind] for kind in TYPES}
    summary = [{"type": kind, "lesions": len(values), "median voxels": _median([r["voxels"] for r in rows if r["type"] == kind]),
                "median peak": _median(values), "mean peak": float(np.mean(values)) if values else None,
                **{f"lesions ({name})": sum(r["type"] == kind and r["class"] == name for r in rows)
                   for name in case.names.values()}} for kind, values in peaks.items()]
    tests = compare_groups(peaks) if sum(bool(v) for v in peaks.values()) >= 2 else None
    auc = auroc(peaks["TP"], peaks["FP"]) if peaks["TP"] and peaks["FP"] else None
    scores = ", ".join(f"{organ} {value:.3f}" for organ, value in case.dice.items())
    network = case.config.get("network", {})
    header = (f"{date.today()}, {cpu_name()}, {torch.get_num_threads()} torch thread(s), torch {torch.__version__}; "
              f"BraTS example cropped to the brain at {cases.BRATS_FACTOR} mm, {cases.BRATS_SHAPE}; model: segxai "
              f"preset `{case.config.get('preset')}` U-Net (channels {network.get('channels')}), fitted to this one "
              f"case for {cases.BRATS_STEPS} steps, training Dice {scores} (the labels are a BraTS model's output, "
              f"see the data's SOURCE.md); instance SmoothGrad, {samples} draws at {NOISE:g} x FLAIR range; peak over "
              f"the lesion dilated 3 voxels, FLAIR channel; total {time.perf_counter() - start:.0f} s.")
    lines = ["# Peak saliency by lesion type (TP / FP / FN) on the BraTS case", header,
             markdown(summary, ("type", "lesions", "median voxels", "median peak", "mean peak",
                                *(f"lesions ({name})" for name in case.names.values())))]
    if tests is None:
        lines.append("Fewer than two non-empty lesion types: no test.")
    else:
        lines.append(f"Kruskal-Wallis over {', '.join(tests['groups'])}: H = {tests['kruskal']['statistic']:.2f}, "
                     f"p = {tests['kruskal']['p']:.3g}. Pairwise Mann-Whitney U (Bonferroni): " + "; ".join(
                         f"{t['a']} vs {t['b']} U = {t['u']:.1f}, p_adj = {t['p_adjusted']:.3g}" for t in tests["pairwise"])
                     + (f". AUROC of the peak, TP vs FP: {auc:.2f}." if auc is not None else "."))
    text = "\n\n".join(lines) + "\n"
    (out / "instance_saliency_brats.md").write_text(text)
    return text


def _median(values: list[float]) -> float | None:
    return float(np.median(values)) if values else None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--case", choices=("phantom", "brats"), default="phantom")
    parser.add_argument("--samples", type=int, default=SAMPLES, help="noise draws (brats)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(run(args.out) if args.case == "phantom" else run_brats(args.out, args.samples), flush=True)


if __name__ == "__main__":
    main()
