"""Attribution mass per segment: a model that reads one structure puts the mass there, with the weight's sign;
dataset distributions and robust outlier flags."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from segxai.errors import SegxaiError
from segxai.methods import Occlusion, Saliency
from segxai.metrics.aggregate import robust_z, segment_distribution, segment_mass, segment_matrix, segment_outliers
from segxai.targets import ClassRegion

pytestmark = pytest.mark.usefixtures("one_thread")


class ReadsOneSegment(nn.Module):
    """Class 1's logit at every voxel is `sum_p weight(p) x_channel(p)`, with `weight` nonzero only on one
    segment: the model reads that structure of that channel and nothing else; class 0's logit is 0."""

    def __init__(self, weight: torch.Tensor, channel: int) -> None:
        super().__init__()
        self.register_buffer("weight", weight)
        self.channel = channel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        read = (x[:, self.channel] * self.weight).flatten(1).sum(1)
        logit = read.view(-1, *(1,) * (x.ndim - 2)).expand(x.shape[0], *x.shape[2:])
        return torch.stack([torch.zeros_like(logit), logit], 1)


def phantom(dims: int) -> tuple[np.ndarray, torch.Tensor]:
    """Three segments on an 8^dims grid: background 0, a block 1 (the read one), a block 2."""
    labels = np.zeros((8,) * dims, dtype=np.int64)
    labels[(slice(0, 4),) * dims] = 1
    labels[(slice(4, 8),) * dims] = 2
    x = torch.rand((2, *labels.shape), generator=torch.Generator().manual_seed(0)) + 0.5
    return labels, x


@pytest.mark.parametrize("sign", [1.0, -1.0])
@pytest.mark.parametrize("method", ["saliency", "occlusion"])
def test_mass_lands_on_the_segment_the_model_reads_with_its_sign(dims, sign, method):
    labels, x = phantom(dims)
    read = torch.from_numpy(labels == 1).double() * sign * 0.5
    net = ReadsOneSegment(read.float(), channel=1)
    explainer = Saliency(net) if method == "saliency" else Occlusion(net, window=2, stride=2)  # windows tile the blocks
    explanation = explainer.explain(x, ClassRegion(1, reduce="mean"), progress=False)
    per_channel = explanation.attribution.shape[0] == 2  # occlusion occludes both channels together: one map
    rows = segment_mass(explanation, labels, names={0: "background", 1: "read", 2: "other"},
                        channel_names=["ignored", "used"] if per_channel else None)
    by = {(r["channel"], r["name"]): r for r in rows}
    channels = ("used", "all") if per_channel else ("c0",)
    assert {r["channel"] for r in rows} == ({"ignored", *channels} if per_channel else {"c0"})
    voxels = int((labels == 1).sum())
    for channel in channels:
        hit = by[(channel, "read")]
        assert hit["voxels"] == voxels and np.sign(hit["signed"]) == sign
        assert hit["absolute_share"] == pytest.approx(1.0)
        assert hit["density"] == pytest.approx(labels.size / voxels)  # all the mass in 1/2^dims of the grid
        assert hit["signed_mean"] == pytest.approx(hit["signed"] / voxels)
        for other in ("background", "other"):
            assert by[(channel, other)]["absolute"] == pytest.approx(0.0, abs=1e-6)
    if per_channel:  # the gradient is the weight itself: mean over the segment = 0.5 * sign; channel 0 is unread
        assert by[("used", "read")]["signed_mean"] == pytest.approx(0.5 * sign, rel=1e-5)
        assert all(by[("ignored", name)]["absolute"] == pytest.approx(0.0, abs=1e-6) for name in ("read", "other"))
        assert np.isnan(by[("ignored", "read")]["absolute_share"])  # a channel without mass has nothing to place


