"""Grad-CAM (Selvaraju et al. 2017; Seg-Grad-CAM, Vinogradova et al. 2020) and Grad-CAM++ (Chattopadhyay et
al. 2018), N-D: channel weights from the target's gradient at a named layer, map upsampled to the input grid."""
from __future__ import annotations

import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from segxai.errors import SegxaiError
from segxai.methods.base import Context, Explainer, target_footprint
from segxai.methods.gradient import GradientStats
from segxai.model import SegModel
from segxai.targets import Target, evaluate

MAX_LISTED = 30
INTERPOLATION = {1: "linear", 2: "bilinear", 3: "trilinear"}
# Per-sample normalisations remove each channel's spatial mean, so the gradient at their input averages to 0 and
# Grad-CAM's channel weights cancel there (every convolution of nnU-Net's networks feeds an instance norm).
MEAN_REMOVING_NORMS = (nn.modules.instancenorm._InstanceNorm, nn.GroupNorm, nn.LayerNorm)
# Below this `gradient_balance` the channel weights are rounding noise: the explanation warns.
BALANCE_WARNING = 1e-4


def conv_layers(net: nn.Module) -> list[str]:
    """Names of the convolution-like modules (plain and transposed), the usual Grad-CAM layers."""
    return [name for name, module in net.named_modules() if isinstance(module, nn.modules.conv._ConvNd)]


def find_layer(net: nn.Module, layer: str) -> nn.Module:
    """The submodule named `layer` (dotted, as in `named_modules()`), or an error listing candidate names."""
    modules = dict(net.named_modules())
    if isinstance(layer, str) and layer and layer in modules:
        return modules[layer]
    candidates = conv_layers(net) or [name for name, module in modules.items() if name and not list(module.children())]
    listed = ", ".join(candidates[-MAX_LISTED:])
    more = f" (the last {MAX_LISTED} of {len(candidates)})" if len(candidates) > MAX_LISTED else ""
    raise SegxaiError(f"the network has no layer {layer!r}; candidate layers{more}: {listed}")


@contextmanager
def record_normalised(net: nn.Module, active: bool) -> Iterator[dict[int, torch.Tensor]]:
    """The tensors that mean-removing normalisation layers receive while the block runs (by id; the tensors are
    held, so ids stay unique), or nothing when not `active`."""
    received: dict[int, torch.Tensor] = {}

    def hook(_module, inputs):
        if inputs and isinstance(inputs[0], torch.Tensor):
            received[id(inputs[0])] = inputs[0]

    norms = [m for m in net.modules() if isinstance(m, MEAN_REMOVING_NORMS)] if active else []
    handles = [norm.register_forward_pre_hook(hook) for norm in norms]
    try:
        yield received
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def record_outputs(net: nn.Module, names: list[str]) -> Iterator[list[tuple[str, Any, int]]]:
    """Record `(name, output, version)` for every call of the named modules, in the order they run."""
    calls: list[tuple[str, Any, int]] = []
    modules = dict(net.named_modules())

    def hook_for(name: str):
        def hook(_module, _inputs, output):
            calls.append((name, output, getattr(output, "_version", 0)))

        return hook

    handles = [modules[name].register_forward_hook(hook_for(name)) for name in names]
    try:
        yield calls
    finally:
        for handle in handles:
            handle.remove()


class LayerGradient(NamedTuple):
    """A layer's activations `(B, K, *grid)` (one per time it ran: once, or once per network call of a tiling
    inferer), the target's gradient with respect to each, the target bound on this output, the layer's name and
    the `(B,)` target scores."""

    activations: tuple[torch.Tensor, ...]
    grads: tuple[torch.Tensor, ...]
    bound: Target
    layer: str
    scores: torch.Tensor


