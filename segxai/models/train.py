"""A short, seeded trainer for the reference U-Nets: enough to get a real model to explain in a minute or two."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

import numpy as np
import torch
from torch import nn

from segxai.models.presets import build_network, network_config, total_stride
from segxai.errors import SegxaiError
from segxai.preprocess import normalize_intensity
from segxai.progress import progress_bar

PHANTOM_SETTINGS: dict[str, dict[str, Any]] = {
    "abdomen": {"intensity": {"kind": "window", "low": -200.0, "high": 700.0}},
    "brain": {"intensity": {"kind": "zscore_nonzero"}},
}


@dataclass
class TrainResult:
    """The trained network, its checkpoint configuration and the validation Dice per class name."""

    net: nn.Module
    config: dict[str, Any]
    dice: dict[str, float] = field(default_factory=dict)
    losses: list[float] = field(default_factory=list)


def one_cycle_schedule(optimiser: torch.optim.Optimizer, lr: float, steps: int) -> torch.optim.lr_scheduler.OneCycleLR:
    """One-cycle learning rate with a 10 % warm-up, lengthened for short runs: torch divides by zero when the
    warm-up ends on step 0 (e.g. 10 steps at 10 %)."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise SegxaiError(f"steps must be a whole number >= 1, not {steps!r}")
    warmup = min(0.75, max(0.1, 1.5 / steps))
    return torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=lr, total_steps=steps, pct_start=warmup)


def dice_per_class(predicted: np.ndarray, truth: np.ndarray, classes: Sequence[int]) -> dict[int, float]:
    """Dice of each class between two label maps (1.0 when both are empty)."""
    scores = {}
    for cls in classes:
        p, t = predicted == cls, truth == cls
        denominator = p.sum() + t.sum()
        scores[int(cls)] = 1.0 if denominator == 0 else float(2 * (p & t).sum() / denominator)
    return scores


def train_segmenter(
    images: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    *,
    names: dict[int, str],
    preset: str | None = None,
    intensity: dict[str, Any] | None = None,
    channel_names: Sequence[str] | None = None,
    val_images: Sequence[np.ndarray] = (),
    val_labels: Sequence[np.ndarray] = (),
    steps: int = 300,
    batch_size: int = 4,
    lr: float = 3e-3,
    seed: int = 0,
    progress: bool = True,
) -> TrainResult:
    """Train a MONAI U-Net preset with Dice + cross-entropy on `(C, *spatial)` images and label maps.

    Images are normalised with `intensity` (stored in the config so explaining applies the same). Every
    random draw (initialisation, batch order) comes from `seed`; the global RNG state is left untouched.
    """
    from monai.losses import DiceCELoss

    if not images or len(images) != len(labels):
        raise SegxaiError(f"need the same, non-zero number of images and label maps (got {len(images)} and {len(labels)})")
    spatial_dims = images[0].ndim - 1
    preset = preset or f"unet{spatial_dims}d"
    out_channels = max(int(max(np.max(l) for l in labels)), max(names)) + 1
    config = network_config(
        preset, in_channels=int(images[0].shape[0]), out_channels=out_channels,
        names={int(k): v for k, v in names.items()}, intensity=intensity,
        channel_names=list(channel_names or [f"c{i}" for i in range(images[0].shape[0])]),
    )
    _check_sizes(images, labels, total_stride(config))
    x_all = torch.from_numpy(np.stack([normalize_intensity(i, intensity) for i in images]))
    y_all = torch.from_numpy(np.stack([np.asarray(l, dtype=np.int64) for l in labels]))[:, None]
    rng = np.random.default_rng(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = build_network(config)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    optimiser = torch.optim.Adam(net.parameters(), lr=lr)
    schedule = one_cycle_schedule(optimiser, lr, steps)
    net.train()
    losses = []
    for _ in progress_bar(range(steps), enabled=progress, desc=f"training {preset}"):
        batch = rng.choice(len(x_all), size=min(batch_size, len(x_all)), replace=False)
        optimiser.zero_grad()
        loss = loss_fn(net(x_all[batch]), y_all[batch])
        loss.backward()
        optimiser.step()
        schedule.step()
        losses.append(float(loss.detach()))
    net.eval()
    result = TrainResult(net, config, losses=losses)
    if val_images:
        result.dice = validation_dice(net, config, val_images, val_labels)
        config["validation_dice"] = result.dice
    return result


def validation_dice(net: nn.Module, config: dict[str, Any], images: Sequence[np.ndarray], labels: Sequence[np.ndarray]) -> dict[str, float]:
    """Mean Dice per named class over held-out cases."""
    names = config["names"]
    per_case = []
    with torch.no_grad():
        for image, truth in zip(images, labels):
            x = torch.from_numpy(normalize_intensity(image, config.get("intensity")))[None]
            predicted = net(x).argmax(1)[0].numpy()
            per_case.append(dice_per_class(predicted, np.asarray(truth), [int(k) for k in names]))
    return {names[k]: float(np.mean([case[int(k)] for case in per_case])) for k in names}


def train_on_phantoms(
    kind: Literal["abdomen", "brain"],
    shape: Sequence[int],
    *,
    n_train: int = 24,
    n_val: int = 4,
    steps: int = 300,
    seed: int = 0,
    progress: bool = True,
    **train_kwargs: Any,
) -> TrainResult:
    """Train a reference model on seeded phantoms of `kind` and report its Dice on held-out phantoms."""
    from segxai.data import phantom_dataset

    if kind not in PHANTOM_SETTINGS:
        raise SegxaiError(f"unknown phantom {kind!r}; choose one of {', '.join(PHANTOM_SETTINGS)}")
    cases = phantom_dataset(kind, n_train + n_val, shape, seed=seed)
    train, val = cases[:n_train], cases[n_train:]
    return train_segmenter(
        [c.image for c in train], [c.labels for c in train],
        names=train[0].names, channel_names=train[0].channel_names,
        intensity=PHANTOM_SETTINGS[kind]["intensity"],
        val_images=[c.image for c in val], val_labels=[c.labels for c in val],
        steps=steps, seed=seed, progress=progress, **train_kwargs,
    )


def _check_sizes(images: Sequence[np.ndarray], labels: Sequence[np.ndarray], stride: int) -> None:
    shape = images[0].shape
    for index, (image, label) in enumerate(zip(images, labels)):
        if image.shape != shape:
            raise SegxaiError(f"image {index} has shape {image.shape}, the first has {shape}; resample to one grid")
        if tuple(label.shape) != tuple(image.shape[1:]):
            raise SegxaiError(f"label map {index} has shape {label.shape} but its image grid is {image.shape[1:]}")
    if any(n % stride for n in shape[1:]):
        raise SegxaiError(f"spatial size {shape[1:]} must be a multiple of the network stride {stride}")
