"""Bootstrap intervals over cases (seeded, reproducible) and faithfulness beside random and blurred rankings."""
from __future__ import annotations

import pytest
import torch

from segxai.errors import SegxaiError
from segxai.metrics.faithfulness import curves_with_baselines, deletion_curve
from segxai.metrics.intervals import bootstrap_interval, interval_table
from segxai.targets import ClassRegion
from tests.conftest import grid, threshold_net

pytestmark = pytest.mark.usefixtures("one_thread")


def test_bootstrap_is_reproducible_with_its_seed_and_brackets_the_mean():
    values = torch.randn(30, generator=torch.Generator().manual_seed(3)).tolist()
    first, again = bootstrap_interval(values, seed=7), bootstrap_interval(values, seed=7)
    assert first == again
    assert bootstrap_interval(values, seed=8) != first
    assert first.low < first.mean < first.high and first.n == 30
    wider = bootstrap_interval(values, level=0.99, seed=7)
    assert wider.low <= first.low and wider.high >= first.high


def test_bootstrap_of_two_values_spans_them_and_one_value_is_a_point():
    # Resampled means of [0, 1] are 0, 0.5 or 1 with probabilities 1/4, 1/2, 1/4: the 2.5 % and 97.5 % quantiles
    # are the two values themselves.
    pair = bootstrap_interval([0.0, 1.0], resamples=4000)
    assert (pair.mean, pair.low, pair.high) == (0.5, 0.0, 1.0)
    point = bootstrap_interval([2.5])
    assert (point.low, point.high) == (2.5, 2.5)
    with pytest.raises(SegxaiError, match="finite"):
        bootstrap_interval([1.0, float("nan")])
    with pytest.raises(SegxaiError, match="level"):
        bootstrap_interval([1.0], level=1.0)


def test_interval_table_resamples_cases_after_averaging_their_rows():
    rows = [{"method": m, "case": c, "roi": r, "auc": float(c) + (10 if m == "b" else 0) + r}
            for m in ("a", "b") for c in range(5) for r in (0, 1)]
    rows.append({"method": "a", "case": 0, "roi": 2, "auc": float("nan")})  # skipped
    table = interval_table(rows, ["auc", "missing"], seed=1)
    assert [(r["method"], r["metric"], r["cases"]) for r in table] == [("a", "auc", 5), ("b", "auc", 5)]
    assert table[0]["mean"] == pytest.approx(2.5) and table[1]["mean"] == pytest.approx(12.5)
    expected = bootstrap_interval([c + 0.5 for c in range(5)], seed=1)
    assert (table[0]["low"], table[0]["high"]) == pytest.approx((expected.low, expected.high))
    assert interval_table(rows, ["auc"], seed=1) == table


def test_a_true_map_beats_the_random_ranking_and_the_baselines_repeat_with_the_seed(dims):
    net = threshold_net(dims)  # class 1 logit = the input, per voxel
    x = torch.rand((1, *grid(dims, 8)), generator=torch.Generator().manual_seed(0))
    target = ClassRegion(1)
    truth = x[0].clone()  # the exact attribution of a sum of the input: deleting the largest first drops fastest
    row = curves_with_baselines(net, x, target, truth, steps=8, block=4, seed=3)
    assert set(row) == {f"{kind}{suffix}" for kind in ("deletion_auc", "insertion_auc", "block_area")
                        for suffix in ("", "_random", "_blurred")}
    assert row["deletion_auc"] < row["deletion_auc_random"] and row["insertion_auc"] > row["insertion_auc_random"]
    assert row["block_area"] > row["block_area_random"]
    assert row["deletion_auc"] == pytest.approx(deletion_curve(net, x, target, truth, steps=8).auc)
    assert curves_with_baselines(net, x, target, truth, steps=8, block=4, seed=3) == row
    assert curves_with_baselines(net, x, target, truth, steps=8, seed=4)["deletion_auc_random"] != row["deletion_auc_random"]
    flipped = curves_with_baselines(net, x, target, -truth, steps=8, supportive="low", seed=3)
    assert flipped["deletion_auc"] == pytest.approx(row["deletion_auc"])
