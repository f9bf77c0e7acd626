"""Instance-level saliency statistics checked by hand: shares, radial profiles and peaks on constructed maps,
lesion typing and lesion rates on hand-built masks (18-connectivity in 3D), nDSC, group tests, AUROC, and the
context experiment on a model that reads one voxel outside the lesion."""
from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

import segxai as sx
from segxai import metrics as M
from segxai.errors import SegxaiError
from segxai.explanation import Explanation


def grid(dims: int, size: int = 9) -> tuple[int, ...]:
    return (size,) * dims


def voxel(dims: int, *position: int, size: int = 9) -> np.ndarray:
    """A one-voxel mask; `position` is padded with its last value to `dims` axes."""
    mask = np.zeros(grid(dims, size), dtype=bool)
    mask[tuple(position) + (position[-1],) * (dims - len(position))] = True
    return mask


def box(dims: int, start: int, stop: int, size: int = 9) -> np.ndarray:
    mask = np.zeros(grid(dims, size), dtype=bool)
    mask[(slice(start, stop),) * dims] = True
    return mask


def slab(dims: int, depth: int, size: int = 9) -> np.ndarray:
    """The first `depth` planes along axis 0: signed distances to its border are whole numbers of voxels."""
    mask = np.zeros(grid(dims, size), dtype=bool)
    mask[:depth] = True
    return mask


def sigmoid(value: float) -> float:
    return 1.0 / (1.0 + math.exp(-value))


# ------------------------------------------------------------------------------------------- modality share
def test_modality_share_of_a_channel_carrying_three_times_the_saliency(dims):
    rng = np.random.default_rng(0)
    second = rng.normal(size=grid(dims))
    lesion = box(dims, 2, 6)
    first = 3.0 * np.abs(second) * rng.choice([-1.0, 1.0], size=grid(dims))  # signs do not matter, |S| does
    second[~lesion] *= 100.0  # outside the region: ignored
    shares = M.modality_share(torch.from_numpy(np.stack([first, second])), lesion)
    np.testing.assert_allclose(shares, [0.75, 0.25])


def test_modality_share_accepts_an_explanation_and_is_nan_for_a_zero_map(dims):
    attribution = torch.zeros((3, *grid(dims)))
    attribution[1] = 2.0
    lesion = box(dims, 1, 3)
    np.testing.assert_allclose(M.modality_share(Explanation(attribution), lesion), [0.0, 1.0, 0.0])
    assert np.isnan(M.modality_share(torch.zeros_like(attribution), lesion)).all()


# ------------------------------------------------------------------------------------------- radial profile
def test_signed_distance_is_minus_one_on_the_border_and_one_next_to_it(dims):
    lesion = box(dims, 3, 6)
    distance = M.signed_distance(lesion)
    assert distance[(4,) * dims] == -2 and distance[(3,) * dims] == -1
    assert distance[(2,) + (4,) * (dims - 1)] == 1 and distance[(0,) + (4,) * (dims - 1)] == 3


def test_radial_profile_of_the_signed_distance_returns_the_bin_centres(dims):
    lesion = slab(dims, 4)
    distance = M.signed_distance(lesion)
    profile = M.radial_profile(distance, lesion, max_distance=3)
    np.testing.assert_array_equal(profile.distance, [-4, -3, -2, -1, 1, 2, 3])
    np.testing.assert_allclose(profile.mean, profile.distance)
    assert (profile.count == 9 ** (dims - 1)).all()  # one plane per bin


def test_radial_profile_with_spacing_channels_and_a_depth_limit(dims):
    lesion = slab(dims, 4)
    spacing = (2.0,) + (1.0,) * (dims - 1)
    distance = M.signed_distance(lesion, spacing)
    saliency = np.stack([distance, -distance])
    profile = M.radial_profile(saliency, lesion, max_distance=4, max_depth=4, step=2, spacing=spacing)
    np.testing.assert_array_equal(profile.distance, [-4, -2, 2, 4])
    np.testing.assert_allclose(profile.mean, [profile.distance, -profile.distance])
    rows = profile.rows()
    assert rows[0] == {"distance": -4.0, "voxels": 9 ** (dims - 1), "mean_c0": -4.0, "mean_c1": 4.0}


