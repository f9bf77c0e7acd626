"""Explanation metrics checked by hand: overlaps on constructed masks, curves on a pointwise linear network
(whose score after deleting any voxel set is known exactly), and the ROI-guided comparison table."""
from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch

import segxai as sx
from segxai import metrics as M
from segxai import targets as T
from segxai.errors import SegxaiError
from segxai.explanation import Explanation
from segxai.metrics.similarity import map_similarity
from tests.conftest import grid, pointwise_net


def box(dims: int, start: int, stop: int, size: int = 8) -> torch.Tensor:
    mask = torch.zeros(grid(dims, size), dtype=torch.bool)
    mask[(slice(start, stop),) * dims] = True
    return mask


def at(dims: int, *position: int, size: int = 8) -> torch.Tensor:
    """A one-voxel mask; `position` is padded with its last value to `dims` axes."""
    mask = torch.zeros(grid(dims, size), dtype=torch.bool)
    mask[tuple(position) + (position[-1],) * (dims - len(position))] = True
    return mask


# ------------------------------------------------------------------------------------------- dice and iou
FLAT_A = [1, 1, 0, 0, 0, 0, 0, 0]
FLAT_B = [1, 0, 1, 0, 0, 0, 0, 0]
NONE = [0] * 8
OVERLAP_CASES = [
    # a, b, empty, dice, iou
    (FLAT_A, FLAT_B, 1.0, 0.5, 1 / 3),
    (FLAT_A, FLAT_A, 1.0, 1.0, 1.0),
    (FLAT_A, [0, 0, 1, 1, 0, 0, 0, 0], 1.0, 0.0, 0.0),
    (NONE, NONE, 1.0, 1.0, 1.0),
    (NONE, NONE, 0.0, 0.0, 0.0),
    (NONE, FLAT_A, 1.0, 0.0, 0.0),
]


@pytest.mark.parametrize("a, b, empty, expected_dice, expected_iou", OVERLAP_CASES)
def test_dice_and_iou_by_hand_with_the_empty_convention(dims, a, b, empty, expected_dice, expected_iou):
    shape = (2,) * dims if dims == 3 else (2, 4)
    a_np = np.array(a, dtype=np.uint8).reshape(shape)  # numpy 0/1 against a torch bool tensor
    b_t = torch.tensor(b, dtype=torch.bool).reshape(shape)
    assert M.dice(a_np, b_t, empty=empty) == pytest.approx(expected_dice)
    assert M.iou(a_np, b_t, empty=empty) == pytest.approx(expected_iou)


@pytest.mark.parametrize(
    "a, b, message",
    [
        (np.zeros((4, 4), bool), np.zeros((4, 5), bool), "different shapes"),
        (np.array([[0, 2], [1, 0]]), np.zeros((2, 2), bool), "binarise it first"),
        (np.full((2, 2), 0.5), np.zeros((2, 2), bool), "binarise it first"),
        ([[True]], np.zeros((1, 1), bool), "torch.Tensor or numpy array"),
    ],
)
def test_overlap_refuses_unclear_masks(a, b, message):
    with pytest.raises(SegxaiError, match=message):
        M.dice(a, b)


# ------------------------------------------------------------------------------------------ localisation
def test_a_map_high_exactly_on_the_mask_gives_dice_one(dims):
    mask = box(dims, 2, 5)
    values = torch.where(mask, 3.0, -1.0)
    fraction = float(mask.float().mean())
    assert M.explanation_overlap(values, mask, threshold=0.5) == {"dice": 1.0, "iou": 1.0}
    assert M.explanation_overlap(values.numpy(), mask.numpy(), top_k=fraction) == {"dice": 1.0, "iou": 1.0}


THRESHOLD_CASES = [
    # threshold, selects: "mask" or "both" (mask and the weaker decoy region)
    (0.5, "mask"),
    (0.3, "both"),
]


@pytest.mark.parametrize("threshold, selects", THRESHOLD_CASES)
def test_threshold_on_the_min_max_normalised_map(dims, threshold, selects):
    mask, decoy = box(dims, 0, 2), box(dims, 4, 7)
    values = 10.0 * mask + 4.0 * decoy + 2.0  # normalised: 1 on the mask, 0.4 on the decoy, 0 elsewhere
    m, d = int(mask.sum()), int(decoy.sum())
    expected = (1.0, 1.0) if selects == "mask" else (2 * m / (2 * m + d), m / (m + d))
    result = M.explanation_overlap(values, mask, threshold=threshold)
    assert (result["dice"], result["iou"]) == pytest.approx(expected)


