"""TIFF/OME-TIFF reading with the pixel size, instance label maps kept as given (touching nuclei are not merged
into one connected component), and an instance explanation of a fluorescence-like TIFF end to end."""
from __future__ import annotations

import csv

import numpy as np
import pytest
import tifffile
from scipy import ndimage

import segxai as sx
from segxai.instances import as_instances, lesion_types
from segxai.io import Image, load_image, load_mask, save_array
from tests.conftest import threshold_net

# (row, col, brightness) of each nucleus: 0-1 and 2-3 touch (bright), 4-5 touch but are too dim to be predicted.
NUCLEI = [(12, 12, 1.0), (12, 22, 1.0), (40, 14, 1.0), (50, 14, 1.0), (14, 48, 0.2), (24, 48, 0.2), (48, 48, 1.0)]


def fluorescence(shape=(64, 64), radius=5):
    """Bright discs on a dark background and their instance label map (touching discs split by nearest centre)."""
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    distance = np.stack([np.hypot(rows - r, cols - c) for r, c, _ in NUCLEI])
    nearest = distance.argmin(0)
    inside = distance.min(0) <= radius
    labels = np.where(inside, nearest + 1, 0).astype(np.uint16)
    brightness = np.array([b for _, _, b in NUCLEI])
    noise = np.random.default_rng(0).normal(0, 0.02, shape)
    image = (np.where(inside, brightness[nearest], 0.0) - 0.5 + noise).astype(np.float32)
    return image, labels


def test_tiff_round_trip_keeps_values_and_pixel_size(tmp_path):
    image, labels = fluorescence()
    grid = Image(image[None], kind="tiff", pixel_size=(0.00065, 0.00065))
    save_array(image, tmp_path / "image.tif", like=grid)
    save_array(labels, tmp_path / "labels.tif", like=grid)
    read = load_image(tmp_path / "image.tif")
    assert read.array.shape == (1, 64, 64) and np.array_equal(read.array[0], image)
    assert read.spacing == pytest.approx((0.00065, 0.00065), rel=1e-6)
    assert np.array_equal(load_mask(tmp_path / "labels.tif", like=read), labels)


def test_ome_tiff_stack_and_rgb_tiff(tmp_path):
    stack = np.arange(2 * 3 * 8 * 9, dtype=np.uint16).reshape(2, 3, 8, 9)  # C, Z, Y, X
    tifffile.imwrite(tmp_path / "stack.ome.tif", stack, metadata={
        "axes": "CZYX", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5, "PhysicalSizeZ": 2.0,
        "PhysicalSizeXUnit": "µm", "PhysicalSizeYUnit": "µm", "PhysicalSizeZUnit": "µm"})
    read = load_image(tmp_path / "stack.ome.tif")
    assert read.array.shape == (2, 3, 8, 9) and np.array_equal(read.array, stack)
    assert read.spacing == pytest.approx((0.002, 0.0005, 0.0005))
    rgb = np.random.default_rng(1).integers(0, 255, (10, 12, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    colour = load_image(tmp_path / "rgb.tif")
    assert colour.array.shape == (3, 10, 12) and colour.channel_names == ("R", "G", "B")
    assert np.array_equal(colour.array, rgb.transpose(2, 0, 1)) and colour.spacing == (1.0, 1.0)


def test_touching_instances_of_a_label_map_are_kept():
    _, labels = fluorescence()
    assert ndimage.label(labels > 0)[1] == 4  # connected components merge the three touching pairs
    kept = as_instances(labels)
    assert kept.max() == len(NUCLEI) and np.array_equal(kept, labels)
    renumbered = as_instances(np.where(labels > 0, labels * 10 + 3, 0))  # any ids, in ascending order
    assert np.array_equal(renumbered, labels)
    typed = lesion_types(labels == 1, labels)
    assert typed.counts() == {"TP": 1, "FP": 0, "FN": len(NUCLEI) - 1}


def test_instance_explanation_of_a_fluorescence_tiff_keeps_touching_nuclei(tmp_path):
    from segxai.models.case import LoadedModel, load_case
    from segxai.pipelines.instances import explain_instances_case

    image, labels = fluorescence()
    grid = Image(image[None], kind="tiff", pixel_size=(0.0005, 0.0005))
    save_array(image, tmp_path / "nuclei.tif", like=grid)
    save_array(labels, tmp_path / "nuclei_labels.tif", like=grid)
    model = LoadedModel(sx.SegModel(threshold_net(2)), {"network": {"out_channels": 2}, "names": {1: "nucleus"}})
    case = load_case(tmp_path / "nuclei.tif", reference=tmp_path / "nuclei_labels.tif", model=model)
    result = explain_instances_case(case, 1, tmp_path / "out", method="saliency")
    rows = list(csv.DictReader((tmp_path / "out" / "instances.csv").open()))
    types = [row["type"] for row in rows]
    # predicted: 3 components (two merged bright pairs and the single one), all TP; the dim touching pair is
    # missed: two FN nuclei, not one merged component
    assert sorted(types) == ["FN", "FN", "TP", "TP", "TP"]
    missed = [e.target_mask.numpy() for e in result.explanations if e.stats["instance_type"] == "FN"]
    assert {int(np.unique(labels[m])[0]) for m in missed} == {5, 6}
    assert all(np.abs(e.attribution.numpy()).sum() > 0 for e in result.explanations)
