"""The case loader every file pipeline shares: image(s) with geometry, a reference checked against the image grid,
the model (loaded from a checkpoint or shared), and the prediction computed once."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from segxai.errors import SegxaiError
from segxai.io import Image, save_array
from segxai.models.case import load_case, load_model

AFFINE = np.array([[1.5, 0, 0, -40], [0, 1.5, 0, 12], [0, 0, 3.0, 5], [0, 0, 0, 1]])


@pytest.fixture
def files(tmp_path):
    """Two modalities and a label map of a 2D scan (NIfTI, non-trivial affine), a tiny checkpoint."""
    from segxai.models.checkpoint import save_checkpoint
    from segxai.models.presets import build_network, network_config

    grid = Image(np.zeros((2, 16, 16), np.float32), AFFINE, "nifti")
    rng = np.random.default_rng(0)
    for name in ("flair", "t1"):
        save_array(rng.normal(size=(16, 16)).astype(np.float32), tmp_path / f"{name}.nii.gz", like=grid)
    labels = np.zeros((16, 16), np.uint8)
    labels[4:8, 4:8] = 2
    save_array(labels, tmp_path / "labels.nii.gz", like=grid)
    shifted = AFFINE.copy()
    shifted[0, 3] += 5.0  # the same grid 5 mm away
    save_array(labels, tmp_path / "shifted.nii.gz", like=Image(grid.array, shifted, "nifti"))
    config = network_config("unet2d", 2, 3, names={1: "a", 2: "b"})
    config["network"].update(channels=[4, 8], strides=[2])
    torch.manual_seed(0)
    checkpoint = save_checkpoint(tmp_path / "model.pt", build_network(config).eval(), config)
    return tmp_path, checkpoint


def test_a_case_keeps_geometry_reference_and_model(files):
    folder, checkpoint = files
    images = [folder / "flair.nii.gz", folder / "t1.nii.gz"]
    case = load_case(images, reference=folder / "labels.nii.gz", model=checkpoint)
    assert case.name == "flair" and case.channel_names == ["flair", "t1"]
    np.testing.assert_allclose(case.image.affine, AFFINE)
    assert case.files == (*images, folder / "labels.nii.gz", checkpoint)
    assert case.reference_of(2).sum() == 16 and not case.reference_of(1).any()
    assert case.map_format == (".nii.gz", case.image)
    assert case.inputs.shape == (2, 16, 16) and case.model.class_rows()[1]["name"] == "b"
    model = case.segmenter
    model.reset_counts()
    first = case.prediction
    assert case.prediction is first and model.forward_passes == 1  # computed once per case
    np.testing.assert_array_equal(first.numpy(), model.predict(case.inputs).numpy())


def test_a_model_is_shared_between_cases_and_cases_may_have_none(files):
    folder, checkpoint = files
    shared = load_model(checkpoint)
    a = load_case(folder / "flair.nii.gz", model=shared, name="a")
    b = load_case(folder / "t1.nii.gz", model=shared)
    assert a.model is b.model and (a.name, b.name) == ("a", "t1") and a.files == (folder / "flair.nii.gz", checkpoint)
    bare = load_case(folder / "flair.nii.gz", reference=folder / "labels.nii.gz")
    assert bare.model is None and bare.reference.shape == (16, 16)
    with pytest.raises(SegxaiError, match="loaded without a model"):
        bare.inputs
    png = folder / "photo.png"
    save_array(np.zeros((16, 16), np.uint8), png)
    assert load_case(png).map_format == (".png", None)


def test_a_reference_off_the_image_grid_is_refused(files):
    folder, _ = files
    save_array(np.zeros((8, 8), np.uint8), folder / "small.nii.gz")
    with pytest.raises(SegxaiError, match=r"mask .*small.nii.gz has shape \(8, 8\)"):
        load_case(folder / "flair.nii.gz", reference=folder / "small.nii.gz")
    with pytest.raises(SegxaiError, match="shifted.nii.gz"):
        load_case(folder / "flair.nii.gz", reference=folder / "shifted.nii.gz")
    with pytest.raises(SegxaiError, match="no such file"):
        load_case(folder / "flair.nii.gz", reference=folder / "missing.nii.gz")