def layer_gradient(model: SegModel, x: torch.Tensor, target: Target, layer: str | None) -> LayerGradient:
    """Activations of `layer` and the gradient of the (self-bound) target's summed scores with respect to them,
    from one forward and one backward pass.

    `layer=None` takes the second-to-last convolution-like module to run (the last one usually computes the
    logits, where Grad-CAM reduces to the logit map), among those whose output does not go straight into an
    instance, group or layer norm (where Grad-CAM's weights cancel) when there are two such. Under a tiling inferer (`GaussianTiles`, e.g. nnU-Net's
    sliding window) the layer runs once per tile call; every run is kept, for `stitch`ing per-tile maps.

    Args:
        model: the model adapter (its network a `torch.nn.Module`).
        x: the `(B, C, *spatial)` batch.
        target: a differentiable target, bound on this forward pass.
        layer: a dotted module name, or None.

    Returns:
        The `LayerGradient` (activations, gradients, bound target, layer name, scores).
    """
    if not target.differentiable:
        raise SegxaiError(f"target {target.describe()['target']} is not differentiable; use a perturbation method")
    net = model.net
    if not isinstance(net, nn.Module):
        raise SegxaiError("Grad-CAM needs the network as a torch.nn.Module to hook its layers")
    names = [layer] if layer is not None else conv_layers(net)
    if layer is not None:
        find_layer(net, layer)
    elif not names:
        raise SegxaiError("the network has no convolution layer; name a layer with layer='dotted.name'")
    x = x.detach().requires_grad_(True)
    tiled = getattr(model.inferer, "stitch", None) is not None
    with (torch.enable_grad(), record_outputs(net, names) as calls, record_normalised(net, layer is None) as normed,
          model.focused(target.support(tuple(x.shape[2:])))):
        output = model(x)
        bound = target.bind(output)
        scores = evaluate(bound, output)
    feeds_norm = {name for name, out, _ in calls if id(out) in normed}
    kept = [call for call in calls if call[0] not in feeds_norm]
    calls = kept if len({name for name, _, _ in kept}) > 1 else calls  # else: the usual choice, with the warning
    normed.clear()
    name, activations = _pick_call(calls, layer, tiled)
    # Under checkpointed tiles, the backward pass also runs to the input, so that each tile's recomputed tensors
    # are freed as its backward ends instead of being held for every tile until the graph goes.
    wanted = (*activations, x) if tiled else tuple(activations)
    grads = torch.autograd.grad(scores.sum(), wanted, allow_unused=True)[:len(activations)]
    if all(g is None for g in grads):
        raise SegxaiError(f"the target score does not depend on layer {name!r}; choose a layer before the output")
    grads = tuple(torch.zeros_like(a) if g is None else g for a, g in zip(activations, grads))
    return LayerGradient(tuple(a.detach().float() for a in activations), tuple(g.float() for g in grads), bound,
                         name, scores.detach())


def _pick_call(calls: list[tuple[str, Any, int]], layer: str | None, tiled: bool) -> tuple[str, list[torch.Tensor]]:
    """The hooked layer's outputs from one forward pass (several only under a tiling inferer), checked to be
    usable, unmodified tensors."""
    order = list(dict.fromkeys(name for name, _, _ in calls))
    if not order:
        raise SegxaiError(f"{'layer ' + repr(layer) if layer else 'no convolution'} ran in the forward pass")
    name = layer if layer is not None else order[-2 if len(order) > 1 else -1]
    runs = [(output, version) for called, output, version in calls if called == name]
    if len(runs) > 1 and not tiled:
        raise SegxaiError(
            f"layer {name!r} ran {len(runs)} times in one forward pass (a shared module, test-time mirroring or an "
            "inferer segxai cannot stitch); Grad-CAM needs a layer that runs once per tile"
        )
    for output, version in runs:
        if not isinstance(output, torch.Tensor) or output.dim() < 3:
            raise SegxaiError(f"layer {name!r} returns {type(output).__name__}, not a (B, K, *spatial) feature map")
        if output._version != version:
            raise SegxaiError(f"the output of layer {name!r} is modified in place later (e.g. by ReLU(inplace=True)); "
                              "choose the next layer")
        if not output.requires_grad:
            raise SegxaiError(f"layer {name!r} is not on the path from the input to the output")
    return name, [output for output, _ in runs]


