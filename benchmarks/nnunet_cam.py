"""Benchmark: Grad-CAM and Grad-CAM++ through an nnU-Net v2 model's sliding window, segxai against a plain
per-tile loop written here and against the published `nnunetv2-cam` package; and the cost of explaining one small
structure of a whole volume with and without tile skipping.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/nnunet_cam.py --out benchmarks/results \
        [--model DIR --images CASE_0000.nii.gz CASE_0001.nii.gz] [--peer-path DIR]

Without `--model`, a tiny nnU-Net v2 folder is built into a temporary folder by `tests/frameworks/nnunet_folder.py`
(nnU-Net's own fingerprint and planning on a synthetic two-channel dataset, two folds trained a few steps; 45 s)
and its test case is explained. `--large-shape` adds a whole synthetic volume made by the same builder's case
generator (a sphere and a block in a body box; default 96x80x64 voxels at the plans' spacing) for the costs.
Every map is compared on nnU-Net's preprocessed grid (the model grid), fold `--fold` only.

1. Grad-CAM / Grad-CAM++ at each of `--layers`, target: the class-`--cls` logits summed over the predicted region
   (`ClassRegion(cls, "prediction")`).
   - segxai: `segxai.models.load` + `load_case`, `GradCAM` / `GradCAMpp`: one forward pass of every tile, one
     backward pass, each tile's CAM upsampled to the patch and blended with nnU-Net's Gaussian.
   - reference (written here from nnU-Net's own `pad_nd_image`, `compute_steps_for_sliding_window` and
     `compute_gaussian`): tile by tile, a forward and a backward pass of the tile's share of the blended target
     (its logits times its Gaussian over the summed Gaussians, on the target's voxels), the hooked layer's CAM
     trilinearly upsampled, blended with the same weights. Agreement is float precision by construction.
   - nnunetv2-cam (its `compute_cam_with_sliding_window`, run on the same preprocessed input when the package
     and its dependencies are importable): each tile's own logits summed over the tile's own predicted class
     mask, pytorch-grad-cam's ReLU, per-tile min-max scaling to [0, 1], cubic-spline upsampling, tiles averaged
     uniformly. It is compared with segxai's map after the same ReLU and [0, 1] scaling.
2. Tile skipping: a `Voxel` target (a voxel of the predicted structure nearest its centroid) and the structure
   itself (`ClassRegion(cls, mask=predicted component)`), for Saliency and Grad-CAM: segxai's focused path (only
   the tiles overlapping the target's voxels run) against the same call with the focus off (every tile). The maps
   are compared inside the target's reach (the union of the tiles that overlap its voxels) and outside it.

`pearson` and `max_rel_diff` (max |a - b| / max |b|, b the segxai map or the all-tiles map) are over the whole
model grid. The reference rows add `gradient_balance` (sum over tiles and channels of |spatial mean of the
target's gradient| over the sum of spatial means of |gradient|: near 0, Grad-CAM's weights cancel, as at a
convolution followed by instance norm) and `float32_vs_float64` (the reference loop in float32 against itself in
float64: how much rounding alone moves the map; Grad-CAM++'s denominator makes it large). Seconds and peak
resident memory come from `segxai.measure.Measure` (RSS sampled every 2 ms, freed heap returned to the OS before
each call), tiles from counting network calls.
"""
from __future__ import annotations

import argparse
import copy
import importlib
import os
import subprocess
import sys
import tempfile
import time
from datetime import date
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
BUILDER = ROOT / "tests" / "frameworks" / "nnunet_folder.py"

# benchmarks/measuring.py, beside this file
from measuring import cpu_name, markdown, measured

from segxai import GradCAM, GradCAMpp, Saliency
from segxai.metrics import write_csv
from segxai.targets import ClassRegion, Target, Voxel

METHODS = {"gradcam": GradCAM, "gradcampp": GradCAMpp}
PEER_METHOD = {"gradcam": "gradcam", "gradcampp": "gradcam++"}