def test_top_k_keeps_the_highest_fraction(dims):
    values = torch.arange(8**dims, dtype=torch.float32).reshape(grid(dims, 8))
    last_quarter = torch.zeros(8**dims, dtype=torch.bool)
    last_quarter[-(8**dims) // 4:] = True
    last_half = torch.zeros(8**dims, dtype=torch.bool)
    last_half[-(8**dims) // 2:] = True
    assert M.explanation_overlap(values, last_quarter.reshape(values.shape), top_k=0.25)["dice"] == 1.0
    assert M.explanation_overlap(values, last_half.reshape(values.shape), top_k=0.25)["iou"] == pytest.approx(0.5)


def test_an_explanation_is_reduced_over_channels_before_binarising(dims):
    mask = box(dims, 2, 5)
    attribution = torch.stack([torch.where(mask, 2.0, 1.0), torch.where(mask, 0.0, -3.0)])
    explanation = Explanation(attribution)
    assert M.explanation_overlap(explanation, mask, threshold=0.9) == {"dice": 1.0, "iou": 1.0}
    abs_map = M.explanation_overlap(explanation, mask, threshold=0.9, reduce="abs")  # |.| is highest outside
    assert abs_map == {"dice": 0.0, "iou": 0.0}


def test_within_restricts_normalisation_and_selection_to_the_region(dims):
    mask, roi = box(dims, 2, 4), box(dims, 1, 5)
    values = torch.where(mask, 2.0, 0.0) + torch.where(roi & ~mask, 1.0, 0.0) + 10.0 * at(dims, 7)
    assert M.explanation_overlap(values, mask, threshold=0.5) == {"dice": 0.0, "iou": 0.0}  # the outlier wins
    assert M.explanation_overlap(values, mask, threshold=0.5, within=roi) == {"dice": 1.0, "iou": 1.0}
    fraction = int(mask.sum()) / int(roi.sum())  # top_k is a fraction of the region
    assert M.explanation_overlap(values, mask, top_k=fraction, within=roi) == {"dice": 1.0, "iou": 1.0}


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({}, "exactly one of threshold"),
        ({"threshold": 0.5, "top_k": 0.1}, "exactly one of threshold"),
        ({"threshold": 0.5, "within": torch.zeros(8, 8, dtype=torch.bool)}, "within is empty"),
        ({"threshold": 0.5, "within": torch.ones(4, 4, dtype=torch.bool)}, "within has shape"),
    ],
)
def test_explanation_overlap_errors(kwargs, message):
    with pytest.raises(SegxaiError, match=message):
        M.explanation_overlap(torch.rand(8, 8), box(2, 2, 5), **kwargs)


def test_map_and_mask_shapes_must_agree():
    with pytest.raises(SegxaiError, match="on the mask's grid"):
        M.explanation_overlap(torch.rand(2, 8, 8), box(2, 2, 5), threshold=0.5)
    with pytest.raises(SegxaiError, match="one image"):
        M.energy_inside(Explanation(torch.rand(2, 1, 8, 8), batched=True), box(2, 2, 5))
    with pytest.raises(SegxaiError, match="NaN"):
        M.energy_inside(torch.full((8, 8), float("nan")), box(2, 2, 5))


def test_roi_baseline_is_the_overlap_of_roi_and_mask(dims):
    mask, roi = box(dims, 2, 5), box(dims, 1, 5)
    m, r = 3**dims, 4**dims
    assert M.roi_baseline(roi, mask) == pytest.approx({"dice": 2 * m / (m + r), "iou": m / r})


ENERGY_CASES = [
    # value on each mask voxel, value of one outside voxel in units of the mask's total |mass|, expected share
    (1.0, -5.0, 1.0),  # negative mass outside is ignored
    (1.0, 1 / 3, 0.75),
    (-1.0, 1.0, 0.0),  # all positive mass is outside
    (-1.0, -1.0, 0.0),  # no positive mass at all
    (0.0, 0.0, 0.0),
]


@pytest.mark.parametrize("inside, outside, expected", ENERGY_CASES)
def test_energy_inside(dims, inside, outside, expected):
    mask = box(dims, 2, 5)
    values = torch.where(mask, inside, 0.0) + outside * abs(inside) * int(mask.sum()) * at(dims, 7)
    assert M.energy_inside(values, mask) == pytest.approx(expected)


