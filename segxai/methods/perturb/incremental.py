"""Incremental inference (after Krypton, Nakandala et al. 2019, here for U-Nets): a perturbation that changes a
small box of the input is run by recomputing each layer only on the box its input changed, grown by the
layer's kernel and stride, and reading everything else from the clean pass's cached activations.

The network is traced with torch.fx; every node must be one of the supported kinds (`rule`): convolutions,
transposed convolutions, max/average pooling and nearest up-sampling (window rules), batch norm in eval, frozen
instance/group/layer norm, activations and dropout in eval (pointwise), and channel concatenation and
addition (skips, residual units). Anything else, a trace that fails or differs from the network, or an inferer
makes `build` return the reason instead. A batch of perturbations is run together: each item has its own box
position, all share the batch's largest box size, so every layer runs once per batch. Computing a layer on
a box is exact for a local network (frozen norms make instance-norm networks local); only the float order of
the sums differs.
"""
from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from segxai.methods.perturb import engine
from segxai.methods.perturb.frozen_norm import Statistics, Sums, input_sums, statistic_layers
from segxai.model import SegModel, SegOutput
from segxai.roi import crop_plan
from segxai.targets import evaluate

# A batch whose common input box holds more than this share of the input runs as a full pass instead.
MAX_BOX_SHARE = 0.5
POINTWISE_MODULES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.ReLU, nn.LeakyReLU, nn.PReLU, nn.ELU,
                     nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Identity, nn.Dropout, nn.Dropout2d, nn.Dropout3d,
                     nn.AlphaDropout)
POINTWISE_FUNCTIONS = (F.relu, F.leaky_relu, F.gelu, F.silu, F.elu, torch.relu, torch.sigmoid, torch.tanh,
                       F.dropout)
JOINS = (operator.add, torch.add, torch.cat)
CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
TRANSPOSED = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
POOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)


@dataclass
class Patch:
    """A node's value for a batch: equal to the clean activation except on the box at `lo[i]` (one corner per
    item) of shape `size`, where it is `data` `(n, C, *size)`."""

    lo: np.ndarray  # (n, dims) int64
    size: tuple[int, ...]
    data: torch.Tensor


def _axes(value, dims: int) -> tuple[int, ...]:
    return tuple(value) if isinstance(value, (tuple, list)) else (int(value),) * dims


def gather(clean: torch.Tensor, patch: Patch | None, lo: np.ndarray, size: tuple[int, ...],
           fill: float = 0.0) -> torch.Tensor:
    """The batch's values on the boxes at `lo` of shape `size` (`(n, C, *size)`): the patch where it has one,
    the clean activation elsewhere, and `fill` outside the grid (the layer's padding)."""
    out = clean.new_full((len(lo), clean.shape[1], *size), fill)
    paste(out, lo, clean, np.zeros((1, len(size)), dtype=np.int64), shared=True)
    if patch is not None:
        paste(out, lo, patch.data, patch.lo)
    return out


def paste(out: torch.Tensor, out_lo: np.ndarray, source: torch.Tensor, source_lo: np.ndarray,
          shared: bool = False) -> None:
    """Copy into each item's box of `out` (`(n, C, *box)`, item i's box at `out_lo[i]`) the overlapping part
    of the source box at `source_lo[i]` (the values `source[i]`, or `source[0]` for all when `shared`; one
    row of `source_lo` serves all). Items whose overlaps sit alike are copied together, so a batch of like
    boxes costs one slice copy."""
    n, dims = out_lo.shape
    low = np.maximum(out_lo, source_lo)
    high = np.minimum(out_lo + np.asarray(out.shape[2:]), source_lo + np.asarray(source.shape[2:]))
    key = np.concatenate([low - out_lo, low - source_lo, high - low], 1)
    present = (high > low).all(1)
    if present.all() and (key == key[0]).all():
        groups = {tuple(key[0].tolist()): None}
    else:
        groups = {}
        for item, row in zip(np.flatnonzero(present).tolist(), key[present].tolist()):
            groups.setdefault(tuple(row), []).append(item)
    for row, items in groups.items():
        into = tuple(slice(row[a], row[a] + row[2 * dims + a]) for a in range(dims))
        read = tuple(slice(row[dims + a], row[dims + a] + row[2 * dims + a]) for a in range(dims))
        if items is None:
            out[(slice(None), slice(None), *into)] = source[(slice(None), slice(None), *read)]
        elif items[-1] - items[0] + 1 == len(items):  # a run of items (perturbations come block by block)
            run = slice(items[0], items[-1] + 1)
            out[(run, slice(None), *into)] = source[(slice(0, 1) if shared else run, slice(None), *read)]
        else:
            index = torch.as_tensor(items, device=out.device)
            out[(index, slice(None), *into)] = source[(slice(0, 1) if shared else index, slice(None), *read)]


