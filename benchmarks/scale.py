"""Benchmark: time and peak memory of occluding a small organ against volume size, for Captum, MONAI, segxai
with crops only and segxai with incremental inference, in one run; writes a table and a plot.

    .venv/bin/python benchmarks/scale.py --out benchmarks/results   # about 11 minutes on one thread

Each size is an abdominal phantom (`segxai.data.abdomen_phantom`, seeded) explained by the 3D batch-norm U-Net
preset with seeded random weights (run time does not depend on training). The target is the mean kidney
probability over the left kidney of the phantom, the ROI that kidney grown by 4 voxels; window 8, stride 8,
fill 0, batch 8. Captum and MONAI occlude the whole volume, so their cost grows with the square of the
volume: they run up to `--peers-up-to` voxels. `--device cuda` runs on a GPU, `--amp` then adds autocast.
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

from measuring import cpu_name, markdown, measured
from perturbation import captum_occlusion, monai_occlusion

from segxai.data import abdomen_phantom
from segxai.methods.perturb import Occlusion
from segxai.metrics import write_csv
from segxai.model import SegModel
from segxai.models.presets import build_network, network_config
from segxai.preprocess import normalize_intensity
from segxai.roi import from_mask
from segxai.targets import ClassRegion

SEED, WINDOW, BATCH, MARGIN = 0, 8, 8, 4
TOOLS = ("Captum", "MONAI", "segxai crops", "segxai incremental")


def scale_model(device: str, amp: bool) -> SegModel:
    """The 3D batch-norm U-Net preset with seeded random weights (3 classes)."""
    with torch.random.fork_rng():
        torch.manual_seed(SEED)
        net = build_network(network_config("unet3d", in_channels=1, out_channels=3))
    return SegModel(net.eval(), device=device, amp=amp)


def size_rows(model: SegModel, shape: tuple[int, ...], peers: bool) -> list[dict[str, Any]]:
    """Every tool on the phantom of `shape` (the peers only when `peers`)."""
    phantom = abdomen_phantom(shape, seed=SEED)
    kidney = next(v for v, n in phantom.names.items() if n == "kidney_left")
    mask = phantom.labels == kidney
    x = torch.from_numpy(normalize_intensity(phantom.image, {"kind": "window", "low": -200.0, "high": 300.0}))
    target = ClassRegion(1, mask, score="prob", reduce="mean")
    roi = from_mask(mask, margin=MARGIN)
    with torch.no_grad():
        model(x[None].to(model.device))
    runs = {}
    if peers:
        runs["Captum"] = lambda: captum_occlusion(model, x[None].to(model.device), target, WINDOW, WINDOW, BATCH)
        runs["MONAI"] = lambda: monai_occlusion(model, x[None].to(model.device), target, WINDOW, WINDOW, BATCH)
    for tool, mode in (("segxai crops", "off"), ("segxai incremental", "auto")):
        method = Occlusion(model, window=WINDOW, stride=WINDOW, incremental=mode)
        runs[tool] = lambda method=method: method.explain(x, target, roi=roi, seed=SEED, batch_size=BATCH,
                                                          progress=False)
    rows = []
    for tool, call in runs.items():
        _, cost = measured(model, call)
        rows.append({"shape": "x".join(map(str, shape)), "voxels": int(np.prod(shape)), "tool": tool, **cost})
    return rows


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Seconds and peak memory against voxels, one line per tool, log-log."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for tool in TOOLS:
        mine = [r for r in rows if r["tool"] == tool]
        if not mine:
            continue
        voxels = [r["voxels"] for r in mine]
        axes[0].plot(voxels, [r["seconds"] for r in mine], "o-", label=tool)
        axes[1].plot(voxels, [max(r["peak_mb"], 1.0) for r in mine], "o-", label=tool)
    for axis, label in zip(axes, ("wall seconds", "peak memory increase (MB)")):
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("volume voxels")
        axis.set_ylabel(label)
        axis.grid(True, which="both", alpha=0.3)
    axes[0].legend()
    figure.suptitle("Occluding the left kidney (window 8): cost against volume size")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def run(out: Path, shapes: list[tuple[int, ...]], peers_up_to: int, device: str, amp: bool) -> str:
    start = time.perf_counter()
    model = scale_model(device, amp)
    rows = []
    for shape in shapes:
        rows += size_rows(model, shape, int(np.prod(shape)) <= peers_up_to)
        print(f"{shape}: done at {time.perf_counter() - start:.0f} s", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(rows, out / "scale.csv")
    plot(rows, out / "scale.png")
    for row in rows:
        row["voxel_passes_M"] = row["voxel_passes"] / 1e6
    header = (f"{date.today()}, {cpu_name() if device == 'cpu' else device}, {torch.get_num_threads()} torch "
              f"threads, torch {torch.__version__}, amp {amp}; random-weight 3D batch-norm U-Net, window {WINDOW}, "
              f"batch {BATCH}; peers up to {peers_up_to} voxels; total {time.perf_counter() - start:.0f} s.")
    text = "\n\n".join(["# Cost against volume size (left-kidney occlusion)", header,
                        markdown(rows, ("shape", "tool", "forward_passes", "voxel_passes_M", "seconds", "peak_mb")),
                        "Plot: scale.png"]) + "\n"
    (out / "scale.md").write_text(text)
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="32x32x32,64x64x32,64x64x64,96x96x64,128x128x64,192x192x96,256x256x128")
    parser.add_argument("--peers-up-to", type=int, default=96 * 96 * 64, help="largest volume (voxels) for peers")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", action="store_true", help="autocast on CUDA")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args(argv)
    shapes = [tuple(int(n) for n in size.split("x")) for size in args.sizes.split(",")]
    print(run(args.out, shapes, args.peers_up_to, args.device, args.amp), flush=True)


if __name__ == "__main__":
    main()
