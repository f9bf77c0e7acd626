"""SegModel: run the user's segmentation network the way they run it, and count what it costs.

Every method and metric calls the network through this adapter, so activation handling, deep-supervision
outputs, padding to the network's stride, sliding-window inference, device placement, mixed precision and pass
counting are written once.
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, ContextManager, Literal, Sequence

import numpy as np
import torch
from torch import nn

from segxai.errors import SegxaiError

if TYPE_CHECKING:
    from segxai.measure import Measure

Activation = Literal["softmax", "sigmoid", "none"]
PadMode = Literal["constant", "replicate", "reflect"]
ArrayLike = torch.Tensor | np.ndarray


@dataclass
class SegOutput:
    """A segmentation output `(B, K, *spatial)` with the meaning of its classes.

    A class index `cls` is always a value of the label map: the channel for softmax (and multi-channel
    "none") outputs; 1 = foreground (0 = its complement) for a one-channel output; channel c + 1 for a
    multi-channel sigmoid (multi-label) output, where 0 means "no label above threshold".
    """

    logits: torch.Tensor
    activation: Activation = "softmax"
    threshold: float = 0.5

    @property
    def num_channels(self) -> int:
        return int(self.logits.shape[1])

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return tuple(self.logits.shape[2:])

    @property
    def multi_label(self) -> bool:
        return self.activation == "sigmoid" and self.num_channels > 1

    @property
    def one_channel(self) -> bool:
        return self.activation != "softmax" and self.num_channels == 1

    @property
    def classes(self) -> list[int]:
        """The valid class indices (values the label map can take)."""
        if self.one_channel:
            return [0, 1]
        if self.multi_label:
            return list(range(self.num_channels + 1))
        return list(range(self.num_channels))

    def check_class(self, cls: int) -> int:
        if not isinstance(cls, (int, np.integer)) or int(cls) not in self.classes:
            raise SegxaiError(
                f"class index {cls!r} is out of range for a {self.activation} output with "
                f"{self.num_channels} channel(s); valid classes are {self.classes}"
            )
        return int(cls)

    @property
    def probs(self) -> torch.Tensor:
        """Per-channel probabilities (the raw values for activation='none')."""
        if self.activation == "softmax":
            return torch.softmax(self.logits.float(), dim=1)
        if self.activation == "sigmoid":
            return torch.sigmoid(self.logits.float())
        return self.logits.float()

    def class_logit(self, cls: int) -> torch.Tensor:
        """The pre-activation score of class `cls`, `(B, *spatial)`."""
        cls = self.check_class(cls)
        if self.one_channel:
            z = self.logits[:, 0].float()
            return z if cls == 1 else -z
        if self.multi_label:
            if cls == 0:
                raise SegxaiError("class 0 (no label) of a multi-label sigmoid output has no logit channel")
            return self.logits[:, cls - 1].float()
        return self.logits[:, cls].float()

    def class_prob(self, cls: int) -> torch.Tensor:
        """The probability of class `cls`, `(B, *spatial)`."""
        cls = self.check_class(cls)
        probs = self.probs
        if self.one_channel:
            return probs[:, 0] if cls == 1 else 1.0 - probs[:, 0]
        if self.multi_label:
            if cls == 0:
                return torch.prod(1.0 - probs, dim=1)
            return probs[:, cls - 1]
        return probs[:, cls]

    def label_map(self) -> torch.Tensor:
        """The predicted label map `(B, *spatial)` (int64), in the class convention above."""
        with torch.no_grad():
            probs = self.probs
            if self.one_channel:
                return (probs[:, 0] > self.threshold).long()
            if self.multi_label:
                best, index = probs.max(dim=1)
                return torch.where(best > self.threshold, index + 1, torch.zeros_like(index))
            return probs.max(dim=1).indices  # = argmax (first maximum), which is ~20x slower on CPU over dim 1

    def class_mask(self, cls: int) -> torch.Tensor:
        """Boolean prediction of class `cls`, `(B, *spatial)`; labels may overlap for multi-label outputs."""
        cls = self.check_class(cls)
        if self.multi_label and cls > 0:
            with torch.no_grad():
                return self.probs[:, cls - 1] > self.threshold
        return self.label_map() == cls


class SegModel:
    """Adapter around a segmentation network returning logits `(B, K, *spatial)`.

    It puts the network in eval mode, applies an optional inferer ("sliding_window" uses MONAI's
    `sliding_window_inference`, which keeps gradients), takes the full-resolution head of deep-supervision
    outputs, pads inputs at the end of each axis up to a multiple of `pad_to` (the network's total stride, so
    any grid goes in) and crops the logits back to the input grid (gradients flow through both), runs on
    `device` with optional autocast (`amp`, CUDA only), and counts forward and backward
    passes (`forward_calls`, `backward_calls`) and the batch items they carried (`forward_passes`,
    `backward_passes`, the figures every explanation reports). Calling it returns a `SegOutput`;
    `with model.measure() as cost:` also records seconds and peak memory.

    Padding goes at the end of each axis (never the start), so voxel i of the input is voxel i of the padded
    grid and a stride-aligned crop sees the same sampling phase as the full input. `SegModel(other_segmodel)`
    makes a model on the same network with the same settings (the other arguments are then not used).
    """

    def __init__(
        self,
        net: nn.Module | Callable[[torch.Tensor], Any],
        activation: Activation = "softmax",
        *,
        threshold: float = 0.5,
        inferer: None | str | Callable[[torch.Tensor, Callable], Any] = None,
        roi_size: int | Sequence[int] | None = None,
        sw_batch_size: int = 4,
        overlap: float = 0.25,
        blend_mode: str = "gaussian",
        output_index: int = 0,
        in_channels: int | None = None,
        spatial_dims: int | None = None,
        device: str | torch.device | None = None,
        amp: bool = False,
        pad_to: int | Sequence[int] | None = None,
        pad_mode: PadMode = "constant",
    ) -> None:
        if isinstance(net, SegModel):  # e.g. SegModel(load_checkpoint(path)[0]): same network, same settings
            self.__dict__.update(net.__dict__)
            self.receptive_fields = dict(net.receptive_fields)
            self.reset_counts()
            return
        if activation not in ("softmax", "sigmoid", "none"):
            raise SegxaiError(f"activation must be 'softmax', 'sigmoid' or 'none', not {activation!r}")
        if not callable(net):
            raise SegxaiError(f"net must be a torch.nn.Module or a callable, not {type(net).__name__}")
        self.device = as_device(device) if device is not None else _module_device(net)
        self.net = net
        if isinstance(net, nn.Module):
            net.eval()
            net.to(self.device)
        self.activation: Activation = activation
        self.threshold = float(threshold)
        self.output_index = int(output_index)
        self.amp = bool(amp)
        first_conv = _first_conv(net)
        self.in_channels = in_channels if in_channels is not None else getattr(first_conv, "in_channels", None)
        self.spatial_dims = spatial_dims if spatial_dims is not None else _conv_dims(first_conv)
        self.inferer = inferer
        self._inferer = self._build_inferer(inferer, roi_size, sw_batch_size, overlap, blend_mode)
        self.pad_to = _pad_multiples(pad_to, self.spatial_dims)
        if pad_mode not in ("constant", "replicate", "reflect"):
            raise SegxaiError(f"pad_mode must be 'constant', 'replicate' or 'reflect', not {pad_mode!r}")
        self.pad_mode: PadMode = pad_mode
        # Receptive-field radii measured by `segxai.roi.receptive_field`, by input spatial shape.
        self.receptive_fields: dict[tuple[int, ...], tuple[int, ...] | None] = {}
        self.reset_counts()

    # ----------------------------------------------------------------------------------- running
    def __call__(self, x: torch.Tensor) -> SegOutput:
        """Run the network on a validated batch `(B, C, *spatial)` and return its output."""
        if x.device != self.device:
            x = x.to(self.device)
        autocast = torch.autocast("cuda") if self.amp and self.device.type == "cuda" else nullcontext()
        padded, crop = pad_to_multiple(x, self.pad_to, self.pad_mode)
        try:
            with autocast:
                raw = self._inferer(padded) if self._inferer is not None else self.net(padded)
        except RuntimeError as error:  # shape and dtype failures deep inside the network
            raise SegxaiError(
                f"the network failed on an input of shape {tuple(padded.shape)}: {str(error).splitlines()[0]} "
                "(check the channel count, and that spatial sizes fit the network, e.g. multiples of its stride: "
                "SegModel(net, pad_to=STRIDE) pads any grid)"
            ) from error
        logits = self._select_output(raw, padded)[crop]
        self.forward_calls += 1
        self.forward_passes += int(x.shape[0])
        self.forward_voxels += int(x.shape[0]) * int(x[0, 0].numel())
        if logits.requires_grad:
            logits.register_hook(self._count_backward(int(x.shape[0])))
        return SegOutput(logits, self.activation, self.threshold)

    def predict(self, inputs: ArrayLike) -> torch.Tensor:
        """Label map of `inputs` (`(C, *spatial)` -> `(*spatial)`, `(B, C, *spatial)` -> `(B, *spatial)`)."""
        x, batched = self.prepare(inputs)
        with torch.no_grad():
            labels = self(x).label_map()
        return labels if batched else labels[0]

    def focused(self, support: torch.Tensor | None) -> ContextManager[None]:
        """Within the block, let a tiling inferer (one with a `focused` method, e.g.
        `segxai.models.tiling.GaussianTiles`) run only the tiles that reach `support`, the output voxels about to
        be read; a no-op for other inferers or when `support` is None."""
        focused = getattr(self.inferer, "focused", None)
        return nullcontext() if focused is None or support is None else focused(support)

    def prepare(self, inputs: ArrayLike) -> tuple[torch.Tensor, bool]:
        """Validate `inputs` and return a float batch on the model's device, and whether it was batched."""
        return check_input(inputs, self.in_channels, self.spatial_dims, device=self.device)

    # ----------------------------------------------------------------------------------- counting
    def reset_counts(self) -> None:
        self.forward_calls = self.backward_calls = 0
        self.forward_passes = self.backward_passes = 0
        self.forward_voxels = 0

    def counts(self) -> dict[str, int]:
        """Passes in batch items (`*_passes`), in calls (`*_calls`), and the input voxels the forward passes
        carried (`forward_voxels`: the hardware-independent cost of cropped computation) since the last reset."""
        return {
            "forward_passes": self.forward_passes,
            "forward_voxels": self.forward_voxels,
            "backward_passes": self.backward_passes,
            "forward_calls": self.forward_calls,
            "backward_calls": self.backward_calls,
        }

    def measure(self) -> "Measure":
        """A context manager recording seconds, peak memory and the passes run inside it."""
        from segxai.measure import Measure

        return Measure(self)

    def _count_backward(self, items: int) -> Callable[[torch.Tensor], None]:
        def hook(_grad: torch.Tensor) -> None:
            self.backward_calls += 1
            self.backward_passes += items

        return hook

    # ----------------------------------------------------------------------------------- internals
    def _build_inferer(self, inferer, roi_size, sw_batch_size, overlap, blend_mode):
        if inferer is None:
            return None
        if callable(inferer):
            return lambda x: inferer(x, self.net)
        if inferer != "sliding_window":
            raise SegxaiError(f"inferer must be None, 'sliding_window' or a callable, not {inferer!r}")
        if roi_size is None:
            raise SegxaiError("inferer='sliding_window' needs roi_size (the window, e.g. 96 or (96, 96, 96))")
        from monai.inferers import sliding_window_inference

        def run(x: torch.Tensor) -> torch.Tensor:
            out = sliding_window_inference(
                x, roi_size, sw_batch_size, self.net, overlap=overlap, mode=blend_mode
            )
            return out.as_tensor() if hasattr(out, "as_tensor") else out

        return run

    def _select_output(self, raw: Any, x: torch.Tensor) -> torch.Tensor:
        """Pick the full-resolution logits from a tensor, a deep-supervision list or a stacked tensor."""
        if isinstance(raw, (list, tuple)):
            if not raw:
                raise SegxaiError("the network returned an empty sequence of outputs")
            if not -len(raw) <= self.output_index < len(raw):
                raise SegxaiError(f"output_index {self.output_index} is out of range for {len(raw)} outputs")
            raw = raw[self.output_index]
        if isinstance(raw, dict):
            raise SegxaiError("the network returned a dict; wrap it so it returns the logits tensor")
        if not isinstance(raw, torch.Tensor):
            raise SegxaiError(f"the network returned {type(raw).__name__}, expected a tensor of logits")
        if hasattr(raw, "as_tensor"):
            raw = raw.as_tensor()
        if raw.ndim == x.ndim + 1:  # deep supervision stacked as (B, heads, K, *spatial)
            raw = raw[:, self.output_index]
        if raw.ndim != x.ndim or raw.shape[0] != x.shape[0] or tuple(raw.shape[2:]) != tuple(x.shape[2:]):
            raise SegxaiError(
                f"the network maps input {tuple(x.shape)} to output {tuple(raw.shape)}; segxai needs logits "
                f"(B, K, *spatial) on the input grid {tuple(x.shape[2:])} (when sizes must be multiples of its "
                "stride, SegModel(net, pad_to=STRIDE) pads any grid)"
            )
        return raw