def test_radial_bins_are_centred_on_multiples_of_the_step(dims):
    lesion = slab(dims, 2)
    spacing = (1.5,) + (1.0,) * (dims - 1)
    distance = M.signed_distance(lesion, spacing)  # outside: 1.5, 3.0, 4.5, ...
    profile = M.radial_profile(distance, lesion, max_distance=4.5, max_depth=0, spacing=spacing)
    np.testing.assert_array_equal(profile.distance, [2, 3, 5])  # [1.5, 2.5) -> 2, [2.5, 3.5) -> 3, [4.5, 5.5) -> 5
    np.testing.assert_allclose(profile.mean, [1.5, 3.0, 4.5])


def test_inside_and_ring_means_on_a_slab(dims):
    lesion = slab(dims, 3)
    distance = M.signed_distance(lesion)
    means = M.inside_vs_rings(distance, lesion, rings=3)
    assert means == pytest.approx({"inside": -2.0, "ring_1": 1.0, "ring_2": 2.0, "ring_3": 3.0})
    wide = M.inside_vs_rings(distance, lesion, rings=2, width=2)
    assert wide == pytest.approx({"inside": -2.0, "ring_1": 1.5, "ring_2": 3.5})


def test_the_first_ring_is_18_connected_in_3d():
    lesion = voxel(3, 4)
    offsets = np.indices((3, 3, 3)).reshape(3, -1).T - 1
    saliency = np.zeros(grid(3))
    for offset in offsets:
        moved = int(np.abs(offset).sum())  # 1 face, 2 edge, 3 corner neighbour
        saliency[tuple(offset + 4)] = {0: 0.0, 1: 1.0, 2: 2.0, 3: 100.0}[moved]
    means = M.inside_vs_rings(saliency, lesion, rings=1)
    assert means["ring_1"] == pytest.approx((6 * 1 + 12 * 2) / 18)  # the 8 corners wait for ring 2
    assert M.inside_vs_rings(saliency, lesion, rings=1, connectivity=3)["ring_1"] == pytest.approx(830 / 26)


def test_a_ring_cut_off_by_the_grid_edge_is_nan(dims):
    lesion = slab(dims, 8)
    means = M.inside_vs_rings(np.ones(grid(dims)), lesion, rings=2)
    assert means["ring_1"] == 1.0 and math.isnan(means["ring_2"])


# ------------------------------------------------------------------------------------------- peak saliency
def test_peak_one_voxel_outside_the_lesion_needs_a_margin_of_one(dims):
    lesion = box(dims, 3, 6)
    saliency = np.zeros(grid(dims))
    saliency[(2,) + (4,) * (dims - 1)] = 5.0
    saliency[(0,) * dims] = 50.0  # far away: never the peak
    assert M.peak_saliency(saliency, lesion, margin=1) == 5.0
    assert M.peak_saliency(saliency, lesion, margin=0) == 0.0


def test_peak_is_signed_unless_absolute_and_per_channel(dims):
    lesion = box(dims, 3, 6)
    saliency = np.zeros((2, *grid(dims)))
    saliency[0][lesion] = 1.0
    saliency[0][(4,) * dims] = -7.0
    saliency[1][lesion] = -2.0
    np.testing.assert_array_equal(M.peak_saliency(saliency, lesion), [1.0, 0.0])  # margin 3 reaches zeros
    np.testing.assert_array_equal(M.peak_saliency(saliency, lesion, margin=0, absolute=True), [7.0, 2.0])


# ------------------------------------------------------------------------------------------- lesion typing
def typed_case(dims: int) -> tuple[np.ndarray, np.ndarray]:
    """Predicted in scan order: a TP box, an FP voxel, a TP voxel; the reference adds one FN voxel."""
    prediction = box(dims, 1, 3) | voxel(dims, 1, 7) | voxel(dims, 7)
    reference = box(dims, 2, 4) | voxel(dims, 7, 1) | voxel(dims, 7)
    return prediction, reference


