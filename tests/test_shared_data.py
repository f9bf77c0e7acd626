"""segxai.data.shared: the real sample cases in ../shared/data read with the facts their SOURCE.md states."""
from __future__ import annotations

import numpy as np
import pytest

from segxai.data import shared
from segxai.errors import SegxaiError


def need(name: str) -> None:
    """Skip cleanly when the shared data (or this dataset) is not beside the repository."""
    root = shared.shared_data_dir()
    if root is None or not (root / name).is_dir():
        pytest.skip(f"shared dataset {name} not available")


def test_shared_data_dir_follows_environment(tmp_path, monkeypatch):
    (tmp_path / "toy").mkdir()
    monkeypatch.setenv(shared.ENV_VARIABLE, str(tmp_path))
    assert shared.shared_data_dir() == tmp_path
    assert shared.require_shared("toy") == tmp_path / "toy"
    with pytest.raises(SegxaiError, match="'absent' not found"):
        shared.require_shared("absent")


@pytest.fixture(scope="module")
def brats() -> shared.LabelledImage:
    need("brats-glioma-example")
    return shared.load_brats_example()


@pytest.mark.shared
@pytest.mark.parametrize(
    "modality, shape, present",
    [("ct", (122, 101, 30), 41), ("mr", (117, 91, 20), 23)],
)
def test_totalsegmentator(modality, shape, present):
    need("totalsegmentator-ct-mr")
    case = shared.load_totalsegmentator(modality)
    assert case.image.array.shape == (1, *shape) and case.labels.shape == shape
    assert case.image.spacing == pytest.approx((3.0, 3.0, 3.0))
    labels = set(np.unique(case.labels).tolist()) - {0}
    assert len(labels) == present and labels == set(case.names)
    assert case.names[5] == "liver" and (case.labels == 5).sum() > 0


def test_totalsegmentator_rejects_unknown_modality():
    with pytest.raises(SegxaiError, match="modality"):
        shared.load_totalsegmentator("pet")  # type: ignore[arg-type]


@pytest.mark.shared
def test_brats(brats):
    assert brats.image.array.shape == (4, 240, 240, 155)
    assert brats.image.channel_names == ("t1c", "t1n", "t2f", "t2w")
    assert brats.image.spacing == pytest.approx((1.0, 1.0, 1.0))
    values, counts = np.unique(brats.labels, return_counts=True)
    assert dict(zip(values.tolist(), counts.tolist())) == {0: 240 * 240 * 155 - 144732, 1: 14300, 2: 108566, 3: 21866}
    assert brats.names == {1: "necrotic core", 2: "oedema", 3: "enhancing tumour"}
    assert 1800 < brats.image.array[0].max() < 1900


@pytest.mark.shared
def test_endotect():
    need("endotect-polyp")
    cases = shared.load_endotect(limit=3)
    assert [case.name for case in cases] == sorted(case.name for case in cases) and len(cases) == 3
    for case in cases:
        assert case.image.array.shape[0] == 3 and case.image.spatial_shape in {(576, 720), (576, 768)}
        assert case.labels.shape == case.image.spatial_shape
        assert set(np.unique(case.labels).tolist()) == {0, 1}
        assert 0.01 <= case.labels.mean() <= 0.6
        assert case.names == {1: "polyp"}


@pytest.mark.shared
def test_nuclei():
    need("nuclei-he-miccai2015")
    cases = shared.load_nuclei(limit=2)
    assert [case.name for case in cases] == ["image01", "image02"]
    for case in cases:
        assert case.image.channel_names == ("R", "G", "B")
        assert case.labels.shape == case.image.spatial_shape
        instances = np.unique(case.labels)
        assert instances[0] == 0 and 68 <= len(instances) - 1 <= 351
        # haematoxylin-stained nuclei are darker than the rest of the tile
        grey = case.image.array.mean(axis=0)
        assert grey[case.labels > 0].mean() < grey[case.labels == 0].mean()
    assert cases[0].image.spatial_shape == (488, 643)


@pytest.mark.shared
def test_limit_must_not_be_negative():
    need("nuclei-he-miccai2015")
    with pytest.raises(SegxaiError, match="limit"):
        shared.load_nuclei(limit=-1)
