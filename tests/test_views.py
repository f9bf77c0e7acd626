"""The report a clinician reads: three orthogonal views through the target's centre, the target outlined, one
symmetric window with a labelled colour bar, orientation letters when given; units and no empty columns."""
from __future__ import annotations

import numpy as np
import PIL.Image
import pytest

from segxai.errors import SegxaiError
from segxai.report import Section, quantity_rows, save_views, write_report
from segxai.report.viewer import viewer_script
from segxai.report.views import view_centre
from tests.chromium import chromium, needs_chromium
from tests.test_report import count_bluish, count_lime, count_reddish, read_rgb

SHAPE = (30, 26, 22)
CENTRE = (20, 9, 14)


def volume_case():
    """A grey ramp, a target cube around CENTRE, and a map positive in the cube's upper half, negative below."""
    image = np.indices(SHAPE).sum(0).astype(float)
    target = np.zeros(SHAPE, bool)
    target[16:25, 5:14, 10:19] = True
    attribution = np.zeros(SHAPE)
    attribution[14:20, 3:16, 8:21] = 1.0
    attribution[20:27, 3:16, 8:21] = -1.0
    return image, attribution, target


def panels(rgb):
    width = rgb.shape[1] // 3
    return [rgb[:, i * width: (i + 1) * width] for i in range(3)]


def test_three_views_cut_through_the_target_centre_with_both_signs_and_its_outline(tmp_path):
    image, attribution, target = volume_case()
    assert view_centre(SHAPE, target) == CENTRE
    rgb = read_rgb(save_views(tmp_path / "views.png", image, attribution, mask=target, title="saliency"))
    assert rgb.shape[1] > 2.5 * rgb.shape[0]  # three panels side by side
    for index, panel in enumerate(panels(rgb)):
        if index > 0:  # the positive and negative halves split along axis 0, seen in the views that contain it
            assert count_reddish(panel) > 100 and count_bluish(panel) > 100, index
        else:  # slice 20 of axis 0 lies in the negative half
            assert count_bluish(panel) > 100 and count_reddish(panel) == 0
        assert count_lime(panel) > 40, index  # the target's outline in every view
    off = read_rgb(save_views(tmp_path / "off.png", image, attribution, mask=target, centre=(2, 2, 2)))
    assert count_lime(panels(off)[0]) == 0  # slice 2 of axis 0 misses the target


def test_the_outline_is_a_contour_not_a_fill(tmp_path):
    image, attribution, target = volume_case()
    rgb = read_rgb(save_views(tmp_path / "v.png", image, np.zeros(SHAPE), mask=target))
    filled = read_rgb(save_views(tmp_path / "f.png", image, np.zeros(SHAPE), mask=np.ones(SHAPE, bool)))
    lime = count_lime(panels(rgb)[2])
    assert 0 < lime < 0.5 * (panels(rgb)[2].shape[0] * panels(rgb)[2].shape[1]) / 10
    assert count_lime(panels(filled)[2]) == 0  # a region filling the plane has no outline


def test_views_follow_the_affine_so_a_flipped_permuted_copy_looks_the_same(tmp_path):
    image, attribution, target = volume_case()
    affine = np.diag([2.0, 1.5, 3.0, 1.0])
    plain = read_rgb(save_views(tmp_path / "p.png", image, attribution, mask=target))
    oriented = read_rgb(save_views(tmp_path / "o.png", image, attribution, mask=target, affine=affine))
    assert plain.shape == oriented.shape and not np.array_equal(plain, oriented)
    # The same world geometry stored as (k, j, i) with i and k reversed: the views must not change.
    turn = lambda a: np.transpose(a[::-1, :, ::-1], (2, 1, 0))
    order = np.eye(4)[[2, 1, 0, 3]]
    flip = np.diag([-1.0, 1.0, -1.0, 1.0])
    flip[:3, 3] = [SHAPE[0] - 1, 0, SHAPE[2] - 1]
    other = affine @ flip @ order  # voxel (k', j, i') of the copy -> voxel (i, j, k) of the original -> world
    assert view_centre(turn(image).shape, turn(target)) == (SHAPE[2] - 1 - CENTRE[2], CENTRE[1], SHAPE[0] - 1 - CENTRE[0])
    copy = read_rgb(save_views(tmp_path / "c.png", turn(image), turn(attribution), mask=turn(target), affine=other))
    assert copy.shape == oriented.shape
    assert np.array_equal(copy[80:], oriented[80:])  # the title (voxel indices) differs, the panels do not
    with pytest.raises(SegxaiError, match="outside the grid"):
        save_views(tmp_path / "x.png", image, attribution, centre=(0, 0, 99))
    with pytest.raises(SegxaiError, match="4x4"):
        save_views(tmp_path / "x.png", image, attribution, affine=np.eye(3))


def test_radiological_layout_puts_the_patients_right_on_the_left_and_anterior_up(tmp_path):
    shape = (21, 21, 21)  # RAS+: the last index of each axis lies to the patient's right, anterior, superior
    marker = np.zeros(shape)
    marker[15:19, 15:19, 8:13] = 1.0  # right (high i) and anterior (high j)
    rgb = read_rgb(save_views(tmp_path / "m.png", np.zeros(shape), marker, centre=(17, 17, 10), affine=np.eye(4)))
    axial = panels(rgb)[0]
    red = np.argwhere((axial[..., 0].astype(int) - axial[..., 1] > 40) & (axial[..., 0].astype(int) - axial[..., 2] > 40))
    assert len(red) > 100
    rows, cols = np.argwhere(axial.sum(-1) < 60).mean(0)  # the black image's centre
    assert red[:, 1].mean() < cols and red[:, 0].mean() < rows  # viewer's left, top


