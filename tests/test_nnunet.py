"""nnU-Net v2 model folders, built with nnU-Net's own fingerprinting and planning on data made here
(tests/frameworks/nnunet_folder.py), explained as nnU-Net predicts: predictions against nnUNetPredictor's own
files, maps on the input's grid, exact tile skipping, safe checkpoint loading and clear errors."""
from __future__ import annotations

import importlib.util
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from conftest import build_once
from segxai.cli import main
from segxai.errors import SegxaiError
from segxai.models.tiling import GaussianTiles, gaussian_weights, tile_starts

HAVE_NNUNET = importlib.util.find_spec("nnunetv2") is not None
needs_nnunet = pytest.mark.skipif(not HAVE_NNUNET, reason="needs the nnunet extra (pip install 'segxai[nnunet]')")
BUILDER = Path(__file__).parent / "frameworks" / "nnunet_folder.py"


def _build(out: Path) -> Path:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(BUILDER), str(out)], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def folder(run_cache) -> Path:
    """The built folder: model/, imagesTs/ (one two-channel case), nnunet/ (nnUNetPredictor's predictions)."""
    if not HAVE_NNUNET:
        pytest.skip("needs the nnunet extra")
    return build_once(run_cache, "nnunet-folder", lambda: _build(run_cache / "nnunet-folder"),
                      lambda path, value: None, lambda path: path)


def images(folder: Path) -> list[str]:
    return [str(folder / "imagesTs" / f"tiny_100_{c:04d}.nii.gz") for c in range(2)]


def voxels(path: Path) -> np.ndarray:
    return np.asarray(nib.load(path).dataobj)


# ------------------------------------------------------------------------------------ tiling (no nnU-Net needed)
@pytest.mark.parametrize("size,patch,step", [(64, 64, 0.5), (110, 64, 0.5), (37, 16, 0.5), (100, 24, 0.3), (20, 32, 0.5)])
def test_tile_starts_cover_evenly(size, patch, step):
    starts = tile_starts(size, patch, step)
    assert starts[0] == 0 and starts[-1] == max(0, size - patch)
    assert all(b - a <= patch * step + 1 for a, b in zip(starts, starts[1:]))


@needs_nnunet
@pytest.mark.parametrize("size,patch,step", [(110, 64, 0.5), (37, 16, 0.5), (100, 24, 0.3), (16, 16, 0.5)])
def test_tiles_and_weights_equal_nnunets(size, patch, step):
    from nnunetv2.inference.sliding_window_prediction import compute_gaussian, compute_steps_for_sliding_window

    assert tile_starts(size, patch, step) == compute_steps_for_sliding_window((size,), (patch,), step)[0]
    theirs = compute_gaussian((patch, 12), value_scaling_factor=10, dtype=torch.float32, device=torch.device("cpu"))
    np.testing.assert_allclose(gaussian_weights((patch, 12)), theirs.numpy(), rtol=1e-6)


def _conv_net(dims: int = 3) -> torch.nn.Module:
    torch.manual_seed(0)
    conv = torch.nn.Conv3d if dims == 3 else torch.nn.Conv2d
    return torch.nn.Sequential(conv(1, 4, 3, padding=1), torch.nn.Tanh(), conv(4, 2, 3, padding=1))


def test_tile_skipping_is_exact_and_runs_fewer_tiles():
    """The gradient of one voxel's logit with only the tiles covering it equals the one with every tile."""
    from segxai import SegModel, Saliency
    from segxai.targets import Voxel

    tiles = GaussianTiles((8, 8, 8))
    model = SegModel(_conv_net(), inferer=tiles)
    x = torch.randn(1, 14, 12, 16, generator=torch.Generator().manual_seed(1))
    target = Voxel(1, (3, 4, 5))
    focused = Saliency(model).explain(x, target).attribution
    run_focused = tiles.tiles_run
    with torch.enable_grad():
        x_all = x[None].clone().requires_grad_(True)
        model(x_all).logits[0, 1, 3, 4, 5].backward()
    assert tiles.tiles_run - run_focused == len(tiles.boxes((14, 12, 16))) > run_focused
    torch.testing.assert_close(focused, x_all.grad[0], rtol=1e-5, atol=1e-7)


