"""`segxai run`: config validation, outputs + manifest + report, resuming, failing cases, the sanity check."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import nibabel as nib
import PIL.Image
import numpy as np
import pytest
import torch
import yaml

from segxai import methods as method_registry
from segxai.errors import SegxaiError
from segxai.methods.base import Explainer
from segxai.pipelines.runs import parse_config, run
from segxai.pipelines.runs.worker import CaseWorker
from tests.chromium import chromium, needs_chromium

SHAPE = (32, 32)
N_CASES = 4


class EdgeDetector(Explainer):
    """A degenerate explainer: the image's gradient magnitude, whatever the model."""

    name = "edges"

    def _attribute(self, x, target, roi, context):
        dy, dx = torch.gradient(x, dim=(2, 3))
        return (dy**2 + dx**2).sqrt(), None


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, Path, str]:
    """Four 2D abdomen phantoms (NIfTI images + label maps) and a tiny random U-Net checkpoint; the target is a
    class this network predicts on every case."""
    from segxai.models.checkpoint import save_checkpoint
    from segxai.models.presets import build_network, network_config
    from segxai.data import abdomen_phantom
    from segxai.io import save_array
    from segxai.preprocess import normalize_intensity

    root = tmp_path_factory.mktemp("data")
    (root / "labels").mkdir()
    phantoms = [abdomen_phantom(SHAPE, seed=i) for i in range(N_CASES)]
    for i, phantom in enumerate(phantoms):
        save_array(phantom.image[0], root / f"case{i}.nii.gz")
        save_array(phantom.labels.astype(np.uint8), root / "labels" / f"case{i}.nii.gz")
    intensity = {"kind": "window", "low": -200.0, "high": 700.0}
    config = network_config("unet2d", 1, 7, names=dict(phantoms[0].names), intensity=intensity)
    config["network"].update(channels=[4, 8], strides=[2])
    torch.manual_seed(0)
    net = build_network(config).eval()
    with torch.no_grad():
        predicted = [set(net(torch.from_numpy(normalize_intensity(p.image, intensity))[None]).argmax(1).unique().tolist())
                     for p in phantoms]
    cls = min(set.intersection(*predicted) - {0})
    return root, save_checkpoint(root.parent / "model.pt", net, config), f"class:{cls}"


def write_config(dataset, out: Path, **changes) -> Path:
    root, checkpoint, target = dataset
    config = {
        "model": {"checkpoint": str(checkpoint)},
        "dataset": {"root": str(root), "masks": "labels/{case}.nii.gz"},
        "methods": ["saliency"],
        "targets": [target],
        "rois": ["none", "reference+2"],
        "evaluation": {"faithfulness": {"steps": 4}, "sanity": {"steps": 2}, "stability": {"noise": 0.02}},
        "out": str(out),
        **changes,
    }
    path = out.parent / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def count_explains(monkeypatch) -> list[str]:
    """Every `Explainer.explain` call, by method name."""
    calls: list[str] = []
    original = Explainer.explain

    def counted(self, *args, **kwargs):
        calls.append(self.name)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Explainer, "explain", counted)
    return calls


GOOD = {"model": "m.pt", "dataset": {"root": "data"}, "methods": ["saliency"], "targets": ["class:1"]}


