"""segxai.io: reading images with their geometry, label maps, stacking, atomic writes and refusals."""
from __future__ import annotations

import gzip
import random
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import PIL.Image
import pytest

from segxai.errors import SegxaiError
from segxai.io import (
    Image,
    atomic_write,
    load_image,
    load_mask,
    prepare_output_dir,
    save_array,
)

AFFINE = np.array(
    [[-0.5, 0.0, 0.0, 90.25], [0.0, 0.75, 0.0, -126.5], [0.0, 0.0, 2.0, -72.0], [0.0, 0.0, 0.0, 1.0]]
)


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


def write_png(path: Path, data: np.ndarray, mode: str | None = None) -> Path:
    image = PIL.Image.fromarray(data)
    (image.convert(mode) if mode else image).save(path)
    return path


# ------------------------------------------------------------------------------------------------ NIfTI


@pytest.mark.parametrize(
    "stored_shape, spatial_shape",
    [((6, 5), (6, 5)), ((6, 5, 1), (6, 5)), ((6, 5, 4), (6, 5, 4))],
    ids=["2d", "2d-trailing-singleton", "3d"],
)
def test_nifti_roundtrip_keeps_values_and_affine(tmp_path, stored_shape, spatial_shape):
    data = np.random.default_rng(0).normal(size=stored_shape).astype(np.float32)
    source = write_nifti(tmp_path / "in.nii.gz", data)
    image = load_image(source)
    assert image.kind == "nifti" and image.array.dtype == np.float32
    assert image.array.shape == (1, *spatial_shape)
    assert image.spatial_dims == len(spatial_shape)
    assert image.channel_names == ("in",) and image.source == (source,)
    np.testing.assert_array_equal(image.array[0], data.reshape(spatial_shape))
    np.testing.assert_array_equal(image.affine, AFFINE)
    assert image.spacing == pytest.approx((0.5, 0.75, 2.0)[: len(spatial_shape)])

    for like in (image, source):
        out = save_array(image.array[0] * 2, tmp_path / "out.nii.gz", like=like)
        written = nib.load(out)
        np.testing.assert_array_equal(written.affine, AFFINE)
        assert written.get_data_dtype() == np.float32
        np.testing.assert_array_equal(np.asanyarray(written.dataobj).reshape(spatial_shape), data.reshape(spatial_shape) * 2)


def test_nifti_4d_moves_channels_first(tmp_path):
    data = np.arange(4 * 3 * 2 * 3, dtype=np.int16).reshape(4, 3, 2, 3)
    image = load_image(write_nifti(tmp_path / "multi.nii", data))
    assert image.array.shape == (3, 4, 3, 2)
    assert image.channel_names == ("c0", "c1", "c2")
    for channel in range(3):
        np.testing.assert_array_equal(image.array[channel], data[..., channel])


def test_nifti_without_affine_reference_gets_identity(tmp_path):
    out = save_array(np.ones((3, 4, 5), dtype=np.int64), tmp_path / "mask.nii.gz")
    written = nib.load(out)
    np.testing.assert_array_equal(written.affine, np.eye(4))
    assert written.get_data_dtype() == np.uint8


# ------------------------------------------------------------------------------------------- PNG / JPEG

GREY = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
RGB = np.stack([GREY, GREY + 1, GREY + 2], axis=-1)


@pytest.mark.parametrize(
    "data, mode, channels, expected",
    [
        (GREY, None, ("gray",), GREY[None]),
        (RGB, None, ("R", "G", "B"), RGB.transpose(2, 0, 1)),
        (RGB, "RGBA", ("R", "G", "B"), RGB.transpose(2, 0, 1)),
        (GREY, "LA", ("gray",), GREY[None]),
        (GREY.astype(np.uint16) * 250, None, ("gray",), GREY[None].astype(np.float32) * 250),
        (RGB, "P", ("R", "G", "B"), None),
    ],
    ids=["grey", "rgb", "rgba-drops-alpha", "grey-alpha", "16-bit", "palette"],
)
def test_png_channels_keep_stored_values(tmp_path, data, mode, channels, expected):
    image = load_image(write_png(tmp_path / "x.png", data, mode))
    assert image.kind == "png" and image.affine is None
    assert image.channel_names == channels
    assert image.array.shape == (len(channels), 3, 4) and image.spacing == (1.0, 1.0)
    if expected is not None:
        np.testing.assert_array_equal(image.array, expected)