POINTING_CASES = [
    # peak position (padded to dims), tolerance, hit
    ((3,), 0, True),
    ((6, 3), 0, False),
    ((6, 3), 1, False),
    ((6, 3), 2, True),
    ((5, 5), 1, False),  # diagonal: sqrt(2) (2D) or sqrt(3) (3D) from the corner (4, 4, ...)
    ((5, 5), 1.8, True),
]


@pytest.mark.parametrize("peak, tolerance, hit", POINTING_CASES)
def test_pointing_game_with_tolerance(dims, peak, tolerance, hit):
    mask = box(dims, 2, 5)
    values = torch.rand(grid(dims, 8), generator=torch.Generator().manual_seed(0)) + 5.0 * at(dims, *peak)
    assert M.pointing_game(values, mask, tolerance) is hit


def test_pointing_game_degenerate_cases(dims):
    mask = box(dims, 2, 5)
    assert M.pointing_game(torch.zeros(grid(dims, 8)), mask, tolerance=100) is False  # a flat map points nowhere
    assert M.pointing_game(torch.rand(grid(dims, 8)), torch.zeros_like(mask), tolerance=100) is False
    with pytest.raises(SegxaiError, match="cannot be negative"):
        M.pointing_game(torch.rand(grid(dims, 8)), mask, tolerance=-1)


# ------------------------------------------------------------------------------------------ faithfulness
def linear_setup(dims: int, size: int = 4):
    """A pointwise linear net, an input and the per-voxel contribution to the class-1 logit sum."""
    net = pointwise_net(dims, in_channels=2, classes=3)
    x = torch.randn(2, *grid(dims, size), generator=torch.Generator().manual_seed(1))
    weight = net.weight[1].detach().flatten().view(2, *(1,) * dims)
    return net, x, weight, float(net.bias[1].detach())


def expected_curve(kind: str, x, weight, bias, ranking, steps, fill):
    """Sum of the class-1 logit after deleting (or inserting) the top-ranked voxels, by hand."""
    contribution = (weight * x).sum(0).flatten().double()
    filled = float((weight * fill).sum())
    order = sorted(range(contribution.numel()), key=lambda p: -float(ranking.flatten()[p]))
    total = contribution.numel()
    scores = []
    for k in range(steps + 1):
        chosen = order[: k * total // steps]
        picked = float(contribution[chosen].sum())
        if kind == "deletion":
            scores.append(float(contribution.sum()) - picked + len(chosen) * filled + total * bias)
        else:
            scores.append(picked + (total - len(chosen)) * filled + total * bias)
    return np.array(scores)


@pytest.mark.parametrize("kind", ["deletion", "insertion"])
@pytest.mark.parametrize("fill", [0.0, 0.5])
def test_curve_values_match_the_hand_computation(dims, kind, fill):
    net, x, weight, bias = linear_setup(dims)
    ranking = torch.rand(grid(dims, 4), generator=torch.Generator().manual_seed(2))
    curve_fn = M.deletion_curve if kind == "deletion" else M.insertion_curve
    curve = curve_fn(net, x, T.ClassRegion(1), ranking, steps=4, fill=fill)
    expected = expected_curve(kind, x, weight, bias, ranking, 4, fill)
    assert curve.kind == kind
    assert np.allclose(curve.fractions, [0, 0.25, 0.5, 0.75, 1.0])
    assert np.allclose(curve.scores, expected, atol=1e-4)
    assert curve.auc == pytest.approx(float(np.trapezoid(expected, curve.fractions)), abs=1e-4)


def test_true_attribution_beats_a_random_ranking_and_insertion_mirrors_deletion(dims):
    net, x, weight, _ = linear_setup(dims)
    true = Explanation(weight * x)  # input x weight: the exact contribution of every voxel
    random = torch.rand(grid(dims, 4), generator=torch.Generator().manual_seed(3))
    target = T.ClassRegion(1)
    deletion = M.deletion_curve(net, x, target, true, steps=8)
    insertion = M.insertion_curve(net, x, target, true, steps=8)
    assert deletion.auc < M.deletion_curve(net, x, target, random, steps=8).auc
    assert insertion.auc > M.insertion_curve(net, x, target, random, steps=8).auc
    # T(deleted set removed) + T(only that set inserted) = T(x) + T(fill) for every step
    both = deletion.scores + insertion.scores
    assert np.allclose(both, both[0], atol=1e-4)
    assert deletion.scores[0] == pytest.approx(insertion.scores[-1], abs=1e-4)


def test_ties_keep_scan_order(dims):
    net, x, weight, bias = linear_setup(dims)
    flat = torch.zeros(2, *grid(dims, 4))  # (C, *spatial): every voxel ties
    curve = M.deletion_curve(net, x, T.ClassRegion(1), flat, steps=4)
    scan_order = -torch.arange(4**dims, dtype=torch.float32).reshape(grid(dims, 4))
    assert np.allclose(curve.scores, expected_curve("deletion", x, weight, bias, scan_order, 4, 0.0), atol=1e-4)


@pytest.mark.parametrize("batch_size, calls", [(2, 1 + 3), (64, 1 + 1), ("auto", 1 + 1)])
def test_passes_are_counted_and_batched(dims, batch_size, calls):
    net, x, _, _ = linear_setup(dims)
    model = sx.SegModel(net)
    curve = M.deletion_curve(model, x, T.ClassRegion(1), torch.rand(grid(dims, 4)), steps=4, batch_size=batch_size)
    assert curve.cost.forward_passes == 4 + 1 + 1
    assert model.forward_calls == calls
    assert curve.cost.seconds > 0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"inputs": torch.randn(2, 2, 4, 4)}, "one image"),
        ({"attribution": torch.rand(5, 5)}, "expected \\(C, \\*spatial\\)"),
        ({"steps": 0}, "steps must be a positive int"),
        ({"fill": torch.zeros(3, 4, 4)}, "does not broadcast"),
        ({"fill": float("nan")}, "fill contains NaN"),
    ],
)
def test_curve_errors(kwargs, message):
    net = pointwise_net(2)
    args = {"inputs": torch.randn(2, 4, 4), "attribution": torch.rand(4, 4), **kwargs}
    with pytest.raises(SegxaiError, match=message):
        M.deletion_curve(net, args.pop("inputs"), T.ClassRegion(1), args.pop("attribution"), **args)


