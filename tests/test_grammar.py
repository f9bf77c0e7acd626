"""The one ROI/target/settings grammar of the command line and the run configurations: every form, what it
selects on a case (checked against masks built independently with NumPy), and every error it names."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from segxai.errors import SegxaiError
from segxai.io import Image
from segxai.model import SegModel
from segxai.models.case import Case, LoadedModel
from segxai.pipelines.grammar import (EveryInstance, parse_method_params, parse_params, parse_roi, read_target)
from segxai.targets import ClassRegion, Instance, Voxel

SHAPE = (16, 16)


class ValueIsClass(torch.nn.Module):
    """Predicts class v wherever the (single-channel) input holds the value v (0, 1 or 2)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 10.0 * torch.nn.functional.one_hot(x[:, 0].round().long(), 3).movedim(-1, 1).float()


@pytest.fixture
def case() -> Case:
    """A 2D case: class 1 predicted on a 4x4 square, class 2 on a 2x2 one; reference classes 1 and 3 elsewhere."""
    array = np.zeros(SHAPE, np.float32)
    array[2:6, 2:6] = 1
    array[10:12, 10:12] = 2
    reference = np.zeros(SHAPE, np.int64)
    reference[3:5, 8:10] = 1
    reference[12:14, 0:2] = 3
    return Case("c", Image(array[None]), reference, LoadedModel(SegModel(ValueIsClass()), {}))


def square(rows: slice, cols: slice) -> np.ndarray:
    mask = np.zeros(SHAPE, bool)
    mask[rows, cols] = True
    return mask


def grown(mask: np.ndarray, margin: int) -> np.ndarray:
    """`mask` dilated by a Euclidean disk of radius `margin` (independent of `segxai.roi`'s distance transform)."""
    offsets = np.arange(-margin, margin + 1)
    disk = np.hypot(*np.meshgrid(offsets, offsets, indexing="ij")) <= margin
    return ndimage.binary_dilation(mask, disk)


# form, target class, expected mask on the case (None: no ROI)
FORMS = [
    ("none", None, None),
    ("box:1,2:3,4", None, square(slice(1, 4), slice(2, 6))),
    ("box:1,2,4", None, square(slice(1, 5), slice(2, 6))),  # CORNER,SIDE: a square
    ("prediction", 1, square(slice(2, 6), slice(2, 6))),  # the target's class
    ("prediction:2", 1, square(slice(10, 12), slice(10, 12))),
    ("prediction+1", 2, grown(square(slice(10, 12), slice(10, 12)), 1)),
    ("prediction:1+2", None, grown(square(slice(2, 6), slice(2, 6)), 2)),
    ("reference", 1, square(slice(3, 5), slice(8, 10))),
    ("reference:3+1", 1, grown(square(slice(12, 14), slice(0, 2)), 1)),
    ("reference+2", 3, grown(square(slice(12, 14), slice(0, 2)), 2)),
]


@pytest.mark.parametrize("spec, cls, expected", FORMS, ids=[f[0] for f in FORMS])
def test_every_form_selects_what_the_table_says(case, spec, cls, expected):
    parsed = parse_roi(spec)
    assert str(parsed) == spec
    mask = parsed.resolve(case, cls)
    if expected is None:
        assert mask is None
    else:
        assert mask.dtype == torch.bool and np.array_equal(mask.numpy(), expected)


def test_mask_files_are_read_on_the_case_grid_and_grown(case, tmp_path):
    from segxai.io import save_array

    drawn = square(slice(5, 8), slice(5, 9))
    save_array(drawn.astype(np.uint8) * 3, tmp_path / "m+1.npy")  # any non-zero value; a '+' in the name
    assert np.array_equal(parse_roi(f"mask:{tmp_path / 'm+1.npy'}").resolve(case).numpy(), drawn)
    assert np.array_equal(parse_roi(f"mask:{tmp_path / 'm+1.npy'}+1").resolve(case).numpy(), grown(drawn, 1))
    relative = parse_roi("mask:m+1.npy+2", base=tmp_path)
    assert relative.path == tmp_path / "m+1.npy" and relative.margin == 2.0
    save_array(np.ones((8, 8), np.uint8), tmp_path / "small.npy")
    with pytest.raises(SegxaiError, match="shape"):
        parse_roi(f"mask:{tmp_path / 'small.npy'}").resolve(case)


def test_text_form_names_prompt_localizer_and_margin(tmp_path):
    plain = parse_roi("text:left kidney@loc.pt")
    assert (plain.kind, plain.prompt, plain.path, plain.margin) == ("text", "left kidney", Path("loc.pt"), None)
    grown_roi = parse_roi("text:T1+contrast lesion@models/loc.pt+3", base=tmp_path)
    assert (grown_roi.prompt, grown_roi.path, grown_roi.margin) == ("T1+contrast lesion", tmp_path / "models/loc.pt", 3.0)


