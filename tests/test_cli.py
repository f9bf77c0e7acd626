"""The command line on real files: train, explain with geometry kept, and one clear line for every bad input."""
from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from segxai.cli import main
from segxai.data import abdomen_phantom, brain_phantom
from segxai.io import Image, save_array


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A trained 2D abdomen model and 2D brain model, and scans written as NIfTI with a non-trivial affine."""
    root = tmp_path_factory.mktemp("cli")
    assert main(["train", "--phantom", "abdomen", "--shape", "64,64", "--steps", "40", "--out", str(root / "abdomen.pt"), "--no-progress"]) == 0
    assert main(["train", "--phantom", "brain", "--shape", "64,64", "--steps", "60", "--out", str(root / "brain.pt"), "--no-progress"]) == 0
    affine = np.array([[1.5, 0, 0, -40], [0, 1.5, 0, 12], [0, 0, 3.0, 5], [0, 0, 0, 1]])
    scans = root / "scans"
    scans.mkdir()
    ct = abdomen_phantom((64, 64), seed=999)
    save_array(ct.image[0], scans / "ct.nii.gz", like=Image(ct.image, affine, "nifti"))
    save_array(ct.labels, scans / "labels.nii.gz", like=Image(ct.image, affine, "nifti"))
    brain = brain_phantom((64, 64), n_lesions=4, seed=999)
    for channel, name in zip(brain.image, ("flair", "t1")):
        save_array(channel, scans / f"{name}.nii.gz", like=Image(brain.image, affine, "nifti"))
    save_array(brain.labels.astype(np.uint8), scans / "lesions.nii.gz", like=Image(brain.image, affine, "nifti"))
    return root, affine


def run(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_explain_an_organ_keeps_the_scan_geometry(workspace, capsys, tmp_path):
    root, affine = workspace
    code, out, err = run(capsys, "explain", "--model", root / "abdomen.pt", "--image", root / "scans/ct.nii.gz",
                         "--target", "class:1", "--out", tmp_path / "liver", "--no-progress")
    assert code == 0, err
    assert "1 forward / 1 backward" in out
    written = tmp_path / "liver"
    for name in ("attribution_ct.nii.gz", "prediction.nii.gz"):
        np.testing.assert_allclose(nib.load(written / name).affine, affine)
    attribution = np.asarray(nib.load(written / "attribution_ct.nii.gz").dataobj)
    assert attribution.shape == (64, 64) and np.abs(attribution).sum() > 0
    stats = json.loads((written / "attribution_stats.json").read_text())
    assert stats["forward_passes"] == 1 and stats["target"]["cls"] == 1
    html = (written / "report.html").read_text()
    assert "attribution_overlay.png" in html and "segxai explain" in html


def test_explain_one_lesion_of_a_two_modality_scan_inside_an_roi(workspace, capsys, tmp_path):
    root, _ = workspace
    code, out, err = run(capsys, "explain", "--model", root / "brain.pt", "--image", root / "scans/flair.nii.gz",
                         root / "scans/t1.nii.gz", "--target", "instance:1:1", "--roi", "prediction:1+6",
                         "--out", tmp_path / "lesion", "--no-progress")
    assert code == 0, err
    flair = np.asarray(nib.load(tmp_path / "lesion/attribution_flair.nii.gz").dataobj)
    t1 = np.asarray(nib.load(tmp_path / "lesion/attribution_t1.nii.gz").dataobj)
    assert np.abs(flair).sum() > 0 and np.abs(t1).sum() > 0
    stats = json.loads((tmp_path / "lesion/attribution_stats.json").read_text())
    assert set(stats["modality_share"]) == {"flair", "t1"}
    assert sum(stats["modality_share"].values()) == pytest.approx(1.0)


def test_explain_every_lesion_writes_maps_table_and_plots(workspace, capsys, tmp_path):
    root, affine = workspace
    code, out, err = run(capsys, "explain", "--model", root / "brain.pt", "--image", root / "scans/flair.nii.gz",
                         root / "scans/t1.nii.gz", "--target", "instances:1", "--method", "smoothgrad",
                         "--param", "n_samples=4", "--reference", root / "scans/lesions.nii.gz",
                         "--out", tmp_path / "lesions", "--no-progress")
    assert code == 0, err
    import csv

    rows = list(csv.DictReader((tmp_path / "lesions/instances.csv").open()))
    assert rows and {r["type"] for r in rows} <= {"TP", "FP", "FN"}
    assert f"{len(rows)} instance(s)" in out and "4 forward" in out  # 4 noise draws shared by every lesion
    for row in rows:
        assert float(row["share_flair"]) + float(row["share_t1"]) == pytest.approx(1.0)
        for name in ("flair", "t1"):
            saved = nib.load(tmp_path / f"lesions/instances/instance{int(row['id']):03d}_{name}.nii.gz")
            np.testing.assert_allclose(saved.affine, affine)
    labels = np.asarray(nib.load(tmp_path / "lesions/instances.nii.gz").dataobj)
    assert sorted(np.unique(labels[labels > 0]).tolist()) == sorted(int(r["id"]) for r in rows)
    html = (tmp_path / "lesions/report.html").read_text()
    for figure in ("radial_profile.png", "modality_share.png", "peak_by_type.png", "instances/instance001_overlay.png"):
        assert figure in html and (tmp_path / "lesions" / figure).is_file()


def test_explain_every_lesion_with_grad_cam_plus_plus(workspace, capsys, tmp_path):
    root, _ = workspace
    code, out, err = run(capsys, "explain", "--model", root / "brain.pt", "--image", root / "scans/flair.nii.gz",
                         root / "scans/t1.nii.gz", "--target", "instances:1", "--method", "gradcampp",
                         "--out", tmp_path / "cam", "--no-progress")
    assert code == 0, err
    rows = list(__import__("csv").DictReader((tmp_path / "cam/instances.csv").open()))
    assert rows and all(r["type"] == "predicted" for r in rows)
    code, _, err = run(capsys, "explain", "--model", root / "brain.pt", "--image", root / "scans/flair.nii.gz",
                       root / "scans/t1.nii.gz", "--target", "instances:1", "--method", "gradcampp",
                       "--param", "layer='no.such.layer'", "--out", tmp_path / "cam2", "--no-progress")
    assert code == 2 and "no.such.layer" in err and "Traceback" not in err


@pytest.fixture(scope="module")
def other_scans(workspace):
    """Two more CT phantoms: the treatment pool and the donors of the causal commands."""
    root, affine = workspace
    folder = root / "others"
    folder.mkdir(exist_ok=True)
    for seed in (1, 2):
        ct = abdomen_phantom((64, 64), seed=seed)
        save_array(ct.image[0], folder / f"ct{seed}.nii.gz", like=Image(ct.image, affine, "nifti"))
    return folder


def test_causal_blocks_on_a_region_with_a_patch_pool(workspace, other_scans, capsys, tmp_path):
    root, affine = workspace
    code, out, err = run(capsys, "causal", "--model", root / "abdomen.pt", "--image", root / "scans/ct.nii.gz",
                         "--region", "box:24,24,16", "--cls", "1", "--pool", other_scans, "--param", "draws=6",
                         "--out", tmp_path / "causal", "--no-progress")
    assert code == 0, err
    ate = nib.load(tmp_path / "causal/ate_all.nii.gz")
    np.testing.assert_allclose(ate.affine, affine)
    values = np.asarray(ate.dataobj)
    assert values[24:40, 24:40].sum() == 0  # blocks in the region are never treated
    import csv

    blocks = list(csv.DictReader((tmp_path / "causal/blocks.csv").open()))
    assert blocks and all(int(b["draws"]) in (0, 3, 6) for b in blocks)
    html = (tmp_path / "causal/report.html").read_text()
    assert "causal_overlay.png" in html and "causal_pie.png" in html
    histogram = html[html.index("Histogram of block ATEs"):]
    assert "&lt; -" in histogram and "&gt;= " in histogram  # the bins are labelled (rows, not an empty table)
    code, _, err = run(capsys, "causal", "--model", root / "abdomen.pt", "--image", root / "scans/ct.nii.gz",
                       "--region", "box:24,24", "--out", tmp_path / "bad", "--no-progress")
    assert code == 2 and "box:CORNER,SIDE" in err


def test_causal_components_rank_layers_by_resample_ablation(workspace, other_scans, capsys, tmp_path):
    root, _ = workspace
    from segxai.models.checkpoint import load_checkpoint
    from segxai.methods.cam import conv_layers

    layers = conv_layers(load_checkpoint(root / "abdomen.pt")[0].net)[:2]
    code, out, err = run(capsys, "causal", "components", "--model", root / "abdomen.pt", "--image",
                         root / "scans/ct.nii.gz", "--region", "box:16,16,32", "--layers", ",".join(layers),
                         "--donors", other_scans, "--param", "draws=2", "--out", tmp_path / "comp", "--no-progress")
    assert code == 0, err
    import csv

    rows = list(csv.DictReader((tmp_path / "comp/components.csv").open()))
    assert sorted(r["layer"] for r in rows) == sorted(layers)
    assert "report.html" in out
    code, _, err = run(capsys, "causal", "components", "--model", root / "abdomen.pt", "--image",
                       root / "scans/ct.nii.gz", "--region", "box:16,16,32", "--layers", "nope",
                       "--out", tmp_path / "comp2", "--no-progress")
    assert code == 2 and "nope" in err


def test_explain_with_roi_guided_occlusion_and_method_settings(workspace, capsys, tmp_path):
    root, affine = workspace
    code, out, err = run(capsys, "explain", "--model", root / "abdomen.pt", "--image", root / "scans/ct.nii.gz",
                         "--target", "class:1", "--method", "occlusion", "--param", "window=8", "--param", "stride=8",
                         "--roi", "prediction:1+4", "--out", tmp_path / "occ", "--no-progress")
    assert code == 0, err
    attribution = nib.load(tmp_path / "occ/attribution_ct.nii.gz")  # one channel: all channels perturbed together
    np.testing.assert_allclose(attribution.affine, affine)
    stats = json.loads((tmp_path / "occ/attribution_stats.json").read_text())
    assert stats["params"]["window"] == 8 and 0 < stats["regions"] < 64


def test_evaluate_compares_unrestricted_and_roi_guided_runs(workspace, capsys, tmp_path):
    root, _ = workspace
    code, out, err = run(capsys, "evaluate", "--model", root / "abdomen.pt", "--image", root / "scans/ct.nii.gz",
                         "--mask", root / "scans/labels.nii.gz", "--label", "4", "--methods", "occlusion,rise,lime",
                         "--param", "occlusion.window=8", "--param", "occlusion.stride=8", "--param", "rise.n_masks=40",
                         "--param", "lime.n_samples=30", "--param", "lime.n_segments=40", "--out", tmp_path / "eval",
                         "--no-progress")
    assert code == 0, err
    assert "unrestricted" in out and "roi" in out and "baseline" in out
    import csv

    rows = list(csv.DictReader((tmp_path / "eval/comparison.csv").open()))
    assert [(r["method"], r["variant"]) for r in rows] == [
        (m, v) for m in ("occlusion", "rise", "lime") for v in ("unrestricted", "roi")]
    passes = {(r["method"], r["variant"]): int(r["forward_passes"]) for r in rows}
    assert passes["occlusion", "roi"] < passes["occlusion", "unrestricted"]  # only windows touching the ROI
    for method in ("rise", "lime"):  # same sample budget; at most the two receptive-field probe passes more
        assert passes[method, "roi"] <= passes[method, "unrestricted"] + 2


@pytest.fixture
def bad_files(workspace, tmp_path):
    root, _ = workspace
    (tmp_path / "broken.nii.gz").write_bytes((root / "scans/ct.nii.gz").read_bytes()[:200])
    nan = np.zeros((64, 64), np.float32)
    nan[3, 3] = np.nan
    nib.save(nib.Nifti1Image(nan, np.eye(4)), tmp_path / "nan.nii.gz")
    nib.save(nib.Nifti1Image(np.ones((32, 32), np.uint8), np.eye(4)), tmp_path / "small_mask.nii.gz")
    import torch

    torch.save({"weight": torch.zeros(2)}, tmp_path / "state_dict.pt")
    return tmp_path


@pytest.mark.parametrize(
    "change, message",
    [
        ({"--image": "broken.nii.gz"}, "cannot read"),
        ({"--image": "missing.nii.gz"}, "no such file"),
        ({"--image": "nan.nii.gz"}, "NaN"),
        ({"--model": "state_dict.pt"}, "not a segxai checkpoint"),
        ({"--method": "lime-ish"}, "unknown method"),
        ({"--method": "occlusion", "--param": "windw=8"}, "bad setting for occlusion"),
        ({"--param": "8"}, "NAME=VALUE"),
        ({"--target": "class:9"}, "out of range"),
        ({"--target": "instance:1:99"}, "does not exist"),
        ({"--target": "organ:liver"}, "unknown target"),
        ({"--roi": "mask:small_mask.nii.gz"}, "shape"),
        ({"--roi": "box:0,0:0,4"}, "positive"),
        ({"--roi": "circle:3"}, "unknown ROI"),
        ({"--roi": "prediction:1:4"}, "margins are written +M, e.g. prediction:1+4"),  # the old CLI form
        ({"--roi": "reference+2"}, "needs the case's reference mask (--reference"),
        ({"--target": "instances:1", "--roi": "prediction+2"}, "--roi does not apply to --target instances:CLS"),
        ({"--image": ["scans/ct.nii.gz", "scans/ct.nii.gz"]}, "channel"),
        ({"--out": "scans"}, "contains input"),
    ],
)
def test_bad_input_is_one_clear_line(workspace, bad_files, capsys, change, message):
    root, _ = workspace
    args = {"--model": root / "abdomen.pt", "--image": root / "scans/ct.nii.gz", "--target": "class:1",
            "--out": bad_files / "out", "--method": "saliency"}
    for key, value in change.items():
        base = root if key == "--out" or "scans/" in str(value) else bad_files
        if key in ("--model", "--image", "--out") or (key == "--roi" and value.startswith("mask:")):
            if key == "--roi":
                value = f"mask:{bad_files / value[5:]}"
            elif isinstance(value, list):
                value = [root / v for v in value]
            else:
                value = base / value
        args[key] = value
    argv = ["explain", "--no-progress"]
    for key, value in args.items():
        argv += [key, *(value if isinstance(value, list) else [value])]
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert err.startswith("segxai: error:") and message in err and "Traceback" not in err
    assert not (root / "scans" / "attribution_stats.json").exists()


def test_explain_inside_the_reference_mask_and_a_corner_side_box(workspace, capsys, tmp_path):
    """`reference[:CLS][+M]` is the --reference file's class CLS (default: the target's) grown, `box:CORNER,SIDE`
    a square: the occlusion windows perturbed lie within them, so the map is zero elsewhere."""
    from scipy import ndimage

    from segxai.io import load_mask

    root, _ = workspace
    box = np.zeros((64, 64), bool)
    box[8:32, 8:32] = True
    square = np.ones((3, 3), bool)  # Chebyshev steps: a window touching the ROI reaches 7 voxels beyond it
    liver = load_mask(root / "scans/labels.nii.gz") == 1
    for roi, allowed in (("reference+2", ndimage.binary_dilation(liver, square, iterations=2 + 7)),
                         ("box:8,8,24", ndimage.binary_dilation(box, square, iterations=7))):
        code, _, err = run(capsys, "explain", "--model", root / "abdomen.pt", "--image", root / "scans/ct.nii.gz",
                           "--reference", root / "scans/labels.nii.gz", "--target", "class:1", "--method",
                           "occlusion", "--param", "window=8", "--param", "stride=8", "--roi", roi,
                           "--out", tmp_path / roi.replace(":", "_"), "--no-progress")
        assert code == 0, err
        attribution = np.asarray(nib.load(tmp_path / roi.replace(":", "_") / "attribution_ct.nii.gz").dataobj)
        assert np.abs(attribution).sum() > 0 and np.abs(attribution[~allowed]).max() == 0


def test_train_from_files_needs_labels_and_names(capsys, workspace):
    root, _ = workspace
    code, _, err = run(capsys, "train", "--images", root / "scans/ct.nii.gz", "--out", root / "x.pt")
    assert code == 2 and "--labels" in err
