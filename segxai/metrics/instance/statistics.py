"""Statistical tests over lesion groups: Kruskal-Wallis with pairwise Mann-Whitney (Bonferroni/Holm), AUROC."""
from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
from scipy import stats

from segxai.errors import SegxaiError


def _sample(values: Sequence[float], name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64).ravel()
    if not np.isfinite(array).all():
        raise SegxaiError(f"the values of {name} contain NaN or infinite values")
    return array


def compare_groups(
    values_by_type: Mapping[str, Sequence[float]], *, correction: Literal["bonferroni", "holm"] = "bonferroni"
) -> dict[str, Any]:
    """Kruskal-Wallis across the groups, then two-sided Mann-Whitney U for every pair with a multiple-testing
    correction (peak saliency of TP, FP and FN lesions, Spagnolo et al., instance-level quantitative saliency).

    Empty groups are left out (listed under "groups" are those used); at least two must remain. Returns
    {"groups", "kruskal": {"statistic", "p"}, "pairwise": [{"a", "b", "u", "p", "p_adjusted"}, ...]}.
    """
    if correction not in ("bonferroni", "holm"):
        raise SegxaiError(f"correction must be 'bonferroni' or 'holm', not {correction!r}")
    groups = {str(name): _sample(values, str(name)) for name, values in values_by_type.items()}
    groups = {name: values for name, values in groups.items() if values.size}
    if len(groups) < 2:
        raise SegxaiError(f"comparing groups needs at least two non-empty groups, got {sorted(groups) or 'none'}")
    pooled = np.concatenate(list(groups.values()))
    if np.all(pooled == pooled[0]):  # SciPy's H is 0/0 here: no group differs from any other
        kruskal = {"statistic": 0.0, "p": 1.0}
    else:
        result = stats.kruskal(*groups.values())
        kruskal = {"statistic": float(result.statistic), "p": float(result.pvalue)}
    pairs = list(itertools.combinations(groups, 2))
    tests = [stats.mannwhitneyu(groups[a], groups[b], alternative="two-sided") for a, b in pairs]
    raw = [float(test.pvalue) for test in tests]
    pairwise = [
        {"a": a, "b": b, "u": float(test.statistic), "p": p, "p_adjusted": q}
        for (a, b), test, p, q in zip(pairs, tests, raw, _adjust(raw, correction))
    ]
    return {"groups": list(groups), "kruskal": kruskal, "pairwise": pairwise}


def _adjust(p_values: Sequence[float], correction: str) -> list[float]:
    """Bonferroni (p·m) or Holm's step-down (running max of p_(i)·(m - i)), capped at 1."""
    m = len(p_values)
    if correction == "bonferroni":
        return [min(1.0, p * m) for p in p_values]
    adjusted = [0.0] * m
    running = 0.0
    for rank, index in enumerate(sorted(range(m), key=lambda i: p_values[i])):
        running = max(running, min(1.0, p_values[index] * (m - rank)))
        adjusted[index] = running
    return adjusted


def auroc(positive: Sequence[float], negative: Sequence[float]) -> float:
    """Area under the ROC curve of a score separating `positive` (e.g. TP peaks) from `negative` (FP peaks).

    By the Mann-Whitney identity it is U / (n_pos · n_neg): the chance that a random positive scores above a
    random negative, ties counting one half.
    """
    pos, neg = _sample(positive, "positive"), _sample(negative, "negative")
    if not (pos.size and neg.size):
        raise SegxaiError("the AUROC needs at least one positive and one negative value")
    return float(stats.mannwhitneyu(pos, neg).statistic) / (pos.size * neg.size)