@pytest.mark.parametrize("data, channels", [(GREY, 1), (RGB, 3)], ids=["grey", "rgb"])
def test_jpeg_channels(tmp_path, data, channels):
    image = load_image(write_png(tmp_path / "x.jpg", np.repeat(np.repeat(data, 4, axis=0), 4, axis=1)))
    assert image.kind == "jpeg" and image.array.shape == (channels, 12, 16)
    assert abs(image.array.mean() - data.mean()) < 3


# ------------------------------------------------------------------------------------------------ NumPy


@pytest.mark.parametrize(
    "shape, expected", [((5, 6), (1, 5, 6)), ((2, 5, 6), (2, 5, 6)), ((3, 4, 5, 6), (3, 4, 5, 6))]
)
def test_npy_layout(tmp_path, shape, expected):
    np.save(tmp_path / "a.npy", np.zeros(shape, dtype=np.float64))
    image = load_image(tmp_path / "a.npy")
    assert image.array.shape == expected and image.array.dtype == np.float32 and image.affine is None


def test_npy_of_other_rank_is_refused(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((1, 2, 3, 4, 5)))
    with pytest.raises(SegxaiError, match="a.npy"):
        load_image(tmp_path / "a.npy")


# ----------------------------------------------------------------------------------------------- stacking


def test_stacking_modalities_as_channels(tmp_path):
    t1 = write_nifti(tmp_path / "t1.nii.gz", np.full((4, 5, 3), 1, dtype=np.float32))
    t2 = write_nifti(tmp_path / "t2.nii.gz", np.full((4, 5, 3), 2, dtype=np.float64), AFFINE + 1e-4)
    image = load_image([t1, t2])
    assert image.array.shape == (2, 4, 5, 3) and image.channel_names == ("t1", "t2")
    assert image.source == (t1, t2)
    np.testing.assert_array_equal(image.array[:, 0, 0, 0], [1, 2])


@pytest.mark.parametrize(
    "other_shape, other_affine, message",
    [((4, 5, 2), AFFINE, "spatial shape"), ((4, 5, 3), AFFINE + np.diag([0, 0, 0.01, 0]), "affine")],
    ids=["shape", "affine"],
)
def test_stacking_mismatch_names_both_files(tmp_path, other_shape, other_affine, message):
    t1 = write_nifti(tmp_path / "t1.nii.gz", np.zeros((4, 5, 3), dtype=np.float32))
    t2 = write_nifti(tmp_path / "t2.nii.gz", np.zeros(other_shape, dtype=np.float32), other_affine)
    with pytest.raises(SegxaiError, match=message) as error:
        load_image([t1, t2])
    assert "t1.nii.gz" in str(error.value) and "t2.nii.gz" in str(error.value)


def test_stacking_refuses_multichannel_nifti_and_mixed_kinds(tmp_path):
    single = write_nifti(tmp_path / "t1.nii.gz", np.zeros((4, 5, 3), dtype=np.float32))
    multi = write_nifti(tmp_path / "multi.nii.gz", np.zeros((4, 5, 3, 2), dtype=np.float32))
    with pytest.raises(SegxaiError, match="multi.nii.gz has 2 channels"):
        load_image([single, multi])
    np.save(tmp_path / "a.npy", np.zeros((4, 5, 3)))
    with pytest.raises(SegxaiError, match="cannot stack"):
        load_image([single, tmp_path / "a.npy"])


def test_stacking_2d_images(tmp_path):
    grey = write_png(tmp_path / "grey.png", GREY)
    colour = write_png(tmp_path / "colour.png", RGB)
    image = load_image([grey, colour])
    assert image.channel_names == ("grey", "colour:R", "colour:G", "colour:B")
    assert image.array.shape == (4, 3, 4)


