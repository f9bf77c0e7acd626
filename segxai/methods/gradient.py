"""Gradient methods: attribution from d(target score)/d(input)."""
from __future__ import annotations

from typing import Any

import torch

from segxai.errors import SegxaiError
from segxai.methods.base import Context, Explainer, target_footprint
from segxai.model import SegModel
from segxai.targets import Target, evaluate


def input_gradient(model: SegModel, x: torch.Tensor, target: Target, bind_to_self: bool = True) -> tuple[torch.Tensor, Target]:
    """Gradient of the (bound) target's scores with respect to the batch `x`, one backward pass.

    Batch items are independent in eval mode, so the gradient of the summed scores is each item's own.
    Returns the gradient and the bound target.
    """
    if not target.differentiable:
        raise SegxaiError(
            f"target {target.describe()['target']} is not differentiable; use a perturbation method, or "
            "soft=True for a Dice target"
        )
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        output = model(x)
        bound = target.bind(output) if bind_to_self else target
        scores = evaluate(bound, output)
        if not scores.requires_grad:
            raise SegxaiError("the target score does not depend on the input through the network; nothing to differentiate")
        (grad,) = torch.autograd.grad(scores.sum(), x, allow_unused=True)
    if grad is None:
        raise SegxaiError("the target score does not depend on the input; nothing to differentiate")
    return grad, bound


class Saliency(Explainer):
    """Plain input gradient (Simonyan et al. 2014), signed: how the target score changes per unit of input.

    Kept signed and unnormalised (Captum's Saliency takes the absolute value by default; we do not), so maps
    compare across lesions and models. With an ROI, the map is zero outside it.
    """

    name = "saliency"

    def __init__(self, model, absolute: bool = False) -> None:
        super().__init__(model)
        self.absolute = bool(absolute)

    def params(self) -> dict[str, Any]:
        return {"absolute": self.absolute}

    def _attribute(self, x: torch.Tensor, target: Target, roi: torch.Tensor | None, context: Context):
        grad, bound = input_gradient(self.model, x, target)
        if self.absolute:
            grad = grad.abs()
        if roi is not None:
            grad = grad * roi.to(grad.device)
        return grad, target_footprint(bound, x)