def test_lesion_types_and_rates_by_hand(dims):
    prediction, reference = typed_case(dims)
    typed = M.lesion_types(prediction, reference)
    assert typed.counts() == {"TP": 2, "FP": 1, "FN": 1}
    assert [lesion.type for lesion in typed.lesions if lesion.source == "prediction"] == ["TP", "FP", "TP"]
    fn = typed.lesions[-1]
    assert (fn.id, fn.type, fn.source) == (4, "FN", "reference")
    np.testing.assert_array_equal(typed.mask(fn), voxel(dims, 7, 1))
    assert M.lesion_rates(prediction, reference) == pytest.approx({"TPR": 2 / 3, "FDR": 1 / 3, "FNR": 1 / 3})


def test_voxels_touching_at_a_corner_are_separate_lesions_in_3d():
    reference = voxel(3, 2)
    corner = voxel(3, 2) | voxel(3, 3)  # offset (1, 1, 1)
    edge = voxel(3, 2) | voxel(3, 3, 3, 2)  # offset (1, 1, 0)
    assert M.lesion_types(corner, reference).counts() == {"TP": 1, "FP": 1, "FN": 0}
    assert M.lesion_types(edge, reference).counts() == {"TP": 1, "FP": 0, "FN": 0}
    assert M.lesion_types(corner, reference, connectivity=3).counts() == {"TP": 1, "FP": 0, "FN": 0}


def test_a_dropped_small_component_leaves_its_reference_lesion_missed(dims):
    reference = box(dims, 1, 3) | box(dims, 6, 8)
    prediction = box(dims, 1, 3) | voxel(dims, 7)
    assert M.lesion_types(prediction, reference).counts() == {"TP": 2, "FP": 0, "FN": 0}
    typed = M.lesion_types(prediction, reference, min_size=2)
    assert typed.counts() == {"TP": 1, "FP": 0, "FN": 1}
    assert int(typed.predicted.max()) == 1


def test_rates_are_nan_without_lesions(dims):
    empty = np.zeros(grid(dims), dtype=bool)
    rates = M.lesion_rates(empty, empty)
    assert all(math.isnan(value) for value in rates.values())


# ------------------------------------------------------------------------------------------- nDSC
def thousand_voxels(dims: int) -> tuple[int, ...]:
    return (10, 10, 10) if dims == 3 else (25, 40)


def test_ndsc_equals_dice_at_the_reference_positive_rate(dims):
    shape = thousand_voxels(dims)
    reference = np.zeros(shape, dtype=bool)
    reference.flat[0] = True  # |G| / N = 0.001 = r
    prediction = np.zeros(shape, dtype=bool)
    prediction.flat[[0, 5, 9]] = True
    assert M.ndsc(prediction, reference) == pytest.approx(M.dice(prediction, reference)) == pytest.approx(0.5)
    reference.flat[:100] = True  # |G| / N = 0.1
    prediction.flat[50:160] = True
    assert M.ndsc(prediction, reference, r=0.1) == pytest.approx(M.dice(prediction, reference))


def test_ndsc_by_hand_and_its_empty_cases(dims):
    shape = thousand_voxels(dims)
    reference = np.zeros(shape, dtype=bool)
    reference.flat[:10] = True
    prediction = np.zeros(shape, dtype=bool)
    prediction.flat[2:13] = True  # TP 8, FP 3, FN 2
    k = 0.999 * 10 / (0.001 * 990)
    assert M.ndsc(prediction, reference) == pytest.approx(16 / (16 + 3 * k + 2))
    empty = np.zeros(shape, dtype=bool)
    assert M.ndsc(empty, empty) == 1.0
    assert M.ndsc(prediction, empty) == 0.0