def test_view_centre_falls_back_on_the_map_peak_then_the_middle():
    ring = np.zeros((9, 9, 9), bool)
    ring[2:7, 2:7, 4] = True
    ring[3:6, 3:6, 4] = False
    centre = view_centre(ring.shape, ring)
    assert ring[centre]  # a ring-shaped target is still cut
    peak = np.zeros((9, 9, 9))
    peak[1, 7, 3] = -5.0
    assert view_centre(peak.shape, None, peak) == (1, 7, 3)
    assert view_centre((9, 8, 7)) == (4, 3, 3)


def test_2d_views_are_the_single_overlay(tmp_path):
    rgb = read_rgb(save_views(tmp_path / "2d.png", np.ones((20, 24)), np.eye(20, 24), mask=np.eye(20, 24) > 0))
    assert rgb.shape == (500, 500, 3)


def test_quantities_in_units_and_no_empty_columns(tmp_path):
    rows = quantity_rows({"method": "rise", "seconds": 12.3456, "peak_memory_bytes": 3 * 2**20,
                          "params": {"n": 1}, "forward_passes": 40})
    assert rows == [{"quantity": "method", "value": "rise"}, {"quantity": "time (s)", "value": 12.35},
                    {"quantity": "peak memory (MB)", "value": 3.0}, {"quantity": "forward passes", "value": 40}]
    table = [{"class": 1, "name": "liver", "validation Dice": ""}, {"class": 2, "name": "spleen", "validation Dice": None}]
    html = write_report(tmp_path / "r.html", "t", [Section("Model", table=table)]).read_text()
    assert "liver" in html and "validation Dice" not in html


# Counts console errors and uncaught failures from the very start, and reports them with the viewer's state once
# the page has loaded and the viewer had time to draw (virtual time: no real waiting).
ERROR_PROBE = ("<script>window.errors = 0; const logError = console.error; console.error = (...a) => "
               "{ window.errors++; logError(...a); }; addEventListener('error', () => window.errors++); "
               "addEventListener('unhandledrejection', () => window.errors++);</script>")
STATE_PROBE = ("<script>addEventListener('load', () => setTimeout(() => { const viewer = document.querySelector("
               "'.viewer'); document.body.dataset.errors = window.errors; document.body.dataset.viewer = viewer ? "
               "viewer.dataset.state : 'none'; }, 4000));</script>")
# Shows the viewer alone at the top of the page, so that a screenshot sees its canvas.
VIEWER_ONLY = "<style>header, section:not(:has(.viewer)), section > :not(.viewer) { display: none; }</style>"


@needs_chromium
def test_the_3d_report_renders_in_headless_chromium_with_views_and_viewer(tmp_path):
    from segxai.cli import main
    from segxai.data import abdomen_phantom
    from segxai.io import Image, save_array

    assert main(["train", "--phantom", "abdomen", "--shape", "48,48,24", "--steps", "12", "--out",
                 str(tmp_path / "a.pt"), "--no-progress"]) == 0
    # rows run anterior -> posterior, columns right -> left, slices upwards: a permuted, flipped affine
    affine = np.array([[0, -2.0, 0, 40], [-2.0, 0, 0, 40], [0, 0, 3.0, -30], [0, 0, 0, 1]])
    ct = abdomen_phantom((48, 48, 24), seed=5)
    save_array(ct.image[0], tmp_path / "ct.nii.gz", like=Image(ct.image, affine, "nifti"))
    out = tmp_path / "report"
    assert main(["explain", "--model", str(tmp_path / "a.pt"), "--image", str(tmp_path / "ct.nii.gz"),
                 "--target", "class:1", "--out", str(out), "--no-progress"]) == 0
    html = (out / "report.html").read_text()
    assert 'class="wide"' in html and "radiological convention" in html
    assert "http://" not in html and "https://" not in html  # nothing is fetched: the page works offline
    viewer = viewer_script() is not None
    assert ('class="viewer"' in html) == viewer
    probe = out / "probe.html"
    probe.write_text(html.replace("<head>", "<head>" + ERROR_PROBE, 1).replace("</body>", STATE_PROBE + "</body>"))
    dom = chromium(probe, tmp_path / "profile")
    assert 'data-errors="0"' in dom and f'data-viewer="{"drawn" if viewer else "none"}"' in dom
    chromium(out / "report.html", tmp_path / "profile2", screenshot=tmp_path / "report.png")
    shot = np.asarray(PIL.Image.open(tmp_path / "report.png").convert("RGB"))
    assert shot.shape == (900, 1200, 3) and count_lime(shot) > 50  # the three views with the target outlined
    if viewer:  # scrolled to the viewer: the canvas drew the scan (grey) and the map (colour) in its black box
        probe.write_text(html.replace("</head>", VIEWER_ONLY + "</head>", 1))
        chromium(probe, tmp_path / "profile3", screenshot=tmp_path / "viewer.png")
        box = np.asarray(PIL.Image.open(tmp_path / "viewer.png").convert("RGB"))[:400].astype(int)
        grey = (np.ptp(box, axis=-1) < 10) & (box.mean(-1) > 40)
        colour = np.ptp(box, axis=-1) > 80
        assert grey.sum() > 2000 and colour.sum() > 200
