"""Orientation: models that read raw arrays see every volume turned to RAS+ (exact, no interpolation), and maps
are written back in the file's own orientation and affine, so a scan and its flipped, transposed copy with the
same world geometry give the same map in world space."""
from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from segxai.cli import main
from segxai.data import abdomen_phantom
from segxai.errors import SegxaiError
from segxai.grid import Reoriented, SameGrid, canonical_grid
from segxai.io import Image, save_array
from segxai.models.checkpoint import load_checkpoint, save_checkpoint

SHAPE = (32, 28, 24)
AFFINE = np.array([[0, -2.0, 0, 40], [-2.0, 0, 0, 30], [0, 0, 3.0, -30], [0, 0, 0, 1]])  # rows A->P, cols R->L


def turned(array: np.ndarray) -> np.ndarray:
    """The copy stored as (k, j, i) with i and k reversed."""
    return np.ascontiguousarray(np.transpose(array[::-1, :, ::-1], (2, 1, 0)))


def turned_affine(affine: np.ndarray, shape) -> np.ndarray:
    """The affine that gives `turned(array)` the same world geometry: copy voxel (x, y, z) is voxel
    (n0 - 1 - z, y, n2 - 1 - x) of the original."""
    to_original = np.array([[0, 0, -1, shape[0] - 1], [0, 1, 0, 0], [-1, 0, 0, shape[2] - 1], [0, 0, 0, 1.0]])
    return affine @ to_original


def test_reoriented_is_exact_both_ways_and_keeps_world_positions():
    rng = np.random.default_rng(0)
    grid = Reoriented.of(SHAPE, AFFINE)
    values = rng.normal(size=(2, *SHAPE))
    model = grid.values_to_model(values)
    assert model.shape == (2, *grid.model_shape) and np.array_equal(grid.values_to_image(model), values)
    tensor = torch.from_numpy(values)
    assert torch.equal(grid.values_to_image(grid.values_to_model(tensor)), tensor)
    assert nib.aff2axcodes(grid.model_affine(AFFINE)) == ("R", "A", "S")
    for index in [(0, 0, 0), (31, 27, 23), (5, 17, 9)]:
        turned_index = grid.index_to_model(index)
        assert model[(1, *turned_index)] == values[(1, *index)]
        world = AFFINE @ np.r_[index, 1.0]
        np.testing.assert_allclose(grid.model_affine(AFFINE) @ np.r_[turned_index, 1.0], world)
    with pytest.raises(SegxaiError, match="outside the image grid"):
        grid.index_to_model((32, 0, 0))


def test_only_volumes_with_patient_axes_are_turned():
    volume = np.zeros((1, *SHAPE), np.float32)
    assert isinstance(canonical_grid(Image(volume, np.diag([2.0, 2, 3, 1]), "nifti")), SameGrid)  # already RAS+
    assert isinstance(canonical_grid(Image(volume, np.diag([-2.0, -2, 3, 1]), "nifti")), Reoriented)  # LPS
    assert isinstance(canonical_grid(Image(volume)), SameGrid)  # no affine
    assert isinstance(canonical_grid(Image(np.zeros((1, 8, 8), np.float32), np.diag([-1.0, -1, 1, 1]), "nifti")),
                      SameGrid)  # a 2D picture has no patient axes to turn


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    """A checkpoint trained on two volume files (so it records RAS), a scan, and its turned copy."""
    root = tmp_path_factory.mktemp("orientation")
    images, labels = [], []
    for seed in (1, 2):
        phantom = abdomen_phantom(SHAPE, seed=seed)
        like = Image(phantom.image, AFFINE, "nifti")
        images.append(save_array(phantom.image[0], root / f"ct{seed}.nii.gz", like=like))
        labels.append(save_array(phantom.labels.astype(np.uint8), root / f"labels{seed}.nii.gz", like=like))
    (root / "names.json").write_text(json.dumps({"1": "liver", "4": "kidney_left"}))
    assert main(["train", "--images", *map(str, images), "--labels", *map(str, labels), "--names",
                 str(root / "names.json"), "--steps", "2", "--val-fraction", "0", "--augment", "none", "--out",
                 str(root / "model.pt"), "--no-progress"]) == 0
    scan = abdomen_phantom(SHAPE, seed=7).image[0]
    save_array(scan, root / "scan.nii.gz", like=Image(scan[None], AFFINE, "nifti"))
    copy = turned(scan)
    save_array(copy, root / "copy.nii.gz", like=Image(copy[None], turned_affine(AFFINE, SHAPE), "nifti"))
    return root