def test_curves_through_the_engine_equal_one_pass_per_step(dims):
    """The batched curve against a plain loop that runs each step's input alone."""
    net, x, _, _ = linear_setup(dims)
    ranking = torch.rand(grid(dims, 4), generator=torch.Generator().manual_seed(5))
    order = torch.argsort(ranking.flatten(), descending=True, stable=True)
    curve = M.insertion_curve(net, x, T.ClassRegion(1), ranking, steps=5, fill=0.25, batch_size=4)
    expected = []
    with torch.no_grad():
        for k in range(6):
            kept = torch.zeros(ranking.numel(), dtype=torch.bool)
            kept[order[: k * ranking.numel() // 5]] = True
            step = torch.where(kept.view(ranking.shape), x, torch.full_like(x, 0.25))
            expected.append(float(net(step[None])[0, 1].double().sum()))
    assert np.allclose(curve.scores, expected, rtol=1e-5, atol=1e-4)


# ------------------------------------------------------------------------------------------- stability
def test_map_stability_matches_its_definition_and_repeats_with_its_seed(dims):
    x = torch.rand(1, *grid(dims), generator=torch.Generator().manual_seed(0))
    explain = lambda inputs: Explanation(inputs.clone())  # the map is the input itself
    original = explain(x)
    assert M.map_stability(explain, x, original, noise=0.0, samples=2) == pytest.approx({"spearman": 1.0, "ssim": 1.0})
    found = M.map_stability(explain, x, original, noise=0.5, samples=1, seed=3)
    noisy = x + 0.5 * float(x.std()) * torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    assert found == pytest.approx(map_similarity(original, explain(noisy)))
    assert found["spearman"] < 1.0
    assert M.map_stability(explain, x, original, noise=0.5, samples=2, seed=3) == \
        M.map_stability(explain, x, original, noise=0.5, samples=2, seed=3)
    assert M.map_stability(explain, x, original, noise=0.5, seed=4) != found
    with pytest.raises(SegxaiError, match="samples must be a positive int"):
        M.map_stability(explain, x, original, samples=0)
    with pytest.raises(SegxaiError, match="noise must be a non-negative"):
        M.map_stability(explain, x, original, noise=-1.0)


# ------------------------------------------------------------------------------------------ comparison
@pytest.mark.parametrize(
    "new, old, expected",
    [(40.0, 100.0, -60.0), (0.723, 0.5, 44.6), (0.5901, 0.3, 96.7), (1.0, 0.0, math.nan), (math.nan, 1.0, math.nan)],
)
def test_relative_change(new, old, expected):
    assert M.relative_change(new, old) == pytest.approx(expected, nan_ok=True)


def record(method, variant, seconds, passes, voxels, dice, iou):
    return {"method": method, "variant": variant, "seconds": seconds, "forward_passes": passes,
            "forward_voxels": voxels, "dice": dice, "iou": iou}


ROWS = [
    record("occlusion", "roi", 3.0, 30, 30 * 1024, 0.70, 0.58),
    record("occlusion", "unrestricted", 10.0, 100, 100 * 4096, 0.5, 0.3),
    record("occlusion", "roi", 5.0, 30, 30 * 1024, 0.746, 0.6002),  # averaged with the first: 4 s, 0.723, 0.5901
    record("rise", "roi", 2.0, 50, 50 * 1024, 0.4, 0.25),  # no unrestricted row to compare against
]


def test_compare_roi_guided_builds_the_xai_clip_table():
    table = M.compare_roi_guided(ROWS)
    assert [(r["method"], r["variant"], r["images"]) for r in table] == [
        ("occlusion", "unrestricted", 1), ("occlusion", "roi", 2), ("rise", "roi", 1)
    ]
    base, roi, rise = table
    assert base["runtime change %"] is None and base["voxel-pass ratio"] is None
    assert roi["seconds"] == pytest.approx(4.0) and roi["dice"] == pytest.approx(0.723)
    assert roi["runtime change %"] == pytest.approx(-60.0)
    assert roi["Dice change %"] == pytest.approx(44.6)
    assert roi["IoU change %"] == pytest.approx(96.7)
    assert roi["voxel-pass ratio"] == pytest.approx(30 * 1024 / (100 * 4096))
    assert rise["Dice change %"] is None
    assert isinstance(roi["forward_passes"], int) and isinstance(roi["seconds"], float)  # counts stay counts


@pytest.mark.parametrize(
    "rows, message",
    [
        ([{"method": "occlusion", "variant": "roi"}], "lacks seconds"),
        ([{**ROWS[0], "dice": "high"}], "must be numbers"),
        ([], "no records"),
    ],
)
def test_compare_roi_guided_errors(rows, message):
    with pytest.raises(SegxaiError, match=message):
        M.compare_roi_guided(rows)


def test_format_table_is_aligned():
    text = M.format_table(M.compare_roi_guided(ROWS))
    lines = text.splitlines()
    assert lines[0].split()[:2] == ["method", "variant"] and set(lines[1]) <= {"-", " "}
    assert len(lines) == 2 + 3
    assert "-60" in lines[3] and "44.6" in lines[3] and "96.7" in lines[3]
    assert lines[0].index("dice") + len("dice") == lines[2].index("0.5") + len("0.5")  # numbers right-aligned


def test_write_csv_round_trips_and_is_atomic(tmp_path, monkeypatch):
    table = M.compare_roi_guided(ROWS)
    path = M.write_csv(table, tmp_path / "out" / "table.csv")
    with open(path, newline="") as handle:
        read = list(csv.DictReader(handle))
    assert [r["variant"] for r in read] == ["unrestricted", "roi", "roi"]
    assert read[0]["Dice change %"] == "" and float(read[1]["Dice change %"]) == pytest.approx(44.6)

    def fail(*_args, **_kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(csv.DictWriter, "writerows", fail)
    before = path.read_text()
    with pytest.raises(OSError, match="disk full"):
        M.write_csv(table[:1], path)
    assert path.read_text() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["table.csv"]


# ------------------------------------------------------------------------------------------ end to end
def test_occlusion_unrestricted_vs_roi_guided_end_to_end(dims):
    torch.manual_seed(0)
    net = pointwise_net(dims, in_channels=1, classes=2)
    organ, roi = box(dims, 2, 4), box(dims, 1, 5)
    x = torch.where(organ, 2.0, 0.1)[None] + 0.05 * torch.randn(1, *grid(dims, 8))
    target = T.ClassRegion(1, organ)
    rows = []
    for variant, region in [("unrestricted", None), ("roi", roi)]:
        explanation = sx.Occlusion(sx.SegModel(net), window=2, stride=2).explain(x, target, roi=region, progress=False)
        overlap = M.explanation_overlap(explanation, organ, top_k=float(organ.float().mean()))
        rows.append({"method": "occlusion", "variant": variant, **explanation.stats, **overlap})
    table = M.compare_roi_guided(rows)
    assert table[1]["voxel-pass ratio"] < 1.0
    assert table[1]["forward_passes"] < table[0]["forward_passes"]
    assert "occlusion" in M.format_table(table)