@pytest.mark.parametrize("spec, message", [
    ("", "an ROI is a non-empty string"),
    ("circle:3", "unknown ROI 'circle:3'; use none, box:START:SIZE"),
    ("mask:", "unknown ROI 'mask:'"),
    ("reference:", "unknown ROI 'reference:'"),
    ("none:1", "unknown ROI 'none:1'"),
    ("none+2", "only mask, reference, prediction, text ROIs take a +MARGIN"),
    ("box:1,2:3,4+1", "only mask, reference, prediction, text ROIs take a +MARGIN"),
    ("box:3", "give box:START:SIZE (e.g. box:10,20,5:32,32,8) or box:CORNER,SIDE"),
    ("box:a,b:1,2", "give box:START:SIZE"),
    ("box:1,2:3,4:5,6", "give box:START:SIZE"),
    ("prediction:1:6", "the class is a whole number (margins are written +M, e.g. prediction:1+4)"),
    ("reference:liver", "the class is a whole number"),
    ("reference+-1", "the margin must be a non-negative number of voxels"),
    ("prediction+inf", "the margin must be a non-negative number of voxels"),
    ("text:liver", "give text:PROMPT@LOCALIZER.pt"),
    ("text:@loc.pt", "give text:PROMPT@LOCALIZER.pt"),
])
def test_syntax_errors_name_the_form(spec, message):
    with pytest.raises(SegxaiError, match=re.escape(message)):
        parse_roi(spec)


@pytest.mark.parametrize("spec, cls, message", [
    ("box:1,2,3,4", None, "give box:CORNER,SIDE with 2 corner values and a side (e.g. box:8,8,32)"),
    ("box:0,0:0,4", None, "positive"),
    ("box:20,0:2,2", None, "outside the grid"),
    ("prediction", None, "needs a class: write prediction:CLS"),
    ("prediction:0+1", None, None),  # the background is a class too: no error
    ("prediction:7", None, "predicts no voxel of class 7"),
    ("reference:5", None, "holds no voxel of class 5"),
])
def test_errors_found_on_the_case(case, spec, cls, message):
    if message is None:
        assert parse_roi(spec).resolve(case, cls).any()
        return
    with pytest.raises(SegxaiError, match=re.escape(message)):
        parse_roi(spec).resolve(case, cls)


def test_reference_forms_need_a_case_with_a_reference(case):
    case.reference = None
    with pytest.raises(SegxaiError, match="needs the case's reference mask"):
        parse_roi("reference+2").resolve(case, 1)


def test_the_cli_and_a_run_configuration_read_the_same_roi(tmp_path):
    from segxai.pipelines.runs import parse_config

    (tmp_path / "organ.npy").write_bytes(b"")
    specs = ["none", "box:1,2,4", "reference:1+4", "prediction+2", "mask:organ.npy+1"]
    config = parse_config({"model": "m.pt", "dataset": {"root": ".", "masks": "{case}.png"}, "methods": ["saliency"],
                           "targets": ["class:1"], "rois": specs}, base=tmp_path)
    assert list(config.rois) == [parse_roi(spec, base=tmp_path) for spec in specs]


def test_targets_and_every_instance():
    assert isinstance(read_target("class:2"), ClassRegion) and read_target("class:2").cls == 2
    assert isinstance(read_target("instance:1:3"), Instance) and isinstance(read_target("voxel:1:2,3"), Voxel)
    assert read_target("instances:2") == EveryInstance(2)
    for spec, message in (("instances:x", "instances:CLS needs a class number"), ("organ:1", "unknown target"),
                          (3, "a target is a string")):
        with pytest.raises(SegxaiError, match=message):
            read_target(spec)


def test_settings():
    assert parse_params(["window=8", "fill=blur", "size=(8, 8)", "scale=0.5"]) == {
        "window": 8, "fill": "blur", "size": (8, 8), "scale": 0.5}
    assert parse_method_params(["occlusion.window=8", "rise.n_masks=4", "occlusion.stride=2"]) == {
        "occlusion": {"window": 8, "stride": 2}, "rise": {"n_masks": 4}}
    for bad, message in ((["8"], "NAME=VALUE"), (["1x=2"], "NAME=VALUE")):
        with pytest.raises(SegxaiError, match=message):
            parse_params(bad)
    with pytest.raises(SegxaiError, match="METHOD.NAME=VALUE"):
        parse_method_params(["window=8"])
