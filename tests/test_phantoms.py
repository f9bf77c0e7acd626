"""Seeded synthetic phantoms: reproducibility, anatomy, intensities and lesion instances in 2D and 3D."""
from itertools import combinations

import numpy as np
import pytest
from scipy import ndimage

from segxai.data.phantoms import (
    Phantom,
    abdomen_phantom,
    brain_phantom,
    phantom_dataset,
)
from segxai.errors import SegxaiError

ABDOMEN_SHAPES = [(64, 64), (96, 80), (48, 48, 24)]
BRAIN_CASES = [((64, 64), 4), ((96, 96), 8), ((48, 48, 48), 8), ((40, 40, 32), 3)]
CASES = [("abdomen", shape) for shape in ABDOMEN_SHAPES] + [("brain", shape) for shape, _ in BRAIN_CASES]
ORGAN_ORDER = ["spleen", "liver", "kidney_right", "kidney_left", "aorta", "spine"]  # increasing HU
NOMINAL_HU = {"spleen": 70, "liver": 110, "kidney_right": 160, "kidney_left": 200, "aorta": 250, "spine": 600}


def _make(kind, shape, seed=0):
    return abdomen_phantom(shape, seed=seed) if kind == "abdomen" else brain_phantom(shape, seed=seed)


def _organ_means(phantom):
    return {name: float(phantom.image[0][phantom.labels == value].mean()) for value, name in phantom.names.items()}


@pytest.mark.parametrize("kind,shape", CASES)
def test_same_seed_same_arrays_and_different_seed_different(kind, shape):
    first, again, other = _make(kind, shape, 3), _make(kind, shape, 3), _make(kind, shape, 4)
    np.testing.assert_array_equal(first.image, again.image)
    np.testing.assert_array_equal(first.labels, again.labels)
    assert not np.array_equal(first.image, other.image)
    assert not np.array_equal(first.labels, other.labels)


@pytest.mark.parametrize("kind,shape,channels", [("abdomen", s, ("CT",)) for s in ABDOMEN_SHAPES]
                         + [("brain", s, ("FLAIR", "T1")) for s, _ in BRAIN_CASES])
def test_shapes_and_dtypes(kind, shape, channels):
    phantom = _make(kind, shape)
    assert isinstance(phantom, Phantom)
    assert phantom.image.shape == (len(channels), *shape) and phantom.image.dtype == np.float32
    assert phantom.labels.shape == tuple(shape) and phantom.labels.dtype == np.int64
    assert phantom.channel_names == channels
    assert np.isfinite(phantom.image).all()
    if kind == "abdomen":
        assert phantom.instances is None
    else:
        assert phantom.instances.shape == tuple(shape) and phantom.instances.dtype == np.int64


@pytest.mark.parametrize("seed", range(12))
def test_every_organ_present_in_small_2d_abdomen(seed):
    phantom = abdomen_phantom((64, 64), seed=seed)
    counts = np.bincount(phantom.labels.ravel(), minlength=7)
    assert (counts[1:] >= 20).all(), counts
    assert counts[1] == counts[1:].max()  # the liver is the largest organ