# ------------------------------------------------------------------------------------------- group statistics
def test_compare_groups_detects_a_clear_shift_and_not_identical_groups():
    base = np.linspace(0.0, 1.0, 20)
    shifted = M.compare_groups({"TP": base + 5.0, "FP": base, "FN": base + 0.01})
    assert shifted["kruskal"]["p"] < 0.01
    tp_fp = next(pair for pair in shifted["pairwise"] if (pair["a"], pair["b"]) == ("TP", "FP"))
    assert tp_fp["p_adjusted"] < 0.01 and tp_fp["u"] == 400.0
    same = M.compare_groups({"TP": base, "FP": base.copy(), "FN": list(base)})
    assert same["kruskal"]["p"] == pytest.approx(1.0)
    assert all(pair["p_adjusted"] == pytest.approx(1.0) for pair in same["pairwise"])
    constant = M.compare_groups({"TP": [2.0] * 5, "FP": [2.0] * 4})
    assert constant["kruskal"] == {"statistic": 0.0, "p": 1.0}


def test_bonferroni_and_holm_corrections_by_hand():
    # TP-FP and TP-FN have equal p-values, so Holm's running maximum decides the second one
    groups = {"TP": np.arange(8.0) + 3, "FP": np.arange(8.0), "FN": np.arange(8.0)}
    bonferroni = M.compare_groups(groups)["pairwise"]
    holm = M.compare_groups(groups, correction="holm")["pairwise"]
    raw = [pair["p"] for pair in bonferroni]
    assert [pair["p_adjusted"] for pair in bonferroni] == pytest.approx([min(1.0, 3 * p) for p in raw])
    order = np.argsort(raw)
    expected, running = {}, 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, raw[index] * (3 - rank)))
        expected[index] = running
    assert [pair["p_adjusted"] for pair in holm] == pytest.approx([expected[i] for i in range(3)])
    assert raw[order[0]] * 3 > raw[order[1]] * 2 and holm[order[1]]["p_adjusted"] == holm[order[0]]["p_adjusted"]


def test_compare_groups_skips_empty_groups_and_refuses_bad_input():
    result = M.compare_groups({"TP": [1.0, 2.0, 3.0], "FP": [4.0, 5.0], "FN": []})
    assert result["groups"] == ["TP", "FP"] and len(result["pairwise"]) == 1
    with pytest.raises(SegxaiError, match="two non-empty groups"):
        M.compare_groups({"TP": [1.0], "FN": []})
    with pytest.raises(SegxaiError, match="NaN"):
        M.compare_groups({"TP": [1.0, float("nan")], "FP": [2.0]})
    with pytest.raises(SegxaiError, match="correction"):
        M.compare_groups({"TP": [1.0], "FP": [2.0]}, correction="sidak")


def test_auroc_by_hand_and_against_scikit_learn():
    assert M.auroc([5.0, 6.0, 7.0], [1.0, 2.0]) == 1.0
    assert M.auroc([1.0, 2.0], [5.0, 6.0, 7.0]) == 0.0
    assert M.auroc([2.0, 3.0], [1.0, 2.0]) == pytest.approx(0.875)  # 3 wins and 1 tie of 4 pairs
    rng = np.random.default_rng(1)
    tp, fp = rng.normal(1.0, 1.0, 30), rng.normal(0.0, 1.0, 20)
    labels = np.r_[np.ones(30), np.zeros(20)]
    assert M.auroc(tp, fp) == pytest.approx(roc_auc_score(labels, np.r_[tp, fp]))
    with pytest.raises(SegxaiError, match="one positive and one negative"):
        M.auroc([], [1.0])


# ------------------------------------------------------------------------------------------- context experiment
def probe_model(dims: int):
    """One-channel logits `-2 + 3 x(probe)` everywhere, the probe 3 voxels from the centre along axis 0."""
    probe = (7,) + (4,) * (dims - 1)

    def net(x: torch.Tensor) -> torch.Tensor:
        value = x[(slice(None), 0) + probe]
        return (-2.0 + 3.0 * value).reshape((-1, 1) + (1,) * dims).expand(-1, 1, *x.shape[2:])

    return net


