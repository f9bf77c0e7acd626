"""Tests for segxai.report: PNG overlays and montages (2D/3D, 1-3 channels), slice choice, HTML report."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segxai.errors import SegxaiError
from segxai.report import (
    Figure,
    Section,
    choose_slice,
    save_montage,
    save_overlay,
    write_report,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SPATIAL = {"2d": (24, 32), "3d": (24, 32, 12)}
MAP_SLICE = 7  # the 3D maps live only in this slice along the last axis
CASES = [("2d", None), ("2d", 1), ("2d", 2), ("2d", 3), ("3d", None), ("3d", 1), ("3d", 2)]
CASE_IDS = [f"{dim}-{channels or 'no'}ch" for dim, channels in CASES]


def make_image(dim: str, channels: int | None) -> np.ndarray:
    """A smooth gradient underlay, with an optional leading channel axis."""
    spatial = SPATIAL[dim]
    grid = np.indices(spatial, dtype=float)
    image = grid[-1] / spatial[-1] + grid[0] / spatial[0]
    return image if channels is None else np.stack([image * (c + 1) for c in range(channels)])


def in_plane(dim: str, plane: np.ndarray) -> np.ndarray:
    """Place a 2D plane in an empty 3D volume at MAP_SLICE (or return it as is for 2D)."""
    if dim == "2d":
        return plane
    volume = np.zeros(SPATIAL[dim])
    volume[..., MAP_SLICE] = plane
    return volume


def make_signed_map(dim: str) -> np.ndarray:
    """A positive blob on the left and a negative blob on the right, zero elsewhere."""
    h, w = SPATIAL["2d"]
    plane = np.zeros((h, w))
    plane[4:12, 4:12] = np.linspace(0.5, 3.0, 64).reshape(8, 8)
    plane[12:20, 18:28] = -2.0
    return in_plane(dim, plane)


def make_mask(dim: str) -> np.ndarray:
    plane = np.zeros(SPATIAL["2d"], dtype=np.uint8)
    plane[6:18, 8:24] = 1
    return in_plane(dim, plane)


def read_rgb(path: Path) -> np.ndarray:
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB")).astype(int)


def map_area(rgb: np.ndarray, panel: int = 0, panel_width: int | None = None) -> np.ndarray:
    """The left 70% of a panel: the image axes, without the colour bar (which always holds every colour)."""
    width = panel_width or rgb.shape[1]
    return rgb[:, panel * width: panel * width + int(0.7 * width)]


def count_reddish(rgb: np.ndarray) -> int:
    r, g, b = np.moveaxis(rgb, -1, 0)
    return int(((r - b > 30) & (r - g > 30)).sum())


def count_bluish(rgb: np.ndarray) -> int:
    r, g, b = np.moveaxis(rgb, -1, 0)
    return int(((b - r > 30) & (b - g > 10)).sum())


def count_lime(rgb: np.ndarray) -> int:
    r, g, b = np.moveaxis(rgb, -1, 0)
    return int(((g > 180) & (r < 120) & (b < 120)).sum())


def count_grey(rgb: np.ndarray) -> int:
    """Mid-grey pixels (R == G == B, not white background nor black text)."""
    r, g, b = np.moveaxis(rgb, -1, 0)
    return int(((np.abs(r - g) <= 2) & (np.abs(g - b) <= 2) & (r > 30) & (r < 225)).sum())


# --- choose_slice -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("axis", [0, 1, 2, -1, -3])
def test_choose_slice_finds_the_blob(axis: int) -> None:
    volume = np.zeros((10, 11, 12))
    index = [slice(None)] * 3
    index[axis] = 7
    volume[tuple(index)] = 0.1
    blob = [2, 3, 4]
    blob[axis % 3] = 7
    volume[tuple(blob)] = -5.0  # the strongest map is negative: |weights| counts
    assert choose_slice(volume, axis=axis) == 7


def test_choose_slice_uses_weights_and_breaks_ties_at_the_middle() -> None:
    volume = np.ones((4, 4, 9))
    assert choose_slice(volume) == 4
    weights = np.zeros_like(volume)
    weights[..., [1, 5, 8]] = 1.0
    assert choose_slice(volume, weights) == 5
    assert choose_slice(np.zeros((4, 4, 10))) == 4


@pytest.mark.parametrize("volume,weights", [(np.zeros((4, 4)), None), (np.zeros((4, 4, 4)), np.zeros((4, 4, 5)))])
def test_choose_slice_rejects_bad_shapes(volume: np.ndarray, weights: np.ndarray | None) -> None:
    with pytest.raises(SegxaiError, match="shape"):
        choose_slice(volume, weights)


# --- save_overlay -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dim,channels", CASES, ids=CASE_IDS)
def test_overlay_is_a_png_with_signed_colours_and_contour(tmp_path: Path, dim: str, channels: int | None) -> None:
    out = save_overlay(tmp_path / "overlay.png", make_image(dim, channels), make_signed_map(dim),
                       mask=make_mask(dim), title="saliency")
    assert out == tmp_path / "overlay.png"
    rgb = read_rgb(out)
    assert rgb.shape == (500, 500, 3)  # 5x5 in at 100 dpi
    area = map_area(rgb)
    assert count_reddish(area) > 200 and count_bluish(area) > 200
    assert count_lime(area) > 150  # the contour, well beyond the legend's short line
    assert os.listdir(tmp_path) == ["overlay.png"]


@pytest.mark.parametrize("dim", ["2d", "3d"])
def test_overlay_accepts_roi_without_attribution(tmp_path: Path, dim: str) -> None:
    roi = np.roll(make_mask(dim), 3, axis=1)
    rgb = read_rgb(save_overlay(tmp_path / "o.png", make_image(dim, None), mask=make_mask(dim), roi=roi))
    assert count_lime(map_area(rgb)) > 150
    r, g, b = np.moveaxis(map_area(rgb), -1, 0)
    assert ((r > 200) & (g > 200) & (b < 100)).sum() > 50  # yellow ROI outline


def test_3d_overlay_shows_the_strongest_slice_unless_told(tmp_path: Path) -> None:
    image, attribution = make_image("3d", None), make_signed_map("3d")
    chosen = read_rgb(save_overlay(tmp_path / "a.png", image, attribution))
    assert count_reddish(map_area(chosen)) > 200
    other = read_rgb(save_overlay(tmp_path / "b.png", image, attribution, slice_index=2))
    assert count_reddish(map_area(other)) == 0
    along_rows = read_rgb(save_overlay(tmp_path / "c.png", image, attribution, axis=0))
    assert count_reddish(map_area(along_rows)) > 20


def test_unsigned_overlay_has_no_blue(tmp_path: Path) -> None:
    rgb = read_rgb(save_overlay(tmp_path / "u.png", make_image("2d", None), make_signed_map("2d"), signed=False))
    area = map_area(rgb)
    assert count_bluish(area) == 0
    r, g, b = np.moveaxis(area, -1, 0)
    assert ((r - b > 40) & (g > 60)).sum() > 100  # inferno's orange/yellow end


def test_zero_attribution_is_transparent(tmp_path: Path) -> None:
    image = make_image("2d", None)
    sparse = np.zeros(SPATIAL["2d"])
    sparse[0, 0] = 1.0
    shown = count_grey(map_area(read_rgb(save_overlay(tmp_path / "z.png", image, sparse))))
    covered = count_grey(map_area(read_rgb(save_overlay(tmp_path / "f.png", image, np.ones(SPATIAL["2d"])))))
    assert shown > 50_000  # the grey underlay shows through almost the whole image
    assert covered < shown / 5


@pytest.mark.parametrize(
    "image,kwargs,shapes",
    [
        (np.zeros((24, 32)), {"attribution": np.zeros((24, 31))}, "(24, 31)"),
        (np.zeros((24, 32)), {"mask": np.zeros((32, 24))}, "(32, 24)"),
        (np.zeros((2, 24, 32)), {"attribution": np.zeros((24, 32)), "roi": np.zeros((24, 33))}, "(24, 33)"),
        (np.zeros((24, 32, 12)), {"attribution": np.zeros((24, 32))}, "(24, 32, 12)"),
        (np.zeros((5, 24, 32, 12)), {}, "(5, 24, 32, 12)"),
        (np.zeros(24), {}, "(24,)"),
    ],
)
def test_overlay_shape_mismatch(tmp_path: Path, image: np.ndarray, kwargs: dict, shapes: str) -> None:
    with pytest.raises(SegxaiError, match=r"shape.*" + re.escape(shapes)):
        save_overlay(tmp_path / "x.png", image, **kwargs)
    assert not os.listdir(tmp_path)


@pytest.mark.parametrize("kwargs", [{"slice_index": 12}, {"slice_index": -1}, {"axis": 3}, {"alpha": 1.5}])
def test_overlay_rejects_bad_options(tmp_path: Path, kwargs: dict) -> None:
    with pytest.raises(SegxaiError):
        save_overlay(tmp_path / "x.png", make_image("3d", None), make_signed_map("3d"), **kwargs)


def test_overlay_rejects_nan(tmp_path: Path) -> None:
    attribution = make_signed_map("2d")
    attribution[0, 0] = np.nan
    with pytest.raises(SegxaiError, match="NaN"):
        save_overlay(tmp_path / "x.png", make_image("2d", None), attribution)


def test_failed_write_leaves_no_temp_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    temp_names = []

    def failing_replace(src: str, dst: str) -> None:
        temp_names.append(Path(src).name)
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError):
        save_overlay(tmp_path / "x.png", make_image("2d", None), make_signed_map("2d"))
    assert temp_names and temp_names[0].endswith(".png") and temp_names[0] != "x.png"
    assert not os.listdir(tmp_path)


# --- save_montage -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dim,channels", [("2d", None), ("2d", 3), ("3d", 1)])
def test_montage_one_panel_per_map(tmp_path: Path, dim: str, channels: int | None) -> None:
    signed = make_signed_map(dim)
    maps = {"saliency": signed, "occlusion": 1000.0 * signed, "flipped": -signed}
    out = save_montage(tmp_path / "m.png", make_image(dim, channels), maps, mask=make_mask(dim))
    rgb = read_rgb(out)
    assert rgb.shape == (450, 3 * 450, 3)
    for panel in range(3):  # each map has its own scale, so the 1000x map is as visible as the others
        area = map_area(rgb, panel, 450)
        assert count_reddish(area) > 150 and count_bluish(area) > 150 and count_lime(area) > 100
    assert os.listdir(tmp_path) == ["m.png"]


def test_montage_rejects_empty_and_mismatched(tmp_path: Path) -> None:
    with pytest.raises(SegxaiError, match="at least one"):
        save_montage(tmp_path / "m.png", make_image("2d", None), {})
    with pytest.raises(SegxaiError, match=r"'b'.*\(24, 31\)"):
        save_montage(tmp_path / "m.png", make_image("2d", None), {"a": np.zeros((24, 32)), "b": np.zeros((24, 31))})
    assert not os.listdir(tmp_path)


# --- write_report -------------------------------------------------------------------------------------------


@pytest.fixture
def report_dir(tmp_path: Path) -> Path:
    (tmp_path / "figs").mkdir()
    save_overlay(tmp_path / "figs" / "overlay.png", make_image("2d", None), make_signed_map("2d"))
    save_montage(tmp_path / "montage.png", make_image("2d", None), {"a": make_signed_map("2d")})
    return tmp_path


def test_report_contents(report_dir: Path) -> None:
    sections = [
        Section("Attribution maps", text="First paragraph.\n\nSecond <b>paragraph</b>.",
                figures=[Figure("figs/overlay.png", "Saliency, class 1"), Figure("montage.png")]),
        Section("Faithfulness", table=[{"method": "saliency", "deletion AUC": 0.123456, "passes": 3},
                                       {"method": "ig", "insertion AUC": np.float32(2.718282)}]),
    ]
    out = write_report(report_dir / "report.html", "Case <script>alert(1)</script>", sections,
                       command="segxai explain --model m.pt --out 'a&b'", summary={"model": "unet", "dice": 0.876543})
    html = out.read_text(encoding="utf-8")
    assert "Attribution maps" in html and "Faithfulness" in html
    assert '<img src="figs/overlay.png"' in html and '<img src="montage.png"' in html
    assert "Saliency, class 1" in html
    assert "<p>First paragraph.</p>" in html and "Second &lt;b&gt;paragraph&lt;/b&gt;." in html
    for value in ("saliency", "0.1235", "3", "2.718", "deletion AUC", "insertion AUC", "unet", "0.8765"):
        assert value in html
    assert html.index("deletion AUC") < html.index("passes") < html.index("insertion AUC")  # first-seen order
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "<script>" not in html
    assert "segxai explain --model m.pt --out &#39;a&amp;b&#39;" in html and "<pre>" in html
    assert "Reproduce" in html and "0.1.0" in html
    assert sorted(os.listdir(report_dir)) == ["figs", "montage.png", "report.html"]


def test_report_without_extras(tmp_path: Path) -> None:
    html = write_report(tmp_path / "sub" / "r.html", "Plain", [Section("Only")]).read_text(encoding="utf-8")
    assert "Only" in html and "Reproduce" not in html and "Summary" not in html


def test_report_missing_figure(report_dir: Path) -> None:
    with pytest.raises(SegxaiError, match="missing.png"):
        write_report(report_dir / "report.html", "t", [Section("s", figures=[Figure("missing.png")])])
    assert not (report_dir / "report.html").exists()


# --- packaging ----------------------------------------------------------------------------------------------


def test_import_is_cheap() -> None:
    code = "import sys, segxai.report; assert 'matplotlib' not in sys.modules and 'jinja2' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_template_is_package_data() -> None:
    assert (resources.files("segxai.report") / "templates" / "report.html").is_file()