def pad_to_multiple(
    x: torch.Tensor, multiples: tuple[int, ...] | None, mode: PadMode = "constant"
) -> tuple[torch.Tensor, tuple[slice, ...]]:
    """Pad the spatial axes of a batch `(B, C, *spatial)` at their end up to multiples of `multiples`.

    Returns the padded batch (`x` itself when nothing is needed) and the index that crops a `(B, K, *padded)`
    output back to the input grid. Constant padding is zero (the normalised input's value there).
    """
    spatial = tuple(x.shape[2:])
    keep = (slice(None), slice(None), *(slice(0, n) for n in spatial))
    if multiples is None:
        return x, keep
    if len(multiples) == 1:
        multiples = multiples * len(spatial)
    if len(multiples) != len(spatial):
        raise SegxaiError(f"pad_to has {len(multiples)} values but the input has {len(spatial)} spatial axes")
    extra = [-n % m for n, m in zip(spatial, multiples)]
    if not any(extra):
        return x, keep
    if mode == "reflect" and any(e >= n for e, n in zip(extra, spatial)):
        raise SegxaiError(f"reflect padding needs each size above its padding; use pad_mode='replicate' for {spatial}")
    widths = [w for e in reversed(extra) for w in (0, e)]  # torch lists the last axis first
    return torch.nn.functional.pad(x, widths, mode=mode), keep