@pytest.mark.parametrize("change, message", [
    ({"extra": 1}, "extra: unknown key; known keys: model, dataset, methods, targets, rois, evaluation, out, seed, report"),
    ({"methods": ["nosuch"]}, "methods[0].name: unknown method 'nosuch'; choose one of "),
    ({"methods": [{"name": "rise", "parmas": {}}]}, "methods[0].parmas: unknown key; known keys: name, params"),
    ({"methods": ["rise", "rise"]}, "methods: each entry may appear once"),
    ({"methods": []}, "methods: expected a non-empty list"),
    ({"targets": ["organ:1"]}, "targets[0]: unknown target"),
    ({"targets": ["instances:1"]}, "targets[0]: 'instances:1' is for `segxai explain`"),
    ({"rois": ["box:3"]}, "rois[0]: ROI 'box:3': give box:START:SIZE"),
    ({"rois": ["nowhere"]}, "rois[0]: unknown ROI 'nowhere'"),
    ({"rois": ["reference+-1"]}, "rois[0]: ROI 'reference+-1': the margin"),
    ({"rois": ["mask:4"]}, "rois[0]: ROI 'mask:4': the file data/4 does not exist; the case's own mask is the ROI reference"),
    ({"rois": "none"}, "rois: input should be a list, not 'none'"),
    ({"dataset": {"root": "data", "layout": "nope"}},
     "dataset.layout: input should be 'folder', 'kvasir-seg', 'msd', 'nnunet' or 'flare22', not 'nope'"),
    ({"dataset": {"root": "data", "masks": "labels/x.png"}}, "dataset.masks: the pattern"),
    ({"dataset": {"root": "data", "masks": "{case}/{id}.png"}}, "dataset.masks: bad pattern"),
    ({"evaluation": {"sanity": {"steps": 0}}}, "evaluation.sanity.steps: input should be greater than or equal to 1, not 0"),
    ({"evaluation": {"threshold": 2}}, "evaluation.threshold: input should be less than or equal to 1"),
    ({"evaluation": {"stability": {"sigma": 1}}}, "evaluation.stability.sigma: unknown key; known keys: noise, samples"),
    ({"seed": "zero"}, "seed: input should be a valid integer, not 'zero'"),
    ({"seed": "3"}, "seed: input should be a valid integer"),  # values are not coerced
    ({"model": {}}, "model.path: required key is missing"),
    ({"model": {"checkpoint": ""}}, "model.path: expected a non-empty string"),  # the older name of path
    ({"rois": ["reference+2"]}, "config: the reference ROIs need the cases' masks: set dataset.masks"),
])
def test_config_errors_name_the_key(change, message):
    with pytest.raises(SegxaiError, match=re.escape(message)):
        parse_config({**GOOD, **change}, base="data")


def test_config_reports_every_bad_key_at_once():
    with pytest.raises(SegxaiError) as error:
        parse_config({**GOOD, "seed": -1, "evaluation": {"sanity": {"max_correlation": 2}}})
    assert str(error.value) == ("evaluation.sanity.max_correlation: input should be less than or equal to 1, not 2; "
                                "seed: input should be greater than or equal to 0, not -1")


def test_config_defaults_and_paths(tmp_path):
    config = parse_config({**GOOD, "methods": ["saliency", {"name": "rise", "params": {"n_masks": 8}}]}, base=tmp_path)
    assert config.model.checkpoint == tmp_path / "m.pt" and config.out == tmp_path / "run_out"
    assert [m.name for m in config.methods] == ["saliency", "rise"] and config.methods[1].params == {"n_masks": 8}
    assert [str(r) for r in config.rois] == ["none"] and config.evaluation.sanity.steps == 3
    kvasir = parse_config({**GOOD, "dataset": {"root": "d", "layout": "kvasir-seg"}}).dataset
    assert (kvasir.images, kvasir.masks) == ("images", "masks/{name}")  # the layout's defaults
    off = parse_config({**GOOD, "evaluation": {"sanity": False, "stability": True}}).evaluation
    assert off.sanity is None and off.stability.noise == 0.05 and off.faithfulness.steps == 10


def test_config_fingerprint_follows_the_settings_not_the_output_folder():
    first = parse_config({**GOOD, "out": "a"})
    assert first.fingerprint == parse_config({**GOOD, "out": "b", "report": {"cases": 2}}).fingerprint
    assert first.fingerprint != parse_config({**GOOD, "rois": ["none", "prediction+2"]}).fingerprint
    assert first.fingerprint != parse_config({**GOOD, "seed": 1}).fingerprint