@pytest.mark.parametrize("shape", ABDOMEN_SHAPES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_organ_intensities_ordered_and_separated(shape, seed):
    means = _organ_means(abdomen_phantom(shape, seed=seed))
    assert sorted(means, key=means.get) == ORGAN_ORDER
    for a, b in combinations(means, 2):
        assert abs(means[a] - means[b]) >= 30, (a, b, means)


@pytest.mark.parametrize("shape", ABDOMEN_SHAPES)
def test_texture_keeps_nominal_tissue_means(shape):
    phantom = abdomen_phantom(shape, seed=5, noise=0.0)
    for name, mean in _organ_means(phantom).items():
        assert mean == pytest.approx(NOMINAL_HU[name], abs=0.01)
    background = phantom.image[0][phantom.labels == 0]
    assert background.min() == pytest.approx(-1000.0)  # air outside the body
    assert np.isclose(background, -100.0, atol=40).any() and np.isclose(background, 30.0, atol=25).any()


@pytest.mark.parametrize("shape", ABDOMEN_SHAPES)
def test_abdomen_layout_in_radiological_convention(shape):
    phantom = abdomen_phantom(shape, seed=1)
    centre = {name: ndimage.center_of_mass(phantom.labels == value) for value, name in phantom.names.items()}
    width = shape[1]  # (rows, columns[, slices]) in 2D and in the NIfTI layout of 3D phantoms
    assert centre["liver"][1] < width / 2 < centre["spleen"][1]  # patient right on the image's left
    assert centre["kidney_right"][1] < width / 2 < centre["kidney_left"][1]
    assert centre["aorta"][0] < centre["spine"][0]  # aorta anterior to the vertebral body
    assert abs(centre["spine"][1] - width / 2) < width * 0.1


def test_2d_abdomen_is_the_central_slice_of_the_3d_one():
    flat, volume = abdomen_phantom((64, 64), seed=3), abdomen_phantom((64, 64, 33), seed=3)
    np.testing.assert_array_equal(flat.labels, volume.labels[..., 16])


def test_3d_abdomen_organs_vary_along_depth():
    phantom = abdomen_phantom((64, 64, 48), seed=2)
    slices = {name: (phantom.labels == value).any(axis=(0, 1)) for value, name in phantom.names.items()}
    assert slices["liver"].mean() > 0.8
    for name in ("spleen", "kidney_right", "kidney_left"):
        assert 0 < slices[name].mean() < 1
    areas = (phantom.labels == phantom.label_of("liver")).sum(axis=(0, 1))
    assert areas.max() > 1.5 * areas[areas > 0].min()


@pytest.mark.parametrize("shape,n_lesions", BRAIN_CASES)
def test_lesion_instances_match_scipy_labelling(shape, n_lesions):
    phantom = brain_phantom(shape, n_lesions=n_lesions, seed=1)
    structure = ndimage.generate_binary_structure(len(shape), len(shape) - 1)
    expected, count = ndimage.label(phantom.labels > 0, structure=structure)
    assert count == n_lesions
    np.testing.assert_array_equal(phantom.instances, expected)
    assert set(np.unique(phantom.labels)) == {0, 1} and phantom.names == {1: "lesion"}


@pytest.mark.parametrize("shape,n_lesions", BRAIN_CASES)
def test_lesions_keep_a_gap_and_vary_in_size(shape, n_lesions):
    instances = brain_phantom(shape, n_lesions=n_lesions, seed=2).instances
    for lesion in range(1, n_lesions + 1):
        distance = ndimage.distance_transform_edt((instances == 0) | (instances == lesion))
        assert distance[instances == lesion].min() >= 3  # two background voxels between any two lesions
    sizes = np.bincount(instances.ravel())[1:]
    assert sizes.max() >= 4 * sizes.min()


@pytest.mark.parametrize("shape,n_lesions", BRAIN_CASES)
def test_lesion_contrast_lives_in_flair(shape, n_lesions):
    phantom = brain_phantom(shape, n_lesions=n_lesions, seed=3)
    flair, t1 = phantom.image
    tissue = ndimage.binary_dilation(phantom.labels > 0, iterations=2)
    white = (np.abs(t1 - 0.7) < 0.25) & ~tissue  # white matter: bright on T1
    assert flair[phantom.labels > 0].mean() > flair[white].mean() + 0.5
    for lesion in range(1, n_lesions + 1):
        inside = phantom.instances == lesion
        flair_contrast = flair[inside].mean() - flair[white].mean()
        t1_contrast = t1[inside].mean() - t1[white].mean()
        assert flair_contrast > 0.5 and t1_contrast < 0 and abs(t1_contrast) < flair_contrast


@pytest.mark.parametrize("shape,n_lesions", BRAIN_CASES)
def test_brain_background_exactly_zero(shape, n_lesions):
    phantom = brain_phantom(shape, n_lesions=n_lesions, seed=4)
    head = (phantom.image != 0).any(axis=0)
    assert 0.2 < head.mean() < 0.9
    assert not head[(0,) * len(shape)] and not head[(-1,) * len(shape)]
    assert (phantom.image[:, ~head] == 0).all() and (phantom.labels[~head] == 0).all()
    assert ndimage.label(~head)[1] == 1  # the zero region is the single outside of the head


def test_no_lesions_gives_empty_maps():
    phantom = brain_phantom((48, 48), n_lesions=0)
    assert not phantom.labels.any() and not phantom.instances.any()


def test_small_brain_scales_lesions_down():
    phantom = brain_phantom((24, 24), n_lesions=1)
    assert phantom.instances.max() == 1


def test_unplaceable_lesions_raise():
    with pytest.raises(SegxaiError, match="cannot place lesion"):
        brain_phantom((32, 32), n_lesions=40)


@pytest.mark.parametrize("maker", [abdomen_phantom, brain_phantom])
@pytest.mark.parametrize("shape", [(), (64,), (64, 64, 64, 2), (23, 64), (32, 20, 32), (64.5, 64), "64x64", 64])
def test_bad_shapes_raise(maker, shape):
    with pytest.raises(SegxaiError):
        maker(shape)


@pytest.mark.parametrize("kwargs", [{"noise": -1.0}, {"noise": float("nan")}])
@pytest.mark.parametrize("maker", [abdomen_phantom, brain_phantom])
def test_bad_noise_raises(maker, kwargs):
    with pytest.raises(SegxaiError, match="noise"):
        maker((32, 32), **kwargs)


def test_negative_lesion_count_raises():
    with pytest.raises(SegxaiError, match="n_lesions"):
        brain_phantom((48, 48), n_lesions=-1)


def test_label_of_reverse_lookup():
    abdomen, brain = abdomen_phantom((48, 48)), brain_phantom((48, 48), n_lesions=2)
    assert [abdomen.label_of(name) for name in ("liver", "spleen", "kidney_right", "kidney_left", "aorta",
                                                "spine")] == [1, 2, 3, 4, 5, 6]
    assert brain.label_of("lesion") == 1
    with pytest.raises(SegxaiError, match="kidney_left.*liver"):
        abdomen.label_of("pancreas")


@pytest.mark.parametrize("kind,shape,kwargs", [("abdomen", (48, 48), {"noise": 5.0}),
                                               ("brain", (32, 32, 24), {"n_lesions": 3})])
def test_phantom_dataset_is_seeded_and_varied(kind, shape, kwargs):
    cases = phantom_dataset(kind, 4, shape, seed=7, **kwargs)
    again = phantom_dataset(kind, 4, shape, seed=7, **kwargs)
    assert len(cases) == 4 and all(case.image.shape[1:] == shape for case in cases)
    for case, twin in zip(cases, again):
        np.testing.assert_array_equal(case.image, twin.image)
    for a, b in combinations(cases, 2):
        assert not np.array_equal(a.labels, b.labels)
    assert not np.array_equal(cases[0].image, phantom_dataset(kind, 1, shape, seed=8, **kwargs)[0].image)
    if kind == "brain":
        assert all(case.instances.max() == 3 for case in cases)


def test_phantom_dataset_forwards_noise():
    noiseless = phantom_dataset("abdomen", 2, (48, 48), noise=0.0)
    for case in noiseless:
        assert case.image[0][case.labels == 5].mean() == pytest.approx(250.0, abs=0.01)


@pytest.mark.parametrize("kind,n", [("heart", 2), ("abdomen", 0)])
def test_phantom_dataset_bad_arguments_raise(kind, n):
    with pytest.raises(SegxaiError):
        phantom_dataset(kind, n, (48, 48))
