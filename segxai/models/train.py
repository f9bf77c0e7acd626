"""A short, seeded trainer for the reference U-Nets: enough to get a real model to explain in a minute or two."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Sequence

import numpy as np
import torch
from torch import nn

from segxai.models.augment import Augmenter, common_grid, pad_end
from segxai.models.loop import Loop, Resumable, run_loop
from segxai.models.presets import build_network, network_config, preset_for, total_stride
from segxai.errors import SegxaiError
from segxai.preprocess import normalize_intensity

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
    augment: str = "none",
    saving: Resumable = Resumable(),
    on_checkpoint: Callable[[nn.Module, dict[str, Any]], None] | None = None,
    extra_config: dict[str, Any] | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train a MONAI U-Net preset with Dice + cross-entropy on `(C, *spatial)` images and label maps.

    Only the classes in `names` are trained (other label values count as background; class = label value).
    Images of different shapes are zero-padded at their end to one stride-aligned grid. Images are normalised
    with `intensity` (stored in the config so explaining applies the same). Every random draw (initialisation,
    batch order, augmentation) comes from `seed`; the global RNG state is left untouched.

    Args:
        images, labels: training cases; val_images, val_labels: held-out cases (Dice per class in the config).
        names: label value -> class name of the classes to train.
        preset, intensity, channel_names: the network preset (default by dimension), normalisation, channels.
        steps, batch_size, lr, seed: optimisation.
        augment: "none", "light" (seeded flips in 2D, intensity, small affine) or "strong" (also 90-degree
            turns, a larger affine, gamma and noise: for small sets of photographs), `segxai.models.augment`.
        saving: training-state file, interval and resume (`segxai.models.loop.Resumable`); a resumed run of the
            same seed ends with the weights of an uninterrupted one.
        on_checkpoint: called with the network and its config at each intermediate save (write a checkpoint).
        extra_config: fields added to the checkpoint config (e.g. the training size or spacing).
        progress: show a bar with the running loss.
    Returns:
        The network, its config, the validation Dice and the loss of every step.
    """
    from monai.losses import DiceCELoss

    if not images or len(images) != len(labels):
        raise SegxaiError(f"need the same, non-zero number of images and label maps (got {len(images)} and {len(labels)})")
    if not names:
        raise SegxaiError("names must map at least one label value to a class name")
    spatial_dims = images[0].ndim - 1
    preset = preset_for(preset, spatial_dims)
    config = network_config(
        preset, in_channels=int(images[0].shape[0]), out_channels=max(int(k) for k in names) + 1,
        names={int(k): v for k, v in names.items()}, intensity=intensity,
        channel_names=list(channel_names or [f"c{i}" for i in range(images[0].shape[0])]), **(extra_config or {}),
    )
    _check_cases(images, labels)
    grid = common_grid([i.shape[1:] for i in images], total_stride(config))
    x_all = torch.from_numpy(np.stack([pad_end(normalize_intensity(i, intensity), grid) for i in images]))
    y_all = torch.from_numpy(np.stack([pad_end(trained_labels(l, names), grid) for l in labels]))[:, None]
    rng = np.random.default_rng(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = build_network(config)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    optimiser = torch.optim.Adam(net.parameters(), lr=lr)
    schedule = one_cycle_schedule(optimiser, lr, steps)
    augmenter = None if augment == "none" else Augmenter(spatial_dims, strength=augment)

    def step(_: int) -> float:
        batch = rng.choice(len(x_all), size=min(batch_size, len(x_all)), replace=False)
        x, y = x_all[batch], y_all[batch]
        if augmenter is not None:
            x, y = augmenter(x, y, seed=int(rng.integers(2**31)))
        net.train()
        optimiser.zero_grad()
        loss = loss_fn(net(x), y)
        loss.backward()
        optimiser.step()
        schedule.step()
        return float(loss.detach())

    def checkpoint(_: int) -> None:
        if on_checkpoint is not None:
            net.eval()
            on_checkpoint(net, config)

    signature = {"preset": preset, "seed": seed, "steps": steps, "batch_size": batch_size, "lr": lr,
                 "augment": augment, "cases": len(images), "grid": list(grid), "classes": sorted(config["names"])}
    loop = Loop({"net": net, "optimiser": optimiser, "schedule": schedule}, {"batches": rng}, signature,
                global_rng=torch.Generator().manual_seed(seed))
    losses = run_loop(loop, step, steps, saving, on_checkpoint=checkpoint, progress=progress, desc=f"training {preset}")
    net.eval()
    config["training"] = {"steps": steps, "seed": seed, "augment": augment, "cases": len(images),
                          "validation_cases": len(val_images), "final_loss": losses[-1] if losses else None}
    result = TrainResult(net, config, losses=list(losses))
    if val_images:
        result.dice = validation_dice(net, config, val_images, val_labels)
        config["validation_dice"] = result.dice
    return result


def trained_labels(labels: np.ndarray, names: dict[int, str]) -> np.ndarray:
    """The label map with every value not named in `names` set to background (0)."""
    labels = np.asarray(labels, dtype=np.int64)
    return np.where(np.isin(labels, [int(k) for k in names]), labels, 0)


def validation_dice(net: nn.Module, config: dict[str, Any], images: Sequence[np.ndarray], labels: Sequence[np.ndarray]) -> dict[str, float]:
    """Mean Dice per named class over held-out cases (any grid: the model pads to its stride)."""
    from segxai.model import SegModel

    names = config["names"]
    model = SegModel(net, activation=config.get("activation", "softmax"), pad_to=total_stride(config))
    per_case = []
    for image, truth in zip(images, labels):
        predicted = model.predict(normalize_intensity(image, config.get("intensity"))).cpu().numpy()
        per_case.append(dice_per_class(predicted, trained_labels(truth, names), [int(k) for k in names]))
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


def _check_cases(images: Sequence[np.ndarray], labels: Sequence[np.ndarray]) -> None:
    first = images[0]
    for index, (image, label) in enumerate(zip(images, labels)):
        if image.ndim != first.ndim or image.shape[0] != first.shape[0]:
            raise SegxaiError(f"image {index} has shape {image.shape}, the first has {first.shape}: every case needs "
                              "the same channels and number of axes")
        if tuple(np.shape(label)) != tuple(image.shape[1:]):
            raise SegxaiError(f"label map {index} has shape {np.shape(label)} but its image grid is {image.shape[1:]}")