# ------------------------------------------------------------------------------------------------- masks


@pytest.mark.parametrize(
    "data, mode, expected",
    [
        (np.where(GREY > 100, 255, 0).astype(np.uint8), "RGB", (GREY > 100).astype(np.int64)),
        (np.where(GREY > 100, 255, 0).astype(np.uint8), "RGBA", (GREY > 100).astype(np.int64)),
        (GREY.astype(np.uint16) * 250, None, GREY.astype(np.int64) * 250),
        ((GREY // 40).astype(np.uint8), None, (GREY // 40).astype(np.int64)),
        ((GREY // 40).astype(np.uint8), "P", (GREY // 40).astype(np.int64)),
    ],
    ids=["rgb-binary", "rgba-binary", "16-bit-instances", "grey-labels", "palette-labels"],
)
def test_png_masks(tmp_path, data, mode, expected):
    labels = load_mask(write_png(tmp_path / "m.png", data, mode))
    assert labels.dtype == np.int64
    np.testing.assert_array_equal(labels, expected)


@pytest.mark.parametrize(
    "rgb, message",
    [(RGB, "colour RGB"), (np.stack([GREY // 40] * 3, axis=-1).astype(np.uint8), "RGB with values up to")],
    ids=["colour-coded", "dark-labels"],
)
def test_rgb_masks_that_are_not_binary_are_refused(tmp_path, rgb, message):
    with pytest.raises(SegxaiError, match=message):
        load_mask(write_png(tmp_path / "m.png", rgb))


@pytest.mark.parametrize("shape", [(6, 5), (6, 5, 4)], ids=["2d", "3d"])
def test_nifti_mask_rounds_and_checks_geometry(tmp_path, shape):
    image = load_image(write_nifti(tmp_path / "img.nii.gz", np.zeros(shape, dtype=np.float32)))
    values = np.random.default_rng(1).integers(0, 4, size=shape)
    mask_path = write_nifti(tmp_path / "seg.nii.gz", values.astype(np.float32) + 1e-5)
    labels = load_mask(mask_path, like=image)
    assert labels.dtype == np.int64
    np.testing.assert_array_equal(labels, values)

    write_nifti(tmp_path / "half.nii.gz", values.astype(np.float32) + 0.5)
    with pytest.raises(SegxaiError, match="non-integer"):
        load_mask(tmp_path / "half.nii.gz")
    write_nifti(tmp_path / "small.nii.gz", values[:-1].astype(np.uint8))
    with pytest.raises(SegxaiError, match=r"mask .*small.nii.gz has shape .* but image .*img.nii.gz has"):
        load_mask(tmp_path / "small.nii.gz", like=image)
    write_nifti(tmp_path / "moved.nii.gz", values.astype(np.uint8), AFFINE + _shift(0.5))
    with pytest.raises(SegxaiError, match=r"mask .*moved.nii.gz has affine"):
        load_mask(tmp_path / "moved.nii.gz", like=image)


def _shift(mm: float) -> np.ndarray:
    shift = np.zeros((4, 4))
    shift[0, 3] = mm
    return shift


def test_png_mask_shape_checked_against_image(tmp_path):
    image = load_image(write_png(tmp_path / "img.png", RGB))
    with pytest.raises(SegxaiError, match="has shape"):
        load_mask(write_png(tmp_path / "m.png", GREY[:2]), like=image)


# ------------------------------------------------------------------------------------------- bad files


def test_truncated_nifti_is_reported(tmp_path):
    good = write_nifti(tmp_path / "good.nii.gz", np.random.default_rng(2).normal(size=(20, 20, 20)))
    raw = good.read_bytes()
    (tmp_path / "cut.nii.gz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(SegxaiError, match="cannot read .*cut.nii.gz"):
        load_image(tmp_path / "cut.nii.gz")
    with pytest.raises(SegxaiError, match="cut.nii.gz"):
        load_mask(tmp_path / "cut.nii.gz")


def test_truncated_nifti_with_intact_gzip_header_is_reported(tmp_path):
    data = np.random.default_rng(3).normal(size=(20, 20, 20)).astype(np.float32)
    raw = gzip.decompress(write_nifti(tmp_path / "good.nii.gz", data).read_bytes())
    (tmp_path / "short.nii.gz").write_bytes(gzip.compress(raw[: len(raw) // 2]))
    with pytest.raises(SegxaiError, match="short.nii.gz"):
        load_image(tmp_path / "short.nii.gz")


@pytest.mark.parametrize("name", ["noise.jpg", "noise.png", "noise.nii.gz", "noise.npy"])
def test_random_bytes_are_reported(tmp_path, name):
    (tmp_path / name).write_bytes(random.Random(4).randbytes(2000))
    with pytest.raises(SegxaiError, match=f"cannot read .*{name}"):
        load_image(tmp_path / name)


def test_truncated_png_is_reported(tmp_path):
    raw = write_png(tmp_path / "x.png", np.random.default_rng(5).integers(0, 255, (64, 64), dtype=np.uint8)).read_bytes()
    (tmp_path / "x.png").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(SegxaiError, match="x.png"):
        load_image(tmp_path / "x.png")


def test_missing_file_and_unknown_extension(tmp_path):
    with pytest.raises(SegxaiError, match="nope.nii.gz: no such file"):
        load_image(tmp_path / "nope.nii.gz")
    with pytest.raises(SegxaiError, match="nope.png: no such file"):
        load_mask(tmp_path / "nope.png")
    (tmp_path / "scan.mha").write_bytes(b"x")
    with pytest.raises(SegxaiError, match="scan.mha: unknown file type"):
        load_image(tmp_path / "scan.mha")
    with pytest.raises(SegxaiError, match="unknown file type"):
        save_array(np.zeros((2, 2)), tmp_path / "out.mha")


def test_nan_is_not_a_reading_error(tmp_path):
    data = np.zeros((3, 3, 3), dtype=np.float32)
    data[1, 1, 1] = np.nan
    assert np.isnan(load_image(write_nifti(tmp_path / "nan.nii.gz", data)).array).sum() == 1


# ------------------------------------------------------------------------------------------------ writing


def test_atomic_write_replaces_on_success(tmp_path):
    target = tmp_path / "out.nii.gz"
    target.write_text("old")
    with atomic_write(target) as temp:
        assert temp.parent == tmp_path and temp.name.startswith(".tmp-") and temp.name.endswith("-out.nii.gz")
        temp.write_text("new")
    assert target.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["out.nii.gz"]


def test_atomic_write_failure_keeps_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "out.npy"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_write(target) as temp:
            temp.write_text("half")
            raise RuntimeError("writer crashed")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.npy"]


def test_atomic_write_suffix_and_missing_directory(tmp_path):
    with atomic_write(tmp_path / "out", suffix=".nii.gz") as temp:
        assert temp.name.endswith("-out.nii.gz")
        temp.write_text("x")
    assert (tmp_path / "out").read_text() == "x"
    with pytest.raises(SegxaiError, match="does not exist"):
        with atomic_write(tmp_path / "missing" / "out.npy"):
            pass


def test_failed_save_does_not_clobber(tmp_path):
    target = tmp_path / "heatmap.png"
    target.write_text("old")
    with pytest.raises(SegxaiError, match="normalise"):
        save_array(np.zeros((3, 4), dtype=np.float32), target)
    with pytest.raises(SegxaiError, match="2D"):
        save_array(np.zeros((3, 4, 5), dtype=np.uint8), target)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["heatmap.png"]


@pytest.mark.parametrize(
    "array, expected",
    [(GREY > 100, np.where(GREY > 100, 255, 0)), (GREY, GREY)],
    ids=["bool", "uint8"],
)
def test_save_png(tmp_path, array, expected):
    out = save_array(array, tmp_path / "m.png")
    np.testing.assert_array_equal(np.asarray(PIL.Image.open(out)), expected)


def test_save_npy_and_shape_checks(tmp_path):
    image = load_image(write_nifti(tmp_path / "img.nii.gz", np.zeros((4, 5, 3), dtype=np.float32)))
    out = save_array(np.ones((4, 5, 3), dtype=np.float64), tmp_path / "a.npy", like=image)
    np.testing.assert_array_equal(np.load(out), np.ones((4, 5, 3)))
    with pytest.raises(SegxaiError, match="reference image has"):
        save_array(np.ones((4, 5, 2)), tmp_path / "b.nii.gz", like=image)
    with pytest.raises(SegxaiError, match="spatial arrays"):
        save_array(np.ones((1, 4, 5, 3)), tmp_path / "b.nii.gz", like=image)


def test_save_array_refuses_to_overwrite_its_source(tmp_path):
    source = write_nifti(tmp_path / "img.nii.gz", np.zeros((4, 5, 3), dtype=np.float32))
    before = source.read_bytes()
    for like in (load_image(source), source, str(source)):
        with pytest.raises(SegxaiError, match="refusing to overwrite"):
            save_array(np.ones((4, 5, 3)), source, like=like)
    assert source.read_bytes() == before


def test_prepare_output_dir(tmp_path):
    inputs = [write_nifti(tmp_path / "img.nii.gz", np.zeros((2, 2, 2), dtype=np.float32))]
    with pytest.raises(SegxaiError, match="contains input"):
        prepare_output_dir(tmp_path, inputs)
    with pytest.raises(SegxaiError, match="is the input"):
        prepare_output_dir(tmp_path, [tmp_path])
    with pytest.raises(SegxaiError, match="existing file"):
        prepare_output_dir(inputs[0], inputs)
    out = prepare_output_dir(tmp_path / "results" / "run1", inputs)
    assert out.is_dir() and out == (tmp_path / "results" / "run1").resolve()


# ------------------------------------------------------------------------------------------------- Image


def test_image_defaults_and_validation():
    image = Image(np.zeros((2, 3, 4)))
    assert image.array.dtype == np.float32 and image.channel_names == ("c0", "c1")
    assert image.spatial_shape == (3, 4) and image.spacing == (1.0, 1.0) and image.kind == "numpy"
    with pytest.raises(SegxaiError, match="2 or 3 spatial"):
        Image(np.zeros((3, 4)))
    with pytest.raises(SegxaiError, match="channel names"):
        Image(np.zeros((2, 3, 4)), channel_names=("a",))
    with pytest.raises(SegxaiError, match="4x4"):
        Image(np.zeros((1, 3, 4)), affine=np.eye(3))


# ------------------------------------------------------------------------------------------------- DICOM



@pytest.fixture
def pydicom():
    """pydicom is an optional dependency: DICOM tests skip without it."""
    return pytest.importorskip("pydicom")

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
SAGITTAL = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)
ROW_SPACING, COLUMN_SPACING, SLICE_STEP = 0.8, 0.6, 2.5
LPS_ORIGIN = np.array([-100.0, -50.0, 10.0])


def write_dicom(path: Path, pixels: np.ndarray, orientation, position, series_uid: str) -> None:
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.SeriesInstanceUID = series_uid
    ds.Modality = "CT"
    ds.Rows, ds.Columns = pixels.shape
    ds.PixelSpacing = [ROW_SPACING, COLUMN_SPACING]
    ds.ImageOrientationPatient = list(orientation)
    ds.ImagePositionPatient = [round(float(v), 3) for v in position]
    ds.SliceThickness = SLICE_STEP
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.RescaleSlope, ds.RescaleIntercept = 2, -1000
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)


def make_series(directory: Path, orientation=AXIAL, slices: int = 4, positions=None) -> tuple[np.ndarray, np.ndarray]:
    """Write `slices` 3x5 slices in shuffled file order; return the stored pixels (k, rows, cols) and the normal."""
    from pydicom.uid import generate_uid

    directory.mkdir()
    normal = np.cross(orientation[:3], orientation[3:])
    pixels = np.random.default_rng(6).integers(0, 4000, size=(slices, 3, 5))
    positions = positions or [LPS_ORIGIN + k * SLICE_STEP * normal for k in range(slices)]
    order = list(range(slices))
    random.Random(7).shuffle(order)
    uid = generate_uid()
    for name, k in enumerate(order):
        write_dicom(directory / f"IM{name:04d}", pixels[k], orientation, positions[k], uid)
    return pixels, normal


def lps_to_ras(point: np.ndarray) -> np.ndarray:
    return point * np.array([-1.0, -1.0, 1.0])


@pytest.mark.parametrize("orientation", [AXIAL, SAGITTAL], ids=["axial", "sagittal"])
def test_dicom_series_matches_nifti_conventions(pydicom, tmp_path, orientation):
    pixels, normal = make_series(tmp_path / "series", orientation)
    (tmp_path / "series" / "README.txt").write_text("not a slice")
    image = load_image(tmp_path / "series")
    assert image.kind == "dicom" and image.channel_names == ("series",)
    assert image.array.shape == (1, 5, 3, 4)  # (column i, row j, slice k)
    np.testing.assert_allclose(image.array[0], pixels.transpose(2, 1, 0) * 2.0 - 1000.0)
    world = lambda ijk: (image.affine @ np.array([*ijk, 1.0]))[:3]  # noqa: E731
    np.testing.assert_allclose(world((0, 0, 0)), lps_to_ras(LPS_ORIGIN), atol=1e-6)
    np.testing.assert_allclose(world((0, 0, 1)), lps_to_ras(LPS_ORIGIN + SLICE_STEP * normal), atol=1e-6)
    np.testing.assert_allclose(world((1, 0, 0)), lps_to_ras(LPS_ORIGIN + COLUMN_SPACING * np.array(orientation[:3])))
    np.testing.assert_allclose(world((0, 1, 0)), lps_to_ras(LPS_ORIGIN + ROW_SPACING * np.array(orientation[3:])))
    assert image.spacing == pytest.approx((COLUMN_SPACING, ROW_SPACING, SLICE_STEP))

    files = sorted((tmp_path / "series").glob("IM*"))
    renamed = [f.rename(f.with_suffix(".dcm")) for f in files]
    from_list = load_image(renamed)
    np.testing.assert_array_equal(from_list.array, image.array)
    np.testing.assert_allclose(from_list.affine, image.affine)


def test_dicom_single_slice_is_2d(pydicom, tmp_path):
    pixels, _ = make_series(tmp_path / "one", slices=1)
    image = load_image(tmp_path / "one")
    assert image.array.shape == (1, 5, 3) and image.spatial_dims == 2
    np.testing.assert_allclose(image.array[0], pixels[0].T * 2.0 - 1000.0)


@pytest.mark.parametrize(
    "positions, message",
    [
        ([LPS_ORIGIN, LPS_ORIGIN + [0, 0, 2.5], LPS_ORIGIN + [0, 0, 2.5]], "same position"),
        ([LPS_ORIGIN, LPS_ORIGIN + [0, 0, 2.5], LPS_ORIGIN + [0, 0, 7.5]], "uneven slice spacing"),
    ],
    ids=["duplicate", "gap"],
)
def test_dicom_bad_positions(pydicom, tmp_path, positions, message):
    make_series(tmp_path / "bad", slices=3, positions=positions)
    with pytest.raises(SegxaiError, match=message):
        load_image(tmp_path / "bad")


def test_dicom_inconsistent_orientation(pydicom, tmp_path):
    make_series(tmp_path / "bad", slices=2)
    ds = pydicom.dcmread(tmp_path / "bad" / "IM0001")
    ds.ImageOrientationPatient = list(SAGITTAL)
    ds.save_as(tmp_path / "bad" / "IM0001")
    with pytest.raises(SegxaiError, match="ImageOrientationPatient"):
        load_image(tmp_path / "bad")


def test_dicom_without_pydicom_says_how_to_install(pydicom, tmp_path, monkeypatch):
    make_series(tmp_path / "series", slices=1)
    monkeypatch.setitem(sys.modules, "pydicom", None)
    with pytest.raises(SegxaiError, match=r"pip install segxai\[dicom\]"):
        load_image(tmp_path / "series")
