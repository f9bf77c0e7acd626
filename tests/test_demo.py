"""The demo end to end (small and quick here) and the promise that `import segxai` stays light."""
from __future__ import annotations

import csv
import re
import subprocess
import sys

from segxai.pipelines.demo import run_demo


def test_demo_writes_a_report_with_an_overlay_per_explained_target(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative output paths, as `make demo` uses
    report = run_demo("out", "cache", progress=False, steps={"abdomen": 150, "brain": 100},
                      shapes={"abdomen": (32, 32, 24), "brain": (48, 48, 24)})
    html = report.read_text()
    images = re.findall(r'<img[^>]+src="([^"]+)"', html)
    assert len(images) == 7  # liver, left kidney, the lesions' radial profile, modality shares, peaks by type,
    # and the causal blocks' ATE overlay and pie chart
    for source in images:
        assert (report.parent / source).is_file()
    assert "Reference models" in html and "segxai demo --out" in html
    assert "Instance SmoothGrad" in html and (report.parent / "lesions" / "instances.csv").is_file()
    assert "ROI-guided vs unrestricted" in html and (report.parent / "roi_comparison" / "comparison.csv").is_file()
    assert "Causal effect of input blocks" in html and (report.parent / "causal_blocks" / "blocks.csv").is_file()
    variants = {row["variant"] for row in csv.DictReader((report.parent / "roi_comparison" / "comparison.csv").open())}
    assert variants == {"unrestricted", "roi", "text"}
    baselines = {row["variant"]: float(row["dice"])
                 for row in csv.DictReader((report.parent / "roi_comparison" / "roi_baseline.csv").open())}
    assert baselines["text"] > 0.5 * baselines["roi"]  # the prompt finds the organ the mask ROI holds
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [
        "abdomen-32x32x24-150steps-v1.pt", "brain-48x48x24-100steps-v1.pt", "localizer-abdomen-32x32x24-600steps-v1.pt"]
    cached = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "cache").iterdir()}
    run_demo(tmp_path / "again", tmp_path / "cache", progress=False, steps={"abdomen": 150, "brain": 100},
             shapes={"abdomen": (32, 32, 24), "brain": (48, 48, 24)})
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "cache").iterdir()} == cached  # reused, not retrained


def test_import_is_light():
    """`import segxai` loads no heavy dependency (attributes load lazily); checked by module, not by the clock."""
    code = "import sys, segxai; print(sorted(m for m in ('torch', 'scipy', 'matplotlib', 'monai', 'pydantic') if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "[]"