def test_context_experiment_needs_the_context_three_voxels_out(dims):
    lesion = voxel(dims, 4)
    image = torch.ones((1, *grid(dims)))
    model = sx.SegModel(probe_model(dims), "sigmoid")
    rows = M.context_experiment(model, image, lesion, dilations=(0, 1, 2, 3, 5))
    assert [row["dilation"] for row in rows] == [0, 1, 2, 3, 5]
    assert [row["detected"] for row in rows] == [False, False, False, True, True]
    expected = [sigmoid(-2.0)] * 3 + [sigmoid(1.0)] * 2
    assert [row["mean_probability"] for row in rows] == pytest.approx(expected, rel=1e-6)
    assert model.forward_passes == 5 and model.forward_calls == 1  # one batch through the perturbation engine
    model.reset_counts()
    pairs = M.context_experiment(model, image, lesion, dilations=(0, 1, 2, 3, 5), batch_size=2)
    assert [row["detected"] for row in pairs] == [row["detected"] for row in rows]
    assert [row["mean_probability"] for row in pairs] == pytest.approx(expected, rel=1e-6)
    assert (model.forward_passes, model.forward_calls) == (5, 3)


def test_context_experiment_threshold_fill_and_a_plain_network(dims):
    lesion = voxel(dims, 4)
    image = np.ones((1, *grid(dims)), dtype=np.float32)
    low = M.context_experiment(probe_model(dims), image, lesion, dilations=(0,), threshold=0.1, activation="sigmoid")
    assert low[0]["detected"]
    filled = M.context_experiment(probe_model(dims), image, lesion, dilations=(0,), fill=1.0, activation="sigmoid")
    assert filled[0]["mean_probability"] == pytest.approx(sigmoid(1.0), rel=1e-6)


def test_context_experiment_refuses_bad_input(dims):
    lesion = voxel(dims, 4)
    image = torch.ones((1, *grid(dims)))
    model = sx.SegModel(probe_model(dims), "sigmoid")
    with pytest.raises(SegxaiError, match="does not match"):
        M.context_experiment(model, image, voxel(dims, 1, size=5))
    with pytest.raises(SegxaiError, match="empty"):
        M.context_experiment(model, image, np.zeros(grid(dims), dtype=bool))
    with pytest.raises(SegxaiError, match="NaN"):
        M.context_experiment(model, image, lesion, fill=float("nan"))
    with pytest.raises(SegxaiError, match="broadcastable"):
        M.context_experiment(model, image, lesion, fill=np.zeros(3))
    with pytest.raises(SegxaiError, match="whole number"):
        M.context_experiment(model, image, lesion, dilations=(-1,))


# ------------------------------------------------------------------------------------------- the instance table
def test_instance_table_rows_and_csv(dims, tmp_path):
    prediction, reference = typed_case(dims)
    typed = M.lesion_types(prediction, reference)
    maps = {}
    for lesion in typed.lesions:
        saliency = np.zeros((2, *grid(dims)))
        saliency[0][typed.mask(lesion)] = float(lesion.id)
        saliency[1][typed.mask(lesion)] = float(lesion.id) / 3.0
        maps[lesion.id] = torch.from_numpy(saliency)
    del maps[2]  # an instance that was not explained is left out
    spacing = (2.0,) * dims
    rows = M.instance_table(maps, typed, channel_names=("FLAIR", "MPRAGE"), rings=2, spacing=spacing)
    assert [row["id"] for row in rows] == [1, 3, 4]
    first = rows[0]
    assert first["type"] == "TP" and first["voxels"] == 2 ** dims and first["volume"] == 4.0 ** dims
    assert first["peak"] == 1.0 and first["inside"] == 1.0 and first["ring_1"] == 0.0
    assert (first["share_FLAIR"], first["share_MPRAGE"]) == pytest.approx((0.75, 0.25))
    assert rows[-1]["type"] == "FN" and rows[-1]["source"] == "reference" and rows[-1]["peak"] == 4.0
    path = M.write_csv(rows, tmp_path / "instances.csv")
    with open(path, newline="", encoding="utf-8") as handle:
        read = list(csv.DictReader(handle))
    assert list(read[0]) == ["id", "type", "source", "label", "voxels", "volume", "peak", "inside",
                             "ring_1", "ring_2", "share_FLAIR", "share_MPRAGE"]
    assert [row["type"] for row in read] == ["TP", "TP", "FN"]


