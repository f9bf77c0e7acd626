"""Gradient methods: attribution from d(target score)/d(input)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from segxai.errors import SegxaiError
from segxai.explanation import ItemStats
from segxai.methods.base import Context, Explainer, target_footprint
from segxai.model import SegModel
from segxai.targets import Target, evaluate


@dataclass(frozen=True)
class GradientStats(ItemStats):
    """Per-item figures of a gradient method: `score`, the target's score on the item's clean input."""

    score: float


class InputGradient(NamedTuple):
    """The gradient `(B, C, *spatial)`, the target bound on this output and the `(B,)` target scores."""

    grad: torch.Tensor
    bound: Target
    scores: torch.Tensor


def input_gradient(model: SegModel, x: torch.Tensor, target: Target, bind_to_self: bool = True) -> InputGradient:
    """Gradient of the (bound) target's scores with respect to the batch `x`, one backward pass.

    Batch items are independent in eval mode, so the gradient of the summed scores is each item's own.

    Args:
        model: the model adapter.
        x: the `(B, C, *spatial)` batch.
        target: the target; bound to this output first unless `bind_to_self` is False (already bound).
        bind_to_self: bind the target on this forward pass.

    Returns:
        The gradient, the bound target and the scores.
    """
    if not target.differentiable:
        raise SegxaiError(
            f"target {target.describe()['target']} is not differentiable; use a perturbation method, or "
            "soft=True for a Dice target"
        )
    x = x.detach().requires_grad_(True)
    with torch.enable_grad(), model.focused(target.support(tuple(x.shape[2:]))):
        output = model(x)
        bound = target.bind(output) if bind_to_self else target
        scores = evaluate(bound, output)
        if not scores.requires_grad:
            raise SegxaiError("the target score does not depend on the input through the network; nothing to differentiate")
        (grad,) = torch.autograd.grad(scores.sum(), x, allow_unused=True)
    if grad is None:
        raise SegxaiError("the target score does not depend on the input; nothing to differentiate")
    return InputGradient(grad, bound, scores.detach())


class Saliency(Explainer):
    """Plain input gradient (Simonyan et al. 2014), signed: how the target score changes per unit of input.

    Kept signed and unnormalised (Captum's Saliency takes the absolute value by default; we do not), so maps
    compare across lesions and models. With an ROI, the map is zero outside it.
    """

    name = "saliency"
    summary = "plain input gradient (Simonyan et al. 2014), signed"

    def __init__(self, model, absolute: bool = False) -> None:
        """
        Args:
            model: a `SegModel` or a network.
            absolute: take |gradient| (Captum's default), losing the sign.
        """
        super().__init__(model)
        self.absolute = bool(absolute)

    def params(self) -> dict[str, Any]:
        return {"absolute": self.absolute}

    def _attribute(self, x: torch.Tensor, target: Target, roi: torch.Tensor | None, context: Context):
        grad, bound, scores = input_gradient(self.model, x, target)
        for item, score in enumerate(scores.tolist()):
            context.record(item, GradientStats(score=score))
        if self.absolute:
            grad = grad.abs()
        if roi is not None:
            grad = grad * roi.to(grad.device)
        return grad, target_footprint(bound, x)
