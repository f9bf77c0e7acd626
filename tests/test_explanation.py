"""Explanation helpers (normalising, binarising, channel reduction) and saving with the scan's geometry."""
from __future__ import annotations

import json
from dataclasses import dataclass

import nibabel as nib
import numpy as np
import pytest
import torch

from segxai.errors import SegxaiError
from segxai.explanation import Explanation, Explanations, ItemStats, stats_view
from segxai.measure import Cost
from segxai.io import Image, load_image, save_array
from segxai.report import save_overlay
from tests.conftest import grid


@dataclass(frozen=True)
class Figures(ItemStats):
    score: float
    shape: tuple[int, ...]


def make(dims: int, channels: int = 2, seed: int = 0, batched: bool = False) -> Explanation:
    generator = torch.Generator().manual_seed(seed)
    shape = ((3,) if batched else ()) + (channels, *grid(dims, 8))
    mask = torch.zeros(grid(dims, 8), dtype=torch.bool)
    mask[(slice(2, 5),) * dims] = True
    return Explanation(
        torch.randn(shape, generator=generator), {"method": "test", "seed": 0}, torch.rand(shape, generator=generator),
        roi=None, target_mask=mask, batched=batched,
    )


def test_channel_reductions(dims):
    e = make(dims)
    a = e.attribution
    assert torch.allclose(e.channel_map("sum"), a.sum(0))
    assert torch.allclose(e.channel_map("abs"), a.abs().sum(0))
    picked = e.channel_map("max_abs")
    assert torch.equal(picked.abs(), a.abs().max(0).values)
    with pytest.raises(SegxaiError, match="reduce"):
        e.channel_map("mean")


def test_normalized_keeps_the_original_and_scales(dims):
    e = make(dims)
    before = e.attribution.clone()
    unit = e.normalized()
    assert unit.min() == 0 and unit.max() == 1
    signed = e.normalized(signed=True)
    assert signed.abs().max() == 1 and torch.equal(torch.sign(signed), torch.sign(before))
    assert torch.equal(e.attribution, before)
    zero = Explanation(torch.zeros(1, *grid(dims, 4)))
    assert zero.normalized().abs().sum() == 0 and zero.normalized(signed=True).abs().sum() == 0


def test_binarize_by_threshold_and_top_k(dims):
    e = make(dims)
    values = e.channel_map()
    scaled = (values - values.min()) / (values.max() - values.min())
    assert torch.equal(e.binarize(threshold=0.5), scaled >= 0.5)
    top = e.binarize(top_k=0.1)
    count = round(0.1 * values.numel())
    assert int(top.sum()) == count
    assert values[top].min() >= values[~top].max()
    with pytest.raises(SegxaiError, match="exactly one"):
        e.binarize()
    with pytest.raises(SegxaiError, match="fraction"):
        e.binarize(top_k=5)


def test_save_3d_keeps_the_reference_affine_and_values(tmp_path):
    e = make(3)
    affine = np.array([[0, -1.5, 0, 10], [2.0, 0, 0, -4], [0, 0, 3.0, 7], [0, 0, 0, 1]])
    reference = save_array(np.zeros(grid(3, 8), np.float32), tmp_path / "scan.nii.gz", like=Image(np.zeros((1, *grid(3, 8))), affine, "nifti"))
    written = e.save(tmp_path / "out", like=reference, channel_names=["flair", "t1"], overlay=save_overlay)
    for index, name in enumerate(["flair", "t1"]):
        nifti = nib.load(written[f"attribution_{name}"])
        np.testing.assert_allclose(nifti.affine, affine)
        np.testing.assert_allclose(np.asarray(nifti.dataobj), e.attribution[index].numpy(), rtol=1e-6)
    assert load_image(written["attribution_flair"]).affine is not None
    stats = json.loads(written["attribution_stats"].read_text())
    assert stats["method"] == "test"
    assert written["attribution_overlay"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if p.name.startswith(".")) == []


def test_save_2d_writes_exact_values_and_pictures(tmp_path):
    e = make(2)
    written = e.save(tmp_path, channel_names=["R", "G"], overlay=save_overlay)
    np.testing.assert_array_equal(np.load(written["attribution_R"]), e.attribution[0].numpy())
    assert written["attribution_R_png"].exists() and written["attribution_overlay"].exists()
    plain = e.save(tmp_path / "plain", channel_names=["R", "G"])
    assert "attribution_overlay" not in plain and plain["attribution_R_png"].exists()


def test_save_batched_writes_one_set_per_item(tmp_path):
    e = make(2, batched=True)
    written = e.save(tmp_path, overlay=save_overlay)
    assert {"attribution_b0_c0", "attribution_b2_c1", "attribution_b1_overlay"} <= set(written)


def test_save_checks_channel_names(tmp_path):
    with pytest.raises(SegxaiError, match="channel names"):
        make(2).save(tmp_path, channel_names=["only-one"])


def test_stats_view_merges_one_item_and_lists_a_batch():
    header = {"method": "m", "seed": 3}
    cost = Cost(forward_passes=4, backward_passes=1, seconds=0.5)
    first, second = Figures(np.float32(1.5), (2, 3)), Figures(-2.0, (4,))
    single = stats_view(header, cost, [first], batched=False)
    assert single == {"method": "m", "seed": 3, **cost.as_dict(), "score": 1.5, "shape": [2, 3]}
    assert type(single["score"]) is float  # numpy scalars become JSON numbers
    batch = stats_view(header, cost, [first, None, second], batched=True)
    assert batch["items"] == [{"score": 1.5, "shape": [2, 3]}, {}, {"score": -2.0, "shape": [4]}]
    assert "score" not in batch and batch["forward_passes"] == 4
    json.dumps(batch)


def test_explanation_carries_typed_cost_and_items(tmp_path):
    items = (Figures(1.0, (1,)), Figures(2.0, (2,)))
    cost = Cost(forward_passes=2)
    e = Explanation(torch.zeros(2, 1, 4, 4), stats_view({"method": "m"}, cost, items, True), batched=True,
                    cost=cost, items=items)
    assert e.item(1).score == 2.0 and e.cost.forward_passes == 2
    with pytest.raises(SegxaiError, match="item 2"):
        e.item(2)
    written = e.save(tmp_path)
    assert json.loads(written["attribution_stats"].read_text())["items"][1] == {"score": 2.0, "shape": [2]}


def test_explanations_sequence_keys_and_cost(tmp_path):
    members = [Explanation(torch.full((1, 4, 4), float(k)), {"method": "m"}, cost=Cost(forward_passes=k + 1))
               for k in range(3)]
    summed = Explanations(members, keys=["a", "b", "c"])
    assert len(summed) == 3 and summed[1] is members[1] and list(summed) == members
    assert summed.by_key["c"] is members[2] and summed.keys == ("a", "b", "c")
    assert summed.cost.forward_passes == 1 + 2 + 3  # separate work adds up
    shared = Explanations(members, cost=Cost(forward_passes=5))
    assert shared.cost.forward_passes == 5 and shared.keys == (0, 1, 2)  # shared work is counted once
    written = summed.save(tmp_path)
    assert np.load(written["attribution_b_c0"]).max() == 1.0 and "attribution_c_stats" in written
    with pytest.raises(SegxaiError, match="distinct key"):
        Explanations(members, keys=["a", "a", "b"])