def _pad_multiples(pad_to: int | Sequence[int] | None, spatial_dims: int | None) -> tuple[int, ...] | None:
    if pad_to is None:
        return None
    values = (int(pad_to),) if isinstance(pad_to, (int, np.integer)) else tuple(int(v) for v in pad_to)
    if not values or min(values) < 1 or (spatial_dims is not None and len(values) not in (1, spatial_dims)):
        raise SegxaiError(f"pad_to must be a positive int or one per spatial axis, not {pad_to!r}")
    return None if max(values) == 1 else values


def check_input(
    inputs: ArrayLike,
    in_channels: int | None = None,
    spatial_dims: int | None = None,
    *,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, bool]:
    """Turn `(C, *spatial)` or `(B, C, *spatial)` data into a float batch, with clear errors.

    Returns the batch and whether the input already had a batch dimension.
    """
    if isinstance(inputs, np.ndarray):
        if not np.issubdtype(inputs.dtype, np.number) and inputs.dtype != bool:
            raise SegxaiError(f"image array has non-numeric dtype {inputs.dtype}")
        x = torch.from_numpy(np.ascontiguousarray(inputs))
    elif isinstance(inputs, torch.Tensor):
        x = inputs.detach()
    else:
        raise SegxaiError(f"inputs must be a torch.Tensor or numpy array, not {type(inputs).__name__}")
    if x.ndim < 3 or x.ndim > 5:
        raise SegxaiError(
            f"inputs of shape {tuple(x.shape)}: expected (C, H, W), (C, D, H, W) or a batch (B, C, ...) "
            "with 2 or 3 spatial dimensions"
        )
    if spatial_dims is not None:
        if x.ndim == spatial_dims + 1:
            x, batched = x.unsqueeze(0), False
        elif x.ndim == spatial_dims + 2:
            batched = True
        else:
            raise SegxaiError(
                f"inputs of shape {tuple(x.shape)} do not fit a {spatial_dims}D model: expected "
                f"(C, {'D, ' if spatial_dims == 3 else ''}H, W) or with a leading batch dimension"
            )
    else:
        batched = x.ndim == 5 or (x.ndim == 4 and in_channels is not None and x.shape[1] == in_channels)
        if not batched:
            x = x.unsqueeze(0)
    if in_channels is not None and x.shape[1] != in_channels:
        raise SegxaiError(f"inputs have {x.shape[1]} channel(s) but the model expects {in_channels}")
    x = x.float()
    if not torch.isfinite(x).all():
        bad = int((~torch.isfinite(x)).sum())
        raise SegxaiError(f"inputs contain {bad} NaN or infinite value(s); clean or mask them first")
    if device is not None:
        x = x.to(device)
    return x.contiguous(), batched