def test_run_writes_outputs_manifest_summaries_and_report(dataset, tmp_path, monkeypatch):
    monkeypatch.setitem(method_registry.METHODS, "edges", EdgeDetector)
    evaluation = {"faithfulness": {"steps": 4, "block": 8}, "sanity": {"steps": 2}, "stability": {"noise": 0.02}}
    result = run(write_config(dataset, tmp_path / "out", methods=["saliency", "edges"], evaluation=evaluation),
                 progress=False)
    out = tmp_path / "out"
    assert result.processed == [f"case{i}" for i in range(N_CASES)] and not result.failed
    records = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [r["status"] for r in records] == ["done"] * N_CASES
    first = records[0]
    assert len(first["rows"]) == 4  # 2 methods x 1 target x 2 ROIs
    for path in first["outputs"].values():
        assert (out / path).is_file()
    name = f"{dataset[2].replace(':', '-')}__reference-2"
    assert (out / "cases" / "case0" / "saliency" / f"{name}_case0.nii.gz").is_file()
    assert (out / "cases" / "case0" / "prediction.nii.gz").is_file()
    row = next(r for r in first["rows"] if r["method"] == "saliency" and r["roi"] == "none")
    for key in ("dice", "iou", "pointing_game", "energy_inside", "deletion_auc", "insertion_auc", "sanity_spearman",
                "sanity_ssim", "sanity_pass", "stability_spearman", "stability_ssim", "seconds", "forward_passes"):
        assert key in row, key
    # The sanity check flags the model-blind edge detector and passes saliency, on every case.
    rows = [r for record in records for r in record["rows"]]
    assert all(r["sanity_pass"] for r in rows if r["method"] == "saliency" and r["roi"] == "none")
    assert not any(r["sanity_pass"] for r in rows if r["method"] == "edges")
    assert all(r["sanity_spearman"] == pytest.approx(1.0) for r in rows if r["method"] == "edges")
    summary = (out / "summary_by_method.csv").read_text().splitlines()
    assert summary[0].startswith("method,rows,") and len(summary) == 3
    assert (out / "summary_by_method_target.csv").is_file()
    html = (out / "report.html").read_text()
    for text in ("Method comparison", "Metric distributions", "runtime_vs_passes.png", "box_dice.png",
                 "Configuration", "dataset.masks", "saliency/"):
        assert text in html, text
    assert (out / "figures" / "box_sanity_spearman.png").is_file()
    for key in ("baseline_roi_dice", "baseline_centred_blob_dice", "baseline_blurred_map_dice", "leakage",
                "beats_roi_baseline", "deletion_auc_random", "insertion_auc_blurred", "block_area", "block_area_random"):
        assert key in row, key
    # Dataset evidence: the mass per segment of the prediction, its distribution, outliers, baselines, intervals.
    segments = [r for r in first["segments"] if r["method"] == "saliency" and r["roi"] == "none"]
    prediction = np.asarray(nib.load(out / "cases" / "case0" / "prediction.nii.gz").dataobj)
    assert sorted(r["segment"] for r in segments) == sorted(np.unique(prediction).tolist())
    assert sum(r["voxels"] for r in segments) == prediction.size and sum(r["absolute_share"] for r in segments) == pytest.approx(1.0)
    for name in ("segments", "segments_distribution", "segments_outliers", "baselines", "intervals"):
        assert (out / f"{name}.csv").is_file(), name
    intervals = [r for r in csv_rows(out / "intervals.csv") if r["metric"] == "deletion_auc"]
    assert len(intervals) == 4 and all(float(r["low"]) <= float(r["mean"]) <= float(r["high"]) for r in intervals)
    assert {r["cases"] for r in intervals} == {str(N_CASES)}
    baselines = csv_rows(out / "baselines.csv")
    assert {r["variant"] for r in baselines} == {f"{m} | ROI {r}" for m in ("saliency", "edges") for r in ("none", "reference+2")}
    for text in ("Which structures drive which predictions", "segments_saliency.png", "segments_edges.png",
                 "Localisation beside trivial baselines", "bootstrap intervals", "centred_blob dice"):
        assert text in html, text
    pq = pytest.importorskip("pyarrow.parquet")
    table = pq.read_table(out / "summary_by_method.parquet").to_pylist()
    assert [r["method"] for r in table] == [line.split(",")[0] for line in summary[1:]]
    assert len(pq.read_table(out / "segments.parquet").to_pylist()) == len(csv_rows(out / "segments.csv"))


def csv_rows(path: Path) -> list[dict[str, str]]:
    import csv

    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


# Count the report's images that failed to load once the page has loaded, into an attribute --dump-dom shows.
IMAGE_PROBE = ("<script>addEventListener('load', () => document.body.dataset.broken = "
               "[...document.images].filter(i => !(i.complete && i.naturalWidth > 0)).length);</script>")


@needs_chromium
def test_report_renders_in_headless_chromium(dataset, tmp_path):
    run(write_config(dataset, tmp_path / "out"), progress=False)
    out = tmp_path / "out"
    probe = out / "report_probe.html"  # beside the report, so relative figure paths resolve the same way
    probe.write_text((out / "report.html").read_text().replace("</body>", IMAGE_PROBE + "</body>"))
    dom = chromium(probe, tmp_path / "profile")
    images = re.findall(r"<img\b", dom)
    assert len(images) >= 3 and "Method comparison" in dom and "<table" in dom
    assert 'data-broken="0"' in dom
    chromium(probe, tmp_path / "profile2", screenshot=tmp_path / "shot.png")
    shot = np.asarray(PIL.Image.open(tmp_path / "shot.png").convert("L"))
    assert shot.shape == (900, 1200) and shot.std() > 5  # something was drawn, not a blank page