def explain(root, model, scan, out, target):
    assert main(["explain", "--model", str(root / model), "--image", str(root / scan), "--target", target,
                 "--out", str(out), "--no-progress"]) == 0
    written = nib.load(next(out.glob("attribution_*.nii.gz")))  # one channel, named after the file
    return np.asarray(written.dataobj), written.affine, np.asarray(nib.load(out / "prediction.nii.gz").dataobj)


def test_a_turned_copy_gives_the_same_map_in_world_space(scans, tmp_path):
    assert load_checkpoint(scans / "model.pt")[1]["orientation"] == "RAS"
    copy_affine = turned_affine(AFFINE, SHAPE)
    voxel = (10, 14, 12)  # the same world point in both files, in each file's own indices
    copy_voxel = (SHAPE[2] - 1 - voxel[2], voxel[1], SHAPE[0] - 1 - voxel[0])
    np.testing.assert_allclose(AFFINE @ np.r_[voxel, 1], copy_affine @ np.r_[copy_voxel, 1])
    for target, copy_target in (("class:1", "class:1"), (f"voxel:1:{','.join(map(str, voxel))}",
                                                          f"voxel:1:{','.join(map(str, copy_voxel))}")):
        original, affine, prediction = explain(scans, "model.pt", "scan.nii.gz", tmp_path / "a", target)
        other, other_affine, other_prediction = explain(scans, "model.pt", "copy.nii.gz", tmp_path / "b", copy_target)
        np.testing.assert_allclose(affine, AFFINE)  # written back in each file's own orientation and affine
        np.testing.assert_allclose(other_affine, copy_affine)
        assert np.abs(original).sum() > 0
        scale = float(np.abs(original).max())
        np.testing.assert_allclose(turned(original), other, rtol=0, atol=1e-5 * scale)
        np.testing.assert_array_equal(turned(prediction), other_prediction)


def test_a_model_on_raw_array_axes_does_not_have_that_property(scans, tmp_path):
    net, config = load_checkpoint(scans / "model.pt")
    del config["orientation"]  # as checkpoints trained on phantoms or before orientation was read
    save_checkpoint(tmp_path / "raw.pt", net.net, config)
    (tmp_path / "scan.nii.gz").write_bytes((scans / "scan.nii.gz").read_bytes())
    (tmp_path / "copy.nii.gz").write_bytes((scans / "copy.nii.gz").read_bytes())
    original, _, _ = explain(tmp_path, "raw.pt", "scan.nii.gz", tmp_path / "a", "class:1")
    other, _, _ = explain(tmp_path, "raw.pt", "copy.nii.gz", tmp_path / "b", "class:1")
    assert not np.allclose(turned(original), other, atol=1e-3 * float(np.abs(original).max()))


def test_a_localizer_trained_on_volumes_finds_the_same_world_region_on_a_turned_copy():
    from segxai.data import phantom_dataset
    from segxai.localize import TinyTextEncoder, train_localizer

    cases = phantom_dataset("abdomen", 2, SHAPE, seed=3)
    localizer = train_localizer([c.image for c in cases], [c.labels for c in cases], {4: "left kidney"},
                                TinyTextEncoder(), steps=2, batch_size=2, progress=False)
    localizer.config["orientation"] = "RAS"  # as `segxai localize train` records for volume files
    scan = abdomen_phantom(SHAPE, seed=8).image
    original = localizer.predict(Image(scan, AFFINE, "nifti"), "left kidney")
    copy = localizer.predict(Image(turned(scan[0])[None], turned_affine(AFFINE, SHAPE), "nifti"), "left kidney")
    assert original.shape == SHAPE and copy.shape == turned(original).shape
    np.testing.assert_allclose(turned(original), copy, rtol=0, atol=1e-6)