def _first_conv(net: Any) -> nn.Module | None:
    if not isinstance(net, nn.Module):
        return None
    for module in net.modules():
        if isinstance(module, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
            return module
    return None


def _conv_dims(conv: nn.Module | None) -> int | None:
    if isinstance(conv, (nn.Conv2d, nn.ConvTranspose2d)):
        return 2
    if isinstance(conv, (nn.Conv3d, nn.ConvTranspose3d)):
        return 3
    return None


def as_device(spec: str | torch.device) -> torch.device:
    """A device that exists here, from its name (`cpu`, `cuda`, `cuda:1`, `mps`), or a clear error."""
    try:
        device = torch.device(spec)
    except (RuntimeError, TypeError):
        raise SegxaiError(f"unknown device {spec!r}; use cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (device.index or 0) >= count:
            raise SegxaiError(f"device {spec!r} is not available: this machine has {count} CUDA device(s)")
    elif device.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise SegxaiError(f"device {spec!r} is not available on this machine")
    elif device.type not in ("cpu", "cuda", "mps", "meta"):
        raise SegxaiError(f"device {spec!r} is not supported; use cpu, cuda, cuda:N or mps")
    return device


def _module_device(net: Any) -> torch.device:
    if isinstance(net, nn.Module):
        for tensor in list(net.parameters()) + list(net.buffers()):
            return tensor.device
    return torch.device("cpu")