def test_tiles_pad_a_small_image_and_crop_back():
    net = _conv_net(2)
    x = torch.randn(1, 1, 5, 7)
    blended = GaussianTiles((8, 8))(x, net)
    # one tile, zero-padded symmetrically: the blend is the network on the padded image, cropped
    padded = torch.nn.functional.pad(x, (0, 1, 1, 2))
    torch.testing.assert_close(blended, net(padded)[..., 1:6, 0:7], rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------ nnU-Net folders
@needs_nnunet
@pytest.mark.parametrize("folds,mirror,reference", [([0, 1], False, "both_folds"), ([0], True, "fold0_mirror")])
def test_prediction_equals_nnunet_predictor(folder, folds, mirror, reference):
    """The case's spacing (1.4, 0.9, 1.2) differs from the plans' (1, 1, 1): resampling both ways is exercised."""
    import segxai as sx
    from segxai.models.case import load_case

    case = load_case(images(folder), model=sx.models.load(folder / "model", folds=folds, mirror=mirror))
    ours, theirs = case.prediction.numpy(), voxels(folder / "nnunet" / f"{reference}.nii.gz")
    assert ours.shape == theirs.shape == (30, 22, 18)
    assert (ours == theirs).mean() >= 0.995
    assert {1, 2} <= set(np.unique(theirs))  # a real prediction, not all background


@needs_nnunet
def test_voxel_saliency_peaks_at_the_voxel_in_world_coordinates(folder, tmp_path):
    """Explained on nnU-Net's transposed, cropped, resampled grid, the map comes back on the file's grid and
    affine with its peak at the target voxel (a transpose or crop-offset slip moves it by many voxels)."""
    import segxai as sx
    from segxai.models.case import load_case
    from segxai.pipelines.explain import explain_case

    model = sx.models.load(folder / "model", folds=[0])
    case = load_case(images(folder), model=model)
    spacing = np.asarray(case.image.spacing)
    for position in [(15, 11, 9), (20, 15, 5), (10, 14, 8)]:
        result = explain_case(case, f"voxel:1:{','.join(map(str, position))}", tmp_path / str(position))
        written = nib.load(result.written["attribution_tiny_100_0000"])
        assert written.shape == (30, 22, 18)
        np.testing.assert_allclose(written.affine, nib.load(images(folder)[0]).affine)
        magnitude = sum(np.abs(np.asarray(nib.load(result.written[f"attribution_tiny_100_{c:04d}"]).dataobj))
                        for c in range(2))
        strong = np.where(magnitude >= 0.5 * magnitude.max(), magnitude, 0)
        centre = (np.indices(strong.shape).reshape(3, -1) * strong.ravel()).sum(1) / strong.sum()
        # the gradient's peak of a trained net sits within a voxel of its target: within 2.5 mm here, while the
        # transposed or uncropped position of any of these voxels lies over 5 mm away
        assert np.linalg.norm((centre - position) * spacing) <= 2.5, (centre, position)
        assert result.explanation.stats["framework"] == "nnU-Net v2"


@needs_nnunet
def test_mask_roi_and_reference_map_forwards(folder):
    """A reference on the image grid lands on the model grid where nnU-Net's own resampling puts the labels."""
    import segxai as sx
    from segxai.models.case import load_case
    from segxai.pipelines.grammar import parse_roi

    labels = folder / "labelsTs" / "tiny_100.nii.gz"
    case = load_case(images(folder), reference=labels, model=sx.models.load(folder / "model", folds=[0]))
    roi = parse_roi("reference:1").resolve(case)
    assert tuple(roi.shape) == case.grid.model_shape
    back = case.grid.labels_to_image(roi).numpy()
    truth = voxels(labels) == 1
    assert 2 * (back & truth).sum() / (back.sum() + truth.sum()) > 0.9


@needs_nnunet
def test_instances_and_perturbation_run_through_nnunet(folder, tmp_path):
    assert main(["explain", "--model", str(folder / "model"), "--image", *images(folder), "--folds", "0",
                 "--target", "instances:2", "--method", "saliency", "--out", str(tmp_path / "inst"),
                 "--no-progress"]) == 0
    assert voxels(tmp_path / "inst" / "instances.nii.gz").shape == (30, 22, 18)
    assert main(["explain", "--model", str(folder / "model"), "--image", *images(folder), "--folds", "0",
                 "--target", "class:2", "--method", "occlusion", "--roi", "prediction:2", "--param", "window=8",
                 "--param", "stride=8", "--out", str(tmp_path / "occ"), "--no-progress"]) == 0
    occlusion = voxels(next((tmp_path / "occ").glob("attribution_*.nii.gz")))
    assert occlusion.shape == (30, 22, 18) and np.abs(occlusion).max() > 0


@needs_nnunet
def test_segxai_run_on_an_nnunet_raw_dataset(folder, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(f"model: {{path: {folder / 'model'}, folds: [0]}}\n"
                      f"dataset: {{root: {folder}, layout: nnunet, images: imagesTs, masks: 'labelsTs/{{case}}.nii.gz'}}\n"
                      "methods: [saliency]\ntargets: ['class:1']\nrois: ['reference:1+2']\n"
                      "evaluation: {faithfulness: false, sanity: false, stability: false}\n"
                      f"out: {tmp_path / 'run'}\n")
    assert main(["run", str(config), "--no-progress"]) == 0
    manifest = (tmp_path / "run" / "manifest.jsonl").read_text()
    assert '"failed"' not in manifest and "tiny_100" in manifest
    written = voxels(tmp_path / "run" / "cases" / "tiny_100" / "prediction.nii.gz")
    assert (written == voxels(folder / "nnunet" / "fold0_mirror.nii.gz")).mean() > 0.9


# ------------------------------------------------------------------------------------ safety and errors
class _WritesAFile:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path):
    from segxai.models.nnunet import read_nnunet_checkpoint

    victim = tmp_path / "created_by_pickle"
    path = tmp_path / "fold_0" / "checkpoint_final.pth"
    path.parent.mkdir()
    with open(path, "wb") as handle:
        pickle.dump({"network_weights": {}, "logging": _WritesAFile(str(victim))}, handle)
    with pytest.raises(SegxaiError, match="cannot read an nnU-Net checkpoint"):
        read_nnunet_checkpoint(path)
    assert not victim.exists()
    torch.save({"network_weights": {}, "payload": _WritesAFile(str(victim))}, path)
    with pytest.raises(SegxaiError, match="cannot read an nnU-Net checkpoint"):
        read_nnunet_checkpoint(path)
    assert not victim.exists()


@needs_nnunet
def test_bad_folders_and_images_are_one_line_errors(folder, tmp_path, capsys):
    model = str(folder / "model")
    no_plans = tmp_path / "no_plans"
    no_plans.mkdir()
    (no_plans / "dataset.json").write_text("{}")
    cases = [
        (["--model", model, "--folds", "0,3"], "no checkpoint_final.pth for fold(s) ['3']"),
        (["--model", str(no_plans)], "neither an nnU-Net v2 model folder"),
        (["--model", model, "--checkpoint-name", "checkpoint_best.pth"], "folds with one: none"),
    ]
    for extra, message in cases:
        assert main(["explain", *extra, "--image", *images(folder), "--target", "class:1",
                     "--out", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("segxai: error:") == 1 and "Traceback" not in err
    swapped = list(reversed(images(folder)))
    for files, message in [(images(folder)[:1], "reads 2 channel(s)"), (swapped, "_0000 .. _0001, in that order")]:
        assert main(["explain", "--model", model, "--image", *files, "--target", "class:1",
                     "--out", str(tmp_path / "o")]) == 2
        assert message in capsys.readouterr().err


def test_grad_cam_per_tile_equals_a_plain_per_tile_loop():
    """Under Gaussian tiles each tile gets its own Grad-CAM, blended like the logits: the same as computing
    Grad-CAM tile by tile by hand and blending with the tiles' weights."""
    from segxai import GradCAM, SegModel
    from segxai.methods.cam import upsample
    from segxai.models.tiling import gaussian_weights
    from segxai.targets import ClassRegion

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.Tanh(), torch.nn.AvgPool3d(2),
                              torch.nn.Conv3d(4, 4, 3, padding=1), torch.nn.Tanh(), torch.nn.Upsample(scale_factor=2),
                              torch.nn.Conv3d(4, 2, 1))
    tiles = GaussianTiles((8, 8, 8))
    x = torch.randn(1, 12, 10, 14, generator=torch.Generator().manual_seed(2))
    ours = GradCAM(SegModel(net, inferer=tiles), layer="3").explain(x, ClassRegion(1)).attribution
    # the reference: each tile's own Grad-CAM of the blended target (d target / d that tile's layer output), with
    # every tile's graph held (ours recomputes each tile's in the backward pass: checkpointing)
    runs, plain = [], GaussianTiles((8, 8, 8), checkpoint=False)
    hook = net[3].register_forward_hook(lambda module, inputs, output: runs.append(output))
    with torch.enable_grad():
        grads = torch.autograd.grad(plain(x[None], net)[:, 1].sum(), runs)
    hook.remove()
    weights = torch.from_numpy(gaussian_weights((8, 8, 8)))
    total, norm = torch.zeros(1, 12, 10, 14), torch.zeros(12, 10, 14)
    for box, activation, grad in zip(tiles.boxes((12, 10, 14)), runs, grads):
        cam = (grad.mean((2, 3, 4), keepdim=True) * activation.detach()).sum(1, keepdim=True)
        total[(slice(None), *box)] += upsample(cam, (8, 8, 8))[0] * weights
        norm[box] += weights
    assert len(runs) == len(tiles.boxes((12, 10, 14))) > 1
    torch.testing.assert_close(ours, total / norm, rtol=1e-4, atol=1e-6)


@needs_nnunet
def test_grad_cam_on_a_named_nnunet_layer(folder, tmp_path, capsys):
    base = ["explain", "--model", str(folder / "model"), "--image", *images(folder), "--folds", "0",
            "--target", "class:1", "--method", "gradcam", "--no-progress"]
    assert main([*base, "--param", "layer='decoder.stages.1'", "--out", str(tmp_path / "cam")]) == 0
    cam = voxels(next((tmp_path / "cam").glob("attribution_*.nii.gz")))
    assert cam.shape == (30, 22, 18) and np.abs(cam).max() > 0
    stats = json.loads(next((tmp_path / "cam").glob("*stats.json")).read_text())
    balances = _balances(stats)
    assert balances and min(balances) > 1e-2
    assert main([*base, "--param", "layer='decoder.nope'", "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert "no layer 'decoder.nope'" in err and "decoder.stages.1.convs.1.conv" in err


@needs_nnunet
def test_grad_cam_at_a_convolution_feeding_instance_norm_warns_and_the_default_avoids_it(folder):
    """Instance norm removes each channel's spatial mean, so the gradient at its input averages to 0 and
    Grad-CAM's weights cancel: named, such a layer warns; by default, a layer not feeding a norm is taken."""
    import segxai as sx
    from segxai.models.case import load_case

    case = load_case(images(folder), model=sx.models.load(folder / "model", folds=[0]))
    target = sx.targets.ClassRegion(1)
    with pytest.warns(UserWarning, match="averages to ~0"):
        noisy = sx.GradCAM(case.segmenter, layer="decoder.stages.1.convs.1.conv").explain(case.inputs[None], target,
                                                                                          progress=False)
    assert noisy.items[0].gradient_balance < 1e-4
    default = sx.GradCAM(case.segmenter).explain(case.inputs[None], target, progress=False)
    assert not default.items[0].layer.endswith(".conv") and default.items[0].gradient_balance > 1e-2


def _balances(stats) -> list[float]:
    """Every `gradient_balance` value in a stats document."""
    if isinstance(stats, dict):
        return [v for k, v in stats.items() if k == "gradient_balance"] + [b for v in stats.values() for b in _balances(v)]
    return [b for v in stats for b in _balances(v)] if isinstance(stats, list) else []