def test_channel_sum_rows_add_up_and_a_map_without_channels_works():
    labels, _ = phantom(2)
    values = torch.randn((3, 8, 8), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    rows = segment_mass(values, labels)
    total = {r["segment"]: r for r in rows if r["channel"] == "all"}
    for segment in (0, 1, 2):
        parts = [r for r in rows if r["segment"] == segment and r["channel"] != "all"]
        assert total[segment]["signed"] == pytest.approx(sum(r["signed"] for r in parts))
        assert total[segment]["signed"] == pytest.approx(float(values.sum(0)[torch.from_numpy(labels == segment)].sum()))
    single = segment_mass(values.sum(0), labels)
    assert [r["channel"] for r in single] == ["c0"] * 3
    assert sum(r["absolute_share"] for r in single) == pytest.approx(1.0)


def test_matrix_distribution_and_outliers_across_cases():
    labels = np.array([[0, 0, 1, 1], [0, 0, 1, 1]])
    rows = []
    for case in range(7):
        inside = 10.0 if case == 6 else 1.0 + 0.1 * case  # case 6 leans on segment 1 far more than the others
        for target in ("class:1", "class:2"):
            values = np.where(labels == 1, inside, 1.0)
            rows += [{"case": f"c{case}", "target": target, **r} for r in segment_mass(values, labels)]
    targets, segments, matrix = segment_matrix([r for r in rows if r["case"] == "c0"], "absolute_mean")
    assert targets == ["class:1", "class:2"] and segments == ["0", "1"] and matrix.tolist() == [[1, 1], [1, 1]]
    spread = segment_distribution(rows, "absolute_mean")
    cell = next(r for r in spread if r["target"] == "class:1" and r["segment"] == 1)
    assert cell["cases"] == 7 and cell["median"] == pytest.approx(1.3) and cell["max"] == 10.0
    assert cell["mad"] == pytest.approx(0.2)
    flags = segment_outliers(rows, "absolute_mean")
    assert {r["case"] for r in flags if r["outlier"]} == {"c6"}
    assert all(not r["outlier"] for r in flags if r["segment"] == 0)  # equal everywhere: z = 0
    massless = [{**r, "case": "c7", "density": float("nan")} for r in rows if r["case"] == "c0"]
    assert next(r for r in segment_distribution(rows + massless) if r["segment"] == 1)["cases"] == 7  # NaN skipped
    assert "c7" not in {r["case"] for r in segment_outliers(rows + massless)}
    with pytest.raises(SegxaiError, match="appears more than once"):
        segment_distribution(rows + rows[:1])


def test_robust_z_matches_its_definition_and_falls_back_when_mad_is_zero():
    values = [1.0, 2.0, 3.0, 4.0, 100.0]
    assert robust_z(values).tolist() == pytest.approx([0.6745 * (v - 3.0) / 1.0 for v in values])
    ties = robust_z([1.0, 1.0, 1.0, 5.0])  # MAD 0: the mean absolute deviation (1.0) stands in
    assert ties.tolist() == pytest.approx([0, 0, 0, 4.0 / 1.2533])
    assert robust_z([2.0, 2.0]).tolist() == [0.0, 0.0]


@pytest.mark.parametrize("labels, message", [
    (np.full((8, 8), -1), "non-negative"),
    (np.full((8, 8), 0.5), "integer label map"),
    (np.zeros((4, 4), dtype=np.int64), "label map's grid"),
])
def test_bad_labels_are_refused(labels, message):
    with pytest.raises(SegxaiError, match=message):
        segment_mass(np.zeros((8, 8)), labels)


def test_heatmap_is_written_and_refuses_bad_matrices(tmp_path):
    import PIL.Image

    from segxai.report.heatmap import save_heatmap

    path = save_heatmap(tmp_path / "h.png", np.array([[1.0, 40.0], [np.nan, 0.0]]), ["a", "b"], ["x", "y"], title="t")
    assert PIL.Image.open(path).format == "PNG"
    with pytest.raises(SegxaiError, match="needs such a matrix"):
        save_heatmap(tmp_path / "bad.png", np.ones((2, 3)), ["a", "b"], ["x", "y"])
    with pytest.raises(SegxaiError, match="cannot be negative"):
        save_heatmap(tmp_path / "bad.png", -np.ones((1, 1)), ["a"], ["x"])
