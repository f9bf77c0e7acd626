"""Test-time combinations nnU-Net predicts with, as differentiable modules: fold ensembles and mirroring.

nnU-Net averages the logits of its folds and, with mirroring on, the logits of every flipped copy of a tile
(flipped back). Both are linear in the logits, so applying them per tile inside the sliding window gives what
nnU-Net computes per fold and per image; gradients flow through every member.
"""
from __future__ import annotations

from itertools import combinations
from typing import Sequence

import torch
from torch import nn


class FoldEnsemble(nn.Module):
    """The mean of the members' logits. Its layers are named `folds.<i>.<layer>` (Grad-CAM takes those names)."""

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        self.folds = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = self.folds[0](x)
        for member in self.folds[1:]:
            total = total + member(x)
        return total / len(self.folds)


class Mirrored(nn.Module):
    """The mean of `net` over every combination of flips of `axes` (spatial axes, 0 = the first), each flipped
    back: nnU-Net's test-time mirroring, which multiplies the cost by 2^len(axes)."""

    def __init__(self, net: nn.Module, axes: Sequence[int]) -> None:
        super().__init__()
        self.net = net
        self.axes = tuple(int(a) for a in axes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = [a + 2 for a in self.axes if a + 2 < x.ndim]
        flips = [c for k in range(1, len(dims) + 1) for c in combinations(dims, k)]
        total = self.net(x)
        for flip in flips:
            total = total + torch.flip(self.net(torch.flip(x, flip)), flip)
        return total / (len(flips) + 1)