def test_instance_table_refuses_mismatched_maps(dims):
    prediction, reference = typed_case(dims)
    typed = M.lesion_types(prediction, reference)
    saliency = np.zeros((2, *grid(dims)))
    with pytest.raises(SegxaiError, match="4 lesions"):
        M.instance_table([saliency], typed)
    with pytest.raises(SegxaiError, match="unknown lesion"):
        M.instance_table({9: saliency}, typed)
    with pytest.raises(SegxaiError, match="channel 2"):
        M.instance_table({1: saliency}, typed, channel=2)
    with pytest.raises(SegxaiError, match="channel names"):
        M.instance_table({1: saliency}, typed, channel_names=("FLAIR",))


# ------------------------------------------------------------------------------------------- bad inputs
def test_bad_inputs_raise_segxai_errors(dims):
    lesion = box(dims, 2, 5)
    saliency = np.zeros(grid(dims))
    with pytest.raises(SegxaiError, match="expected"):
        M.peak_saliency(np.zeros(grid(dims, 8)), lesion)
    with pytest.raises(SegxaiError, match="NaN"):
        M.modality_share(np.full((2, *grid(dims)), np.nan), lesion)
    with pytest.raises(SegxaiError, match="empty"):
        M.radial_profile(saliency, np.zeros(grid(dims), dtype=bool))
    with pytest.raises(SegxaiError, match="0/1"):
        M.peak_saliency(saliency, lesion.astype(int) * 2)
    with pytest.raises(SegxaiError, match="whole number"):
        M.peak_saliency(saliency, lesion, margin=-1)
    with pytest.raises(SegxaiError, match="whole grid"):
        M.signed_distance(np.ones(grid(dims), dtype=bool))
    with pytest.raises(SegxaiError, match="spacing"):
        M.radial_profile(saliency, lesion, spacing=(1.0,))
    with pytest.raises(SegxaiError, match="step"):
        M.radial_profile(saliency, lesion, step=0)
    with pytest.raises(SegxaiError, match="no voxel"):
        M.radial_profile(saliency, lesion, max_distance=0.5, max_depth=0.5)
    with pytest.raises(SegxaiError, match="same shape"):
        M.lesion_types(lesion, np.zeros(grid(dims, 8), dtype=bool))
    with pytest.raises(SegxaiError, match="same shape"):
        M.ndsc(lesion, np.zeros(grid(dims, 8), dtype=bool))
    with pytest.raises(SegxaiError, match="connectivity"):
        M.inside_vs_rings(saliency, lesion, connectivity=4)
    with pytest.raises(SegxaiError, match="rings"):
        M.inside_vs_rings(saliency, lesion, width=0)


def test_instance_report_compares_peaks_only_with_two_typed_groups():
    from segxai.pipelines.instances import peak_comparison as _peak_comparison

    rows = [{"type": "TP", "peak": p} for p in (5.0, 6.0, 7.0, 8.0)] + [{"type": "FP", "peak": p} for p in (1.0, 2.0)]
    (section,) = _peak_comparison(rows)
    auroc_row = next(row for row in section.table if row["test"].startswith("AUROC"))
    assert auroc_row["value"] == 1.0  # every TP peak is above every FP peak
    assert section.table[0]["test"] == "Kruskal-Wallis" and section.table[0]["p"] < 0.1
    assert _peak_comparison(rows[:5]) == []  # a single FP lesion is no group