# ------------------------------------------------------------------------------------------- inputs
def build_folder(into: Path) -> Path:
    """A tiny nnU-Net v2 folder built by the tests' builder (nnU-Net's own planning), in `into`."""
    done = subprocess.run([sys.executable, str(BUILDER), str(into)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"building the nnU-Net folder failed:\n{done.stderr[-3000:]}")
    return into


def write_large_case(into: Path, shape: tuple[int, ...], spacing: tuple[float, ...]) -> list[str]:
    """A whole synthetic volume from the builder's own case generator (seed 7), as two channel files."""
    import nibabel as nib

    sys.path.insert(0, str(BUILDER.parent))
    make_case = importlib.import_module("nnunet_folder").make_case
    images, _ = make_case(np.random.default_rng(7), shape=shape, spacing=spacing)
    into.mkdir(parents=True, exist_ok=True)
    files = [str(into / f"large_{c:04d}.nii.gz") for c in range(len(images))]
    for image, file in zip(images, files):
        nib.save(image, file)
    return files


# ------------------------------------------------------------------------------------------- reference loop
class TileLayout:
    """nnU-Net's own tiling of one preprocessed case: padding, tile boxes and Gaussian, from nnunetv2."""

    def __init__(self, spatial: tuple[int, ...], patch: tuple[int, ...], step: float) -> None:
        from nnunetv2.inference.sliding_window_prediction import (
            compute_gaussian,
            compute_steps_for_sliding_window,
        )

        self.patch = tuple(patch)
        self.padded = tuple(max(s, p) for s, p in zip(spatial, patch))
        below = [(p - s) // 2 for s, p in zip(spatial, self.padded)]
        self.inside = tuple(slice(b, b + s) for b, s in zip(below, spatial))
        steps = compute_steps_for_sliding_window(self.padded, self.patch, step)
        self.boxes = [tuple(slice(o, o + p) for o, p in zip(origin, self.patch))
                      for origin in np.stack(np.meshgrid(*steps, indexing="ij"), -1).reshape(-1, len(steps))]
        self.gaussian = compute_gaussian(self.patch, sigma_scale=1 / 8, value_scaling_factor=10,
                                         dtype=torch.float32, device=torch.device("cpu"))
        self.norm = torch.zeros(self.padded)
        for box in self.boxes:
            self.norm[box] += self.gaussian

    def pad(self, array: torch.Tensor) -> torch.Tensor:
        """`(..., *spatial)` zero-padded as nnU-Net pads a case smaller than the patch (`pad_nd_image`)."""
        from acvl_utils.cropping_and_padding.padding import pad_nd_image

        return torch.as_tensor(pad_nd_image(array, self.patch, "constant", {"value": 0}, False, None))

    def reach(self, support: torch.Tensor) -> torch.Tensor:
        """The voxels of the case covered by a tile that overlaps `support` (the tiles tile skipping keeps)."""
        padded, covered = self.pad(support.float()) > 0, torch.zeros(self.padded, dtype=torch.bool)
        for box in self.boxes:
            if padded[box].any():
                covered[box] = True
        return covered[self.inside]


def reference_cam(net: torch.nn.Module, x: torch.Tensor, layer: str, cls: int, region: torch.Tensor,
                  layout: TileLayout, plus: bool) -> tuple[torch.Tensor, int, float]:
    """Grad-CAM (`plus`: Grad-CAM++ with MONAI's denominator) of the class-`cls` logits summed over `region`
    of the Gaussian-blended sliding window, one tile at a time. Returns the map, the network calls and the
    gradient balance: sum |spatial mean of dT/dA_k| / sum spatial mean |dT/dA_k| over tiles and channels, near 0
    when Grad-CAM's channel weights cancel (a layer followed by instance norm, which removes every channel's
    spatial mean, so the target's gradient sums to zero over each channel)."""
    padded, weight = layout.pad(x), layout.pad(region.to(x.dtype))
    gaussian, norm = layout.gaussian.to(x.dtype), layout.norm.to(x.dtype)
    layer_module = dict(net.named_modules())[layer]
    total = torch.zeros(layout.padded, dtype=x.dtype)
    calls, balance = 0, torch.zeros(2, dtype=torch.float64)
    for box in layout.boxes:
        seen: list[torch.Tensor] = []
        handle = layer_module.register_forward_hook(lambda _m, _i, output, into=seen: into.append(output))
        with torch.enable_grad():
            logits = net(padded[(slice(None), *box)][None])
        handle.remove()
        calls += 1
        share = weight[box] * gaussian / norm[box]  # this tile's part of the blended target
        if not bool(share.any()):
            continue  # the target reads none of this tile's voxels: its gradient, and CAM, are zero
        (grad,) = torch.autograd.grad((logits[0, cls] * share).sum(), seen[0])
        activation = seen[0].detach()
        spatial = tuple(range(2, activation.dim()))
        balance += torch.stack([grad.mean(spatial).abs().sum(), grad.abs().mean(spatial).sum()]).double()
        if plus:
            spread = (activation * grad ** 3).sum(spatial, keepdim=True)
            denominator = 2 * grad ** 2 + spread
            alpha = torch.where(denominator != 0, grad ** 2 / torch.where(denominator != 0, denominator, 1.0), 0.0)
            channel = (alpha * grad.clamp_min(0)).sum(spatial, keepdim=True)
        else:
            channel = grad.mean(spatial, keepdim=True)
        cam = (channel * activation).sum(1, keepdim=True)
        cam = F.interpolate(cam, size=layout.patch, mode="trilinear", align_corners=False)[0, 0]
        total[box] += cam * gaussian
    return (total / norm)[layout.inside], calls, float(balance[0] / balance[1].clamp_min(1e-300))


# ------------------------------------------------------------------------------------------- the peer
def peer_cam(folder: Path, fold: str, x: torch.Tensor, layer: str, cls: int, method: str) -> tuple[Any, int]:
    """nnunetv2-cam's sliding-window CAM of the preprocessed `x` (its own predictor, fold `fold`); returns the
    map and the network calls (a no-grad prediction and a CAM pass per tile). Written against its 0.1.6.1
    source; it could not be imported where this benchmark was written (see the notes of its table)."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2_cam.cam_core import compute_cam_with_sliding_window

    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False,
                                perform_everything_on_device=False, device=torch.device("cpu"), verbose=False,
                                allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(folder), use_folds=(int(fold) if fold.isdigit() else fold,))
    calls = []
    handle = predictor.network.register_forward_hook(lambda *_: calls.append(1))
    try:  # cam_type "2d" lays the tiles over the padded case ("3d" fails on cases smaller than the patch)
        cam = compute_cam_with_sliding_window(
            model=predictor.network, data=x.cpu(), target_layer_name=layer, target_class=cls, method=method,
            device=torch.device("cpu"), configuration_manager=predictor.configuration_manager,
            label_manager=predictor.label_manager, list_of_parameters=predictor.list_of_parameters,
            tile_step_size=0.5, use_mirroring=False, allowed_mirroring_axes=predictor.allowed_mirroring_axes,
            cam_type="2d")
    finally:
        handle.remove()
    return cam[0].float(), len(calls)


def peer_status(peer_path: str | None) -> str | None:
    """None when nnunetv2-cam's CAM code imports (from `peer_path` if given), else which import fails and why:
    torchvision (pytorch-grad-cam imports it at import time), pytorch-grad-cam, then nnunetv2-cam. Each import
    is tried in a fresh interpreter, so a half-loaded torchvision cannot affect this process."""
    from importlib.metadata import PackageNotFoundError, version

    if peer_path:
        sys.path.append(peer_path)
    for module, package in (("torchvision", "torchvision"), ("pytorch_grad_cam", "grad-cam"),
                            ("nnunetv2_cam.cam_core", "nnunetv2-cam")):
        probe = f"import sys; sys.path.append({peer_path!r}) if {bool(peer_path)} else None; import {module}"
        done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            try:
                installed = f"{package} {version(package)} is installed but "
            except PackageNotFoundError:
                installed = ""
            error = (done.stderr.strip().splitlines() or ["(no message)"])[-1]
            return f"nnunetv2-cam not run: its CAM code needs `import {module}`, and {installed}that fails here: {error}."
    return None


# ------------------------------------------------------------------------------------------- comparisons
def unit_scaled(cam: torch.Tensor) -> torch.Tensor:
    """pytorch-grad-cam's display scaling: ReLU, then min-max to [0, 1]."""
    cam = cam.float().clamp_min(0)
    return (cam - cam.min()) / (cam.max() - cam.min()).clamp_min(1e-12)


def agreement(ours: torch.Tensor, reference: torch.Tensor, where: torch.Tensor | None = None) -> dict[str, float]:
    """Pearson correlation and max |ours - reference| / max |reference| (over `where`, default everywhere)."""
    a, b = ours.detach().double().flatten(), reference.detach().double().flatten()
    if where is not None:
        a, b = a[where.flatten()], b[where.flatten()]
    scale = float(b.abs().max())
    pearson = float(torch.corrcoef(torch.stack([a, b]))[0, 1]) if a.std() > 0 and b.std() > 0 else float("nan")
    return {"pearson": round(pearson, 6), "max_rel_diff": float((a - b).abs().max()) / scale if scale else 0.0}


class Unfocused(Target):
    """`target` with no declared support, so a tiling inferer runs every tile (the no-skipping baseline)."""

    def __init__(self, target: Target) -> None:
        self.target = target

    def bind(self, reference):
        return Unfocused(self.target.bind(reference))

    def __call__(self, output):
        return self.target(output)

    def describe(self) -> dict[str, Any]:
        return self.target.describe()


def skip_agreement(focused: torch.Tensor, everything: torch.Tensor, reach: torch.Tensor) -> dict[str, Any]:
    """The focused map against the all-tiles one inside the target's reach, and the largest |value| either has
    outside it (0 when skipping loses nothing there)."""
    inside = agreement(focused, everything, reach.expand_as(everything))
    outside = ~reach.expand_as(everything)
    beyond = max(float(everything[outside].abs().max()), float(focused[outside].abs().max())) if outside.any() else 0.0
    return {"pearson_in_reach": inside["pearson"], "max_rel_diff_in_reach": inside["max_rel_diff"],
            "max_abs_outside_reach": beyond, "reach_voxels": int(reach.sum())}


def largest_component(mask: torch.Tensor) -> torch.Tensor:
    from scipy.ndimage import label

    labels, count = label(mask.numpy())
    if count == 0:
        raise SystemExit("the model predicts no voxel of the class on this case; choose another --cls")
    sizes = np.bincount(labels.ravel())[1:]
    return torch.from_numpy(labels == 1 + int(np.argmax(sizes)))


def nearest_voxel(mask: torch.Tensor) -> tuple[int, ...]:
    points = np.argwhere(mask.numpy())
    return tuple(int(v) for v in points[np.argmin(((points - points.mean(0)) ** 2).sum(1))])


# ------------------------------------------------------------------------------------------- one case
def cam_comparison(model, x: torch.Tensor, layout: TileLayout, region: torch.Tensor, layer: str,
                   args: argparse.Namespace, peer_note: str | None) -> list[dict[str, Any]]:
    """Grad-CAM and Grad-CAM++ of the predicted class region at `layer`: segxai, the reference loop and, where
    it imports, nnunetv2-cam; one row each."""
    tiles, rows = model.inferer, []
    for key, method in METHODS.items():
        before = tiles.tiles_run
        explainer, plus = method(model, layer=layer), key == "gradcampp"
        explanation, cost = measured(model, partial(explainer.explain, x, ClassRegion(args.cls, "prediction"),
                                                    progress=False))
        ours = explanation.attribution[0]
        rows.append({"method": key, "layer": layer, "tool": "segxai", "tiles_run": tiles.tiles_run - before,
                     **cost, "pearson": 1.0, "max_rel_diff": 0.0, "compared": "itself"})
        (theirs, calls, balance), cost = measured(model, partial(reference_cam, model.net, x, layer, args.cls,
                                                                 region, layout, plus))
        exact, _, _ = reference_cam(copy.deepcopy(model.net).double(), x.double(), layer, args.cls, region,
                                    layout, plus)
        rows.append({"method": key, "layer": layer, "tool": "reference per-tile loop", "tiles_run": calls, **cost,
                     **agreement(theirs, ours), "compared": "raw maps", "gradient_balance": balance,
                     "float32_vs_float64": agreement(theirs, exact.float())["max_rel_diff"]})
        if peer_note is None:
            (peer, calls), cost = measured(model, partial(peer_cam, Path(args.model), args.fold, x, layer,
                                                          args.cls, PEER_METHOD[key]))
            rows.append({"method": key, "layer": layer, "tool": "nnunetv2-cam", "tiles_run": calls, **cost,
                         **agreement(unit_scaled(peer), unit_scaled(ours)), "compared": "ReLU + [0, 1] scaled"})
    return rows


def tile_skipping(model, x: torch.Tensor, layout: TileLayout, region: torch.Tensor, layer: str,
                  cls: int) -> list[dict[str, Any]]:
    """Saliency and Grad-CAM of a voxel and of the largest predicted structure, focused and on every tile."""
    spatial, tiles = tuple(x.shape[1:]), model.inferer
    structure = largest_component(region)
    targets = {"voxel": Voxel(cls, nearest_voxel(structure)), "structure": ClassRegion(cls, structure)}
    rows = []
    for target_name, target in targets.items():
        support = target.support(spatial)
        reach = layout.reach(support)
        for method_name, method in (("saliency", Saliency(model)), ("gradcam", GradCAM(model, layer=layer))):
            maps = {}
            for path, bound in (("focused", target), ("all tiles", Unfocused(target))):
                before = tiles.tiles_run
                explanation, cost = measured(model, partial(method.explain, x, bound, progress=False))
                maps[path] = explanation.attribution
                rows.append({"target": target_name, "target_voxels": int(support.sum()), "method": method_name,
                             "path": path, "tiles_run": tiles.tiles_run - before, **cost})
            rows[-2].update(skip_agreement(maps["focused"], maps["all tiles"], reach))
    return rows


def run_case(name: str, files: list[str], loaded, args: argparse.Namespace,
             peer_note: str | None) -> tuple[list, list]:
    """Both comparisons on one case; rows carry the case, its model grid and its number of tiles."""
    from segxai.models.case import load_case

    case = load_case(files, model=loaded)
    model, x = loaded.model, case.inputs
    layout = TileLayout(tuple(x.shape[1:]), model.inferer.patch_size, model.inferer.step)
    region = case.model_prediction == args.cls
    # warm up with one untimed backward pass through every tile, so the first measured call does not pay for
    # the allocator's growth and the kernels' first use on these shapes
    Saliency(model).explain(x, ClassRegion(args.cls, "prediction"), progress=False)
    common = {"case": name, "model_grid": "x".join(map(str, x.shape[1:])), "all_tiles": len(layout.boxes)}
    cam_rows = [row for layer in args.layers for row in cam_comparison(model, x, layout, region, layer, args,
                                                                       peer_note)]
    skip_rows = tile_skipping(model, x, layout, region, args.layers[0], args.cls)
    return [{**common, **row} for row in cam_rows], [{**common, **row} for row in skip_rows]


# ------------------------------------------------------------------------------------------- main
def run(args: argparse.Namespace) -> str:
    """Every comparison on the test case (and the whole volume); writes the CSVs and the markdown, returns it."""
    import segxai as sx

    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="segxai-nnunet-cam-") as scratch:
        scratch = Path(scratch)
        if args.model is None:
            built = build_folder(scratch / "nnunet")
            args.model = str(built / "model")
            args.images = [str(p) for p in sorted((built / "imagesTs").glob("*.nii.gz"))]
        if not args.images:
            raise SystemExit("--images is needed with --model")
        peer_note = peer_status(args.peer_path)
        loaded = sx.models.load(args.model, folds=[args.fold])
        cases = [("test case", args.images)]
        if args.large_shape:  # at the plans' spacing, in the image files' axis order
            spacing = tuple(reversed(loaded.reader.configuration.spacing))
            cases.append((f"whole volume {'x'.join(map(str, args.large_shape))}",
                          write_large_case(scratch / "large", tuple(args.large_shape), spacing)))
        cam_rows, skip_rows = [], []
        for name, files in cases:
            found = run_case(name, files, loaded, args, peer_note)
            cam_rows += found[0]
            skip_rows += found[1]
    args.out.mkdir(parents=True, exist_ok=True)
    write_csv(cam_rows, args.out / "nnunet_cam.csv")
    write_csv(skip_rows, args.out / "nnunet_tile_skipping.csv")
    header = (f"{date.today()}, {cpu_name()}, {torch.get_num_threads()} torch thread(s) (OMP_NUM_THREADS="
              f"{os.environ.get('OMP_NUM_THREADS', 'unset')}), torch {torch.__version__}; model "
              f"{'built by tests/frameworks/nnunet_folder.py' if args.built else args.model}, fold {args.fold}, "
              f"layers {', '.join(args.layers)}, class {args.cls}; total {time.perf_counter() - start:.0f} s.")
    notes = [*([peer_note] if peer_note else []),
             ("What nnunetv2-cam 0.1.6.1 computes (its `cam_core.compute_cam_with_sliding_window` and pytorch-grad-cam's "
             "`BaseCAM`): per tile, the tile's own logits summed over the tile's own predicted class mask (not the "
             "blended prediction), pytorch-grad-cam's ReLU and min-max scaling of each tile's CAM to [0, 1] (tiles "
             "lose their relative scale), cubic-spline upsampling, uniform (not Gaussian) averaging of the tiles, a "
             "per-fold map averaged over folds, in float16; so it cannot equal the CAM of the blended prediction "
             "even after the same final scaling."),
             ("`max_rel_diff` no larger than `float32_vs_float64` is agreement up to rounding; `gradient_balance` "
             "near 0 (here at a convolution, which nnU-Net follows by instance norm) means Grad-CAM's channel "
             "weights cancel and both maps are rounding noise.")]
    text = "\n\n".join([
        "# Grad-CAM through nnU-Net's sliding window: segxai vs a per-tile loop and nnunetv2-cam; tile skipping",
        header,
        "## Grad-CAM / Grad-CAM++ agreement and cost (model grid; vs the segxai map)",
        markdown(cam_rows, ("case", "model_grid", "method", "layer", "tool", "tiles_run", "seconds", "peak_mb",
                            "pearson", "max_rel_diff", "compared", "gradient_balance", "float32_vs_float64")),
        *notes,
        "## Tile skipping: focused vs all tiles (maps compared inside the target's reach)",
        markdown(skip_rows, ("case", "model_grid", "target", "target_voxels", "method", "path", "tiles_run", "all_tiles",
                             "seconds", "peak_mb", "reach_voxels", "pearson_in_reach", "max_rel_diff_in_reach",
                             "max_abs_outside_reach")),
    ]) + "\n"
    (args.out / "nnunet_cam.md").write_text(text)
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--model", default=None, help="an nnU-Net v2 trained-model folder (default: build one)")
    parser.add_argument("--images", nargs="*", default=None, help="the case's channel files, _0000 first")
    parser.add_argument("--fold", default="0", help="the fold explained (default 0)")
    parser.add_argument("--layers", nargs="+", default=["decoder.stages.0", "decoder.stages.0.convs.1.conv"],
                        help="Grad-CAM layers (the first is also used for tile skipping)")
    parser.add_argument("--cls", type=int, default=1, help="the class explained (default 1)")
    parser.add_argument("--large-shape", type=lambda s: [int(v) for v in s.split(",")] if s != "0" else [],
                        default=[96, 80, 64], help="the synthetic whole volume's shape, or 0 for none")
    parser.add_argument("--peer-path", default=None, help="a folder holding nnunetv2_cam and its dependencies")
    args = parser.parse_args(argv)
    args.built = args.model is None
    print(run(args), flush=True)


if __name__ == "__main__":
    main()