def test_interrupted_run_resumes_without_repeating_work(dataset, tmp_path, monkeypatch, count_explains):
    run(write_config(dataset, tmp_path / "full"), progress=False)
    full = len(count_explains)
    count_explains.clear()

    original = CaseWorker.process
    seen = []

    def interrupt_third(self, case):
        if len(seen) == 2:
            raise KeyboardInterrupt
        seen.append(case.name)
        return original(self, case)

    config = write_config(dataset, tmp_path / "resumed")
    with monkeypatch.context() as patch:
        patch.setattr(CaseWorker, "process", interrupt_third)
        with pytest.raises(KeyboardInterrupt):
            run(config, progress=False)
    assert len((tmp_path / "resumed" / "manifest.jsonl").read_text().splitlines()) == 2
    result = run(config, progress=False)
    assert result.skipped == ["case0", "case1"] and result.processed == ["case2", "case3"]
    assert len(count_explains) == full  # each case explained once over both runs
    maps = sorted(p.relative_to(tmp_path / "full") for p in (tmp_path / "full" / "cases").rglob("*.nii.gz"))
    assert maps == sorted(p.relative_to(tmp_path / "resumed") for p in (tmp_path / "resumed" / "cases").rglob("*.nii.gz"))
    assert len(maps) == N_CASES * 3  # the prediction and two maps per case
    for path in maps:
        np.testing.assert_array_equal(nib.load(tmp_path / "full" / path).get_fdata(),
                                      nib.load(tmp_path / "resumed" / path).get_fdata())
    assert len(run(config, progress=False).processed) == 0


def test_failing_case_is_recorded_and_others_continue(dataset, tmp_path):
    root, checkpoint, target = dataset
    broken = tmp_path / "data"
    broken.mkdir()
    for path in sorted(root.glob("case[01].nii.gz")):
        (broken / path.name).write_bytes(path.read_bytes())
    (broken / "labels").symlink_to(root / "labels")
    (broken / "case9.nii.gz").write_bytes(b"not a nifti file")
    config = write_config((broken, checkpoint, target), tmp_path / "out", rois=["none"],
                          evaluation={"faithfulness": False, "sanity": False, "stability": False})
    result = run(config, progress=False)
    assert result.failed == ["case9"]
    record = next(r for r in result.records if r["case"] == "case9")
    assert record["status"] == "failed" and "case9" in record["error"]
    assert [r["status"] for r in result.records if r["case"] != "case9"] == ["done", "done"]
    assert "Failed cases" in (tmp_path / "out" / "report.html").read_text()



def test_prediction_roi_restricts_maps_and_bad_method_settings_stop_before_any_case(dataset, tmp_path):
    from scipy import ndimage

    cls = int(dataset[2].split(":")[1])
    off = {"faithfulness": False, "sanity": False, "stability": False}
    result = run(write_config(dataset, tmp_path / "out", rois=["prediction+1"], evaluation=off), progress=False)
    assert not result.failed
    folder = tmp_path / "out" / "cases" / "case0"
    predicted = np.asarray(nib.load(folder / "prediction.nii.gz").dataobj) == cls
    attribution = np.asarray(nib.load(next((folder / "saliency").glob("*__prediction-1_*.nii.gz"))).dataobj)
    grown = ndimage.binary_dilation(predicted, np.ones((3, 3), bool))
    assert np.abs(attribution[~grown]).max() == 0 and np.abs(attribution[grown]).max() > 0
    with pytest.raises(SegxaiError, match="bad setting for rise"):
        run(write_config(dataset, tmp_path / "bad", methods=[{"name": "rise", "params": {"n_maks": 8}}],
                         evaluation=off), progress=False)
    assert not (tmp_path / "bad" / "cases").exists()

def test_cli_run_and_bad_config(dataset, tmp_path, capsys):
    from segxai.cli import main

    config = write_config(dataset, tmp_path / "out", rois=["none"],
                          evaluation={"faithfulness": False, "sanity": False, "stability": False})
    assert main(["run", str(config), "--no-progress"]) == 0
    assert "4 case(s) run" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**GOOD, "methods": ["saliency"], "rois": ["nowhere"]}))
    assert main(["run", str(bad)]) == 2
    assert "rois[0]: unknown ROI 'nowhere'" in capsys.readouterr().err