def _common(lo: np.ndarray, hi: np.ndarray, grid: tuple[int, ...]) -> tuple[np.ndarray, tuple[int, ...]]:
    """One box size for the batch (the largest box, at most the grid), each item's box moved inside the grid."""
    size = np.minimum((hi - lo).max(0), grid)
    return np.clip(lo, 0, np.asarray(grid) - size), tuple(size.tolist())


# ------------------------------------------------------------------------------------------------ rules
class Window:
    """A layer whose output voxel reads a window of `kernel` input voxels every `stride` (convolution,
    pooling), computed on the box with padding 0 and the layer's padding supplied as `fill` by `gather`."""

    def __init__(self, module: nn.Module, dims: int) -> None:
        self.module, self.dims = module, dims
        self.kernel = _axes(module.kernel_size, dims)
        self.stride = _axes(module.stride if module.stride is not None else module.kernel_size, dims)
        self.dilation = _axes(getattr(module, "dilation", 1), dims)
        padding = module.padding
        if padding == "same":
            padding = tuple(d * (k - 1) // 2 for d, k in zip(self.dilation, self.kernel))
        self.padding = (0,) * dims if padding == "valid" else _axes(padding, dims)
        pooling = isinstance(module, POOLS)
        self.fill = -math.inf if isinstance(module, (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)) else 0.0
        self.function = self._pool if pooling else self._conv

    def _conv(self, x: torch.Tensor) -> torch.Tensor:
        conv = (F.conv1d, F.conv2d, F.conv3d)[self.dims - 1]
        m = self.module
        return conv(x, m.weight, m.bias, self.stride, 0, self.dilation, m.groups)

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        if self.fill == -math.inf:
            return (F.max_pool1d, F.max_pool2d, F.max_pool3d)[self.dims - 1](x, self.kernel, self.stride, 0,
                                                                               self.dilation)
        return (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[self.dims - 1](x, self.kernel, self.stride, 0)

    def __call__(self, clean_in: torch.Tensor, grid_out: tuple[int, ...], patch: Patch) -> Patch:
        k, s, p, d = (np.asarray(v) for v in (self.kernel, self.stride, self.padding, self.dilation))
        reach = (k - 1) * d
        lo = np.maximum(0, -((reach - patch.lo - p) // s))
        hi = np.minimum(grid_out, (patch.lo + np.asarray(patch.size) - 1 + p) // s + 1)
        out_lo, out_size = _common(lo, hi, tuple(grid_out))
        in_lo = out_lo * s - p
        in_size = tuple(((np.asarray(out_size) - 1) * s + reach + 1).tolist())
        return Patch(out_lo, out_size, self.function(gather(clean_in, patch, in_lo, in_size, self.fill)))


class Transposed:
    """A transposed convolution: input voxel i spreads over outputs `i * stride - padding + j * dilation`."""

    def __init__(self, module: nn.Module, dims: int) -> None:
        self.module, self.dims = module, dims
        self.kernel, self.stride = _axes(module.kernel_size, dims), _axes(module.stride, dims)
        self.padding, self.dilation = _axes(module.padding, dims), _axes(module.dilation, dims)

    def __call__(self, clean_in: torch.Tensor, grid_out: tuple[int, ...], patch: Patch) -> Patch:
        grid_in = tuple(clean_in.shape[2:])
        k, s, p, d = (np.asarray(v) for v in (self.kernel, self.stride, self.padding, self.dilation))
        reach = (k - 1) * d
        lo = np.maximum(0, patch.lo * s - p)
        hi = np.minimum(grid_out, (patch.lo + np.asarray(patch.size) - 1) * s - p + reach + 1)
        out_lo, out_size = _common(lo, hi, grid_out)
        need_lo = np.maximum(0, -((reach - out_lo - p) // s))
        need_hi = np.minimum(grid_in, (out_lo + np.asarray(out_size) - 1 + p) // s + 1)
        in_lo, in_size = _common(need_lo, need_hi, grid_in)
        transpose = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[self.dims - 1]
        m = self.module
        y = transpose(gather(clean_in, patch, in_lo, in_size), m.weight, None, self.stride, 0, 0, m.groups,
                      self.dilation)
        out = y.new_zeros((len(out_lo), y.shape[1], *out_size))
        paste(out, out_lo, y, in_lo * s - p)
        if m.bias is not None:
            out = out + m.bias.view(1, -1, *(1,) * self.dims)
        return Patch(out_lo, out_size, out)


class Upsample:
    """Nearest up-sampling by an integer factor: output voxel o copies input voxel o // factor."""

    def __init__(self, factor: tuple[int, ...]) -> None:
        self.factor = factor

    def __call__(self, clean_in, grid_out, patch: Patch) -> Patch:
        data = F.interpolate(patch.data, scale_factor=self.factor, mode="nearest")
        return Patch(patch.lo * np.asarray(self.factor), tuple(n * f for n, f in zip(patch.size, self.factor)), data)


def rule(node: fx.Node, modules: dict[str, nn.Module], frozen: set[str], dims: int) -> Any:
    """The way to run `node` on boxes: "pointwise", "join", a Window/Transposed/Upsample, or a str saying why
    it is not supported."""
    if node.op in ("placeholder", "output"):
        return node.op
    if node.op == "call_module":
        module = modules[node.target]
        kind = type(module).__name__
        if isinstance(module, POINTWISE_MODULES) or node.target in frozen:
            return "pointwise"
        if isinstance(module, CONVS):
            if module.padding_mode != "zeros":
                return f"{kind} with {module.padding_mode} padding"
            return Window(module, dims)
        if isinstance(module, TRANSPOSED):
            return Transposed(module, dims)
        if isinstance(module, POOLS):
            if getattr(module, "ceil_mode", False) or (isinstance(module, (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d))
                                                        and _axes(module.padding, dims) != (0,) * dims
                                                        and not module.count_include_pad):
                return f"{kind} with ceil_mode or padding not counted"
            return Window(module, dims)
        if isinstance(module, nn.Upsample) and module.mode == "nearest" and module.scale_factor is not None:
            factor = _axes(module.scale_factor, dims)
            if all(float(f).is_integer() for f in factor):
                return Upsample(tuple(int(f) for f in factor))
        return f"{kind} ('{node.target}')"
    if node.op == "call_function" and node.target in POINTWISE_FUNCTIONS:
        return "pointwise"
    if node.op == "call_function" and node.target in JOINS:
        if node.target is torch.cat and node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0) != 1:
            return "concatenation along a spatial axis"
        return "join"
    return f"{node.op} {getattr(node.target, '__name__', node.target)}"


# ------------------------------------------------------------------------------------------------ network
class IncrementalNetwork:
    """A traced network, the clean pass's activations and each node's rule; `run(inputs)` gives the logits
    of a batch of perturbed inputs."""

    def __init__(self, model: SegModel, ref: engine.Reference, graph: fx.GraphModule, rules: dict[fx.Node, Any],
                 cache: dict[fx.Node, torch.Tensor], statistics: Statistics | None = None) -> None:
        self.model, self.ref, self.graph, self.rules = model, ref, graph, rules
        self.output = next(n for n in graph.graph.nodes if n.op == "output").args[0]
        # Frozen norm nodes: while the statistics' sink is open, each batch reports its layers' input sums as a
        # whole pass would see them (the clean sums plus what the boxes changed), for the first-order correction.
        self.statistics = statistics
        frozen = set() if statistics is None else set(statistics.moments)
        self.frozen = {node: node.target for node in graph.graph.nodes
                       if node.op == "call_module" and node.target in frozen}
        self.clean_sums = {node.target: input_sums(graph.get_submodule(node.target), cache[node.all_input_nodes[0]])
                           for node in self.frozen}
        self.sums: dict[str, Sums] = {}
        self.reporting = False
        self.rows = torch.zeros(0, dtype=torch.long)
        # Only what boxes are gathered from is kept: the inputs of window, join and frozen nodes, and the output.
        self.grids = {node: tuple(value.shape[2:]) for node, value in cache.items()}
        kept = {self.output} | {a for node, kind in rules.items()
                                if not isinstance(kind, str) or kind == "join" or node in self.frozen
                                for a in node.all_input_nodes}
        self.cache = {node: value for node, value in cache.items() if node in kept}
        # A target that reads only its support's box is scored on logits assembled over that box alone.
        spatial = tuple(ref.x.shape[2:])
        support = ref.target.support(spatial)
        self.window = tuple(slice(0, n) for n in spatial)
        self.target = ref.target
        if support is not None:
            box = crop_plan(support, margin=0).slices
            cropped = ref.target.crop(box)
            if cropped is not None:
                self.window, self.target = box, cropped

    def run(self, inputs: torch.Tensor) -> torch.Tensor:
        """Logits `(n, K, *window)` of `inputs` `(n, C, *spatial)` on the scored window: clean for unchanged
        items, computed on boxes for the others, a full pass for a batch whose changes cover too much."""
        self.reporting = self.statistics is not None and self.statistics.sink is not None
        self.sums = {name: tuple(s.expand(len(inputs), *s.shape[1:]).clone() for s in sums)
                     for name, sums in self.clean_sums.items()} if self.reporting else {}
        try:
            return self._logits(inputs)
        finally:
            if self.reporting:
                self.statistics.sink = self.sums

    def _logits(self, inputs: torch.Tensor) -> torch.Tensor:
        x = self.ref.x
        clean = self.cache[self.output][(..., *self.window)]
        difference = (inputs != x).any(1)
        logits = clean.expand(len(inputs), *clean.shape[1:]).clone()
        rows = torch.nonzero(difference.flatten(1).any(1)).flatten()
        if not len(rows):
            return logits
        lo, size = input_boxes(difference[rows])
        if math.prod(size) > MAX_BOX_SHARE * x[0, 0].numel():
            if self.reporting:
                self.statistics.sink = {}
            logits[rows] = self.graph(inputs[rows])[(..., *self.window)]
            for name, sums in self.statistics.sink.items() if self.reporting else ():
                for mine, found in zip(self.sums[name], sums):
                    mine[rows] = found
            self._count(len(rows), x[0, 0].numel())
            return logits
        self.rows = rows
        start = Patch(lo, size, torch.stack([inputs[(row, slice(None), *(slice(c, c + n) for c, n in zip(corner, size)))]
                                             for row, corner in zip(rows.tolist(), lo.tolist())]))
        values: dict[fx.Node, Patch | None] = {}
        for node in self.graph.graph.nodes:
            values[node] = start if node.op == "placeholder" else self._node(node, values)
        patch = values[self.output]
        if patch is not None:
            changed = logits[rows]
            paste(changed, np.asarray([[w.start for w in self.window]] * len(rows)), patch.data, patch.lo)
            logits[rows] = changed
        self._count(len(rows), math.prod(size))
        return logits

    def _node(self, node: fx.Node, values: dict) -> Patch | None:
        """The node's patch from its inputs' (None: the node is clean for the whole batch)."""
        kind = self.rules[node]
        if kind == "output":
            return values[node.args[0]]
        tensors = [a for a in node.all_input_nodes]
        if all(values[a] is None for a in tensors):
            return None
        if kind == "pointwise":
            (source,) = tensors
            patch = values[source]
            function = self.graph.get_submodule(node.target) if node.op == "call_module" else node.target
            args = [patch.data if a is source else a for a in node.args]
            if self.reporting and node in self.frozen:
                self._box_sums(node, function, patch)
            return Patch(patch.lo, patch.size, function(*args, **node.kwargs))
        if kind == "join":
            present = [values[a] for a in tensors if values[a] is not None]
            grid = self.grids[node]
            lo = np.minimum.reduce([p.lo for p in present])
            hi = np.maximum.reduce([p.lo + np.asarray(p.size) for p in present])
            lo, size = _common(lo, hi, grid)
            boxed = {a: gather(self.cache[a], values[a], lo, size) for a in tensors}
            args = fx.node.map_arg(node.args, lambda a: boxed[a])
            return Patch(lo, size, node.target(*args, **node.kwargs))
        (source,) = tensors
        return kind(self.cache.get(source), self.grids[node], values[source])

    def _box_sums(self, node: fx.Node, module: nn.Module, patch: Patch) -> None:
        """A frozen layer's input sums as a whole pass would see them: the clean sums plus the boxes' change."""
        clean = gather(self.cache[node.all_input_nodes[0]], None, patch.lo, patch.size)
        name = self.frozen[node]
        for mine, changed, before in zip(self.sums[name], input_sums(module, patch.data), input_sums(module, clean)):
            mine[self.rows] += changed - before

    def _count(self, items: int, voxels: int) -> None:
        """Count the batch as the model counts passes; voxels are those of the recomputed input boxes."""
        self.model.forward_calls += 1
        self.model.forward_passes += items
        self.model.forward_voxels += items * voxels

    def scorer(self) -> engine.Scorer:
        """Score a batch of full-size perturbed inputs with the reference's target."""
        activation, threshold = self.ref.output.activation, self.ref.output.threshold
        return lambda inputs: evaluate(self.target, SegOutput(self.run(inputs), activation, threshold))


def input_boxes(changed: torch.Tensor) -> tuple[np.ndarray, tuple[int, ...]]:
    """Each item's bounding box of `changed` `(n, *spatial)` (every item changes somewhere), as one size."""
    grid = tuple(changed.shape[1:])
    lo, hi = [], []
    for axis in range(len(grid)):
        others = tuple(a + 1 for a in range(len(grid)) if a != axis)
        present = (changed.any(dim=others) if others else changed).byte()
        lo.append(present.argmax(1))
        hi.append(grid[axis] - present.flip(1).argmax(1))
    return _common(torch.stack(lo, 1).cpu().numpy(), torch.stack(hi, 1).cpu().numpy(), grid)


def build(model: SegModel, ref: engine.Reference,
          statistics: Statistics | None = None) -> tuple[IncrementalNetwork | None, str]:
    """The incremental network of `model` around `ref` (run inside the plan's norm context, whose frozen
    `statistics` it reports input sums to), or None and why not: "on" or "off: <reason>" is the second value."""
    if model._inferer is not None or not isinstance(model.net, nn.Module):
        return None, "off: the model runs through an inferer or is not a torch.nn.Module"
    try:
        graph = fx.symbolic_trace(model.net)
    except Exception as error:  # noqa: BLE001 - fx raises many kinds on untraceable Python control flow
        return None, f"off: torch.fx cannot trace the network ({type(error).__name__})"
    modules = dict(graph.named_modules())
    frozen = {name for name, module in statistic_layers(model).items() if "forward" in module.__dict__}
    dims = ref.x.ndim - 2
    rules = {node: rule(node, modules, frozen, dims) for node in graph.graph.nodes}
    unsupported = sorted({r for r in rules.values() if isinstance(r, str) and r not in _KINDS})
    if unsupported:
        return None, "off: unsupported " + ", ".join(unsupported[:3])
    try:
        cache = _clean_pass(graph, ref.x)
    except Exception as error:  # noqa: BLE001 - the trace took another branch than the network
        return None, f"off: the traced graph does not run like the network ({type(error).__name__})"
    output = next(n for n in graph.graph.nodes if n.op == "output").args[0]
    if not isinstance(output, fx.Node) or any(
            not isinstance(v, torch.Tensor) or v.ndim != ref.x.ndim for v in cache.values()):
        return None, "off: a layer's value is not a (N, C, *spatial) tensor"
    scale = float(ref.output.logits.abs().max())
    if not torch.allclose(cache[output], ref.output.logits, rtol=1e-4, atol=1e-5 * scale):
        return None, "off: the traced graph does not reproduce the network"
    return IncrementalNetwork(model, ref, graph, rules, cache, statistics), "on"


_KINDS = ("placeholder", "output", "pointwise", "join")


def _clean_pass(graph: fx.GraphModule, x: torch.Tensor) -> dict[fx.Node, torch.Tensor]:
    """Every node's value on the clean input."""
    cache: dict[fx.Node, Any] = {}

    class Recorder(fx.Interpreter):
        def run_node(self, node):
            cache[node] = super().run_node(node)
            return cache[node]

    with torch.no_grad():
        Recorder(graph).run(x)
    return cache