def gradient_balance(grads: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """`(B,)`: sum over channels of |spatial mean of the gradient| / sum of mean |gradient|, over every run of the
    layer (1 for a gradient of one sign per channel, ~0 where each channel's gradient averages out)."""
    signed = sum(g.flatten(2).mean(2).abs().sum(1) for g in grads)
    magnitude = sum(g.flatten(2).abs().mean(2).sum(1) for g in grads)
    return torch.where(magnitude > 0, signed / torch.where(magnitude > 0, magnitude, 1.0), 1.0)


def upsample(cam: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Linear (bilinear, trilinear) interpolation of a `(B, 1, *grid)` map to the input grid, as MONAI does."""
    if cam.dim() - 2 != len(shape):
        raise SegxaiError(f"the layer's feature map has {cam.dim() - 2} spatial axes but the input has {len(shape)}")
    if tuple(cam.shape[2:]) == shape:
        return cam
    return F.interpolate(cam, size=shape, mode=INTERPOLATION[len(shape)], align_corners=False)


@dataclass(frozen=True)
class CamStats(GradientStats):
    """Per-item figures of Grad-CAM: the clean `score`, the layer used, its feature map's `(K, *grid)` and the
    `gradient_balance`: |spatial mean| / mean |.| of the layer's gradient, over channels (near 0: the channel
    weights cancel, as at a layer feeding an instance norm, and the map is noise)."""

    layer: str
    layer_shape: tuple[int, ...]
    gradient_balance: float


class GradCAM(Explainer):
    """Grad-CAM at `layer`: `L = sum_k a_k A^k` with `a_k` the spatial mean of `dT/dA^k`, upsampled to the input.

    The attribution is one channel `(B, 1, *spatial)`, kept signed and unnormalised (negative where the
    features count against the target); `relu=True` applies the paper's ReLU before upsampling, as MONAI does.
    Normalise with `Explanation.normalized()` for display. `layer` is a dotted module name; None takes the
    second-to-last convolution to run, preferring those not feeding an instance norm (`layer_gradient`; name a
    decoder layer of a U-Net explicitly, e.g. the instance-saliency paper's `model.1.submodule.2.conv`, or a block
    such as nnU-Net's `decoder.stages.1`). `gradient_balance` in the stats (and a warning) tells when the
    gradient at the layer averages out, so that the map is noise. The layer must run once per forward pass, or once per tile call under
    `GaussianTiles` (nnU-Net's sliding window): then each tile gets its own map, blended as the logits are.
    """

    name = "gradcam"
    summary = "Grad-CAM / Seg-Grad-CAM (Selvaraju et al. 2017): gradient-weighted layer activations, upsampled"

    def __init__(self, model, layer: str | None = None, relu: bool = False) -> None:
        """
        Args:
            model: a `SegModel` or a network (a `torch.nn.Module`, to hook its layers).
            layer: dotted module name; None takes the second-to-last convolution to run (`layer_gradient`).
            relu: apply the paper's ReLU to the map before upsampling.
        """
        super().__init__(model)
        if layer is not None:
            if not isinstance(self.model.net, nn.Module):
                raise SegxaiError("Grad-CAM needs the network as a torch.nn.Module to hook its layers")
            find_layer(self.model.net, layer)
        self.layer = layer
        self.relu = bool(relu)

    def params(self) -> dict[str, Any]:
        return {"layer": self.layer, "relu": self.relu}

    def _attribute(self, x: torch.Tensor, target: Target, roi: torch.Tensor | None, context: Context):
        found = layer_gradient(self.model, x, target, self.layer)
        if len(found.activations) == 1:
            cam = upsample(self._layer_map(found.activations[0], found.grads[0]), tuple(x.shape[2:]))
        else:  # one map per tile, each at its tile's size, blended as the tiles' logits are
            patch = self.model.inferer.tile_shape(x.dim() - 2)
            cam = self.model.inferer.stitch([upsample(self._layer_map(a, g), patch)
                                             for a, g in zip(found.activations, found.grads)])
        shape = tuple(found.activations[0].shape[1:])
        balance = gradient_balance(found.grads)
        for item, score in enumerate(found.scores.tolist()):
            context.record(item, CamStats(score=score, layer=found.layer, layer_shape=shape,
                                          gradient_balance=float(balance[item])))
        if bool((balance < BALANCE_WARNING).any()):
            warnings.warn(f"the target's gradient at layer {found.layer!r} averages to ~0 over space (balance "
                          f"{float(balance.min()):.1e}): Grad-CAM's channel weights cancel there (a layer feeding an "
                          "instance norm?); choose a block's output or the layer after the norm", stacklevel=3)
        if roi is not None:
            cam = cam * roi.to(cam.device)
        return cam, target_footprint(found.bound, x)

    def _layer_map(self, activation: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        """`(B, 1, *grid)`: the channels weighted by `channel_weights`, summed (ReLU'd with `relu`)."""
        weights = self.channel_weights(activation, grad)
        cam = (weights.view(*weights.shape, *(1,) * (activation.dim() - 2)) * activation).sum(1, keepdim=True)
        return torch.relu(cam) if self.relu else cam

    def channel_weights(self, activation: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        """`(B, K)` weights of the layer's channels: the spatial mean of the gradient."""
        return grad.flatten(2).mean(2)


class GradCAMpp(GradCAM):
    """Grad-CAM++: `w_k = sum_u a_u ReLU(g_u)` with `a_u = g_u^2 / (2 g_u^2 + sum_v A_v g_v^3)`, `g = dT/dA^k`.

    The paper differentiates `S = exp(T)`: its 2nd and 3rd derivatives are `S g^2` and `S g^3` (for a network
    piecewise linear after the layer), so S cancels in `a` and is a positive factor of every weight. We drop it:
    the map is MONAI's `GradCAMpp` divided by `exp(T)` (T is `score` in the stats), a factor that
    overflows float32 once T sums hundreds of logits.
    The denominator sums `A_v g_v^3` over positions as MONAI does (the paper writes `g_u^3 sum_v A_v`; both agree
    when the gradient is spatially constant, as behind global pooling); where it is 0, `a` is 0.
    """

    name = "gradcampp"
    summary = "Grad-CAM++ (Chattopadhyay et al. 2018): Grad-CAM with higher-order channel weights"

    def channel_weights(self, activation: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        squared = grad.pow(2)
        spread = (activation * grad.pow(3)).flatten(2).sum(2)
        denominator = 2 * squared + spread.view(*spread.shape, *(1,) * (grad.dim() - 2))
        nonzero = denominator != 0
        alpha = torch.where(nonzero, squared / torch.where(nonzero, denominator, torch.ones_like(denominator)), 0.0)
        return (alpha * torch.relu(grad)).flatten(2).sum(2)