def test_layouts_and_case_folders(tmp_path):
    from segxai.pipelines.runs.config import DatasetConfig
    from segxai.pipelines.runs.dataset import discover_cases

    kvasir = tmp_path / "kvasir"
    for folder in ("images", "masks"):
        (kvasir / folder).mkdir(parents=True)
        for name in ("cju0.jpg", "cju1.jpg"):
            (kvasir / folder / name).write_bytes(b"")
    (kvasir / "images" / "notes.txt").write_text("not an image")
    cases = discover_cases(parse_config({**GOOD, "dataset": {"root": str(kvasir), "layout": "kvasir-seg"}}).dataset)
    assert [(c.name, c.images[0].name, c.mask) for c in cases] == [
        ("cju0", "cju0.jpg", kvasir / "masks" / "cju0.jpg"), ("cju1", "cju1.jpg", kvasir / "masks" / "cju1.jpg")]

    flare = tmp_path / "flare"
    for folder, names in (("imagesTr", ("F_0002_0001.nii.gz", "F_0002_0000.nii.gz", "F_0001_0000.nii.gz")),
                          ("labelsTr", ("F_0001.nii.gz", "F_0002.nii.gz"))):
        (flare / folder).mkdir(parents=True)
        for name in names:
            (flare / folder / name).write_bytes(b"")
    cases = discover_cases(parse_config({**GOOD, "dataset": {"root": str(flare), "layout": "flare22"}}).dataset)
    assert [(c.name, [p.name for p in c.images], c.mask.name) for c in cases] == [
        ("F_0001", ["F_0001_0000.nii.gz"], "F_0001.nii.gz"),
        ("F_0002", ["F_0002_0000.nii.gz", "F_0002_0001.nii.gz"], "F_0002.nii.gz")]
    (flare / "imagesTr" / "odd.nii.gz").write_bytes(b"")
    with pytest.raises(SegxaiError, match="does not follow the flare22 naming"):
        discover_cases(parse_config({**GOOD, "dataset": {"root": str(flare), "layout": "flare22"}}).dataset)

    brain = tmp_path / "brain"
    for case in ("p1", "p2"):
        (brain / case).mkdir(parents=True)
        for name in ("t1.nii.gz", "flair.nii.gz", "seg.nii.gz"):
            (brain / case / name).write_bytes(b"")
    (brain / "p2" / "flair2.nii.gz").write_bytes(b"")
    config = DatasetConfig(root=brain, masks="{case}/seg.nii.gz", modalities=("flair*", "t1*"))
    first, second = discover_cases(config)
    assert [p.name for p in first.images] == ["flair.nii.gz", "t1.nii.gz"] and first.mask == brain / "p1" / "seg.nii.gz"
    assert "'flair*' matches 2 files" in second.problem
    with pytest.raises(SegxaiError, match="no cases"):
        discover_cases(DatasetConfig(root=kvasir / "masks", include="*.png"))


def test_ray_executor_needs_ray(dataset, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(SegxaiError, match=r"pip install 'segxai\[ray\]'"):
        run(write_config(dataset, tmp_path / "out"), executor="ray", progress=False)


@pytest.mark.skipif(not os.environ.get("SEGXAI_RAY_TESTS"), reason="starts a Ray instance (about 30 s): set SEGXAI_RAY_TESTS=1")
def test_ray_executor_matches_local(dataset, tmp_path):
    """Integration: `SEGXAI_RAY_TESTS=1 .venv/bin/python -m pytest -n 0 tests/test_runs.py -k ray` (needs ray)."""
    ray = pytest.importorskip("ray")
    config = write_config(dataset, tmp_path / "local", rois=["none"])
    local = run(config, progress=False)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        on_ray = run(config, out=tmp_path / "ray", executor="ray", workers=2, progress=False)
    finally:
        ray.shutdown()
    assert on_ray.processed == local.processed and not on_ray.failed
    assert len({r["worker"]["pid"] for r in on_ray.records}) == 2
    for mine, theirs in zip(local.records, on_ray.records):
        assert mine["outputs"] == theirs["outputs"]
        for a, b in zip(mine["rows"], theirs["rows"]):
            assert {k: v for k, v in a.items() if k != "seconds"} == pytest.approx(
                {k: v for k, v in b.items() if k != "seconds"})
