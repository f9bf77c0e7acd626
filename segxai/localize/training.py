"""Fit a localizer on label maps and organ names (Dice + BCE), and measure its Dice per prompt.

Each step draws (class, image) pairs, the image holding the class two times in three, and one of the class's
prompts; the target is that class's mask, which may be empty (a slice without the organ), so the Dice term is
computed over the whole batch. Only the CoOp context, the U-Net, the FiLM layers and the text head train; every
random draw comes from `seed`.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch

from segxai.models.presets import PRESETS, preset_for
from segxai.errors import SegxaiError
from segxai.localize.model import Localizer
from segxai.localize.text import TextEncoder, check_prompts
from segxai.preprocess import normalize_intensity
from segxai.models.augment import Augmenter, common_grid, pad_end
from segxai.models.loop import Loop, Resumable, run_loop
from segxai.models.train import one_cycle_schedule


def default_prompt(name: str) -> str:
    """The training prompt of a class name: `kidney_left` -> `kidney left`."""
    return name.replace("_", " ")


def train_localizer(
    images: Sequence[np.ndarray],
    label_maps: Sequence[np.ndarray],
    names: Mapping[int, str],
    encoder: TextEncoder,
    *,
    prompts: Mapping[int, Sequence[str]] | None = None,
    n_context: int = 16,
    class_context: bool = False,
    context_init: str | None = None,
    intensity: dict[str, Any] | None = None,
    features: int = 16,
    steps: int = 300,
    batch_size: int = 8,
    lr: float = 3e-3,
    augment: bool = False,
    contrast: bool = False,
    preset: str | None = None,
    seed: int = 0,
    saving: Resumable = Resumable(),
    progress: bool = True,
) -> Localizer:
    """Train a `Localizer` on `(C, *spatial)` images and label maps; `names` maps label values to organ names.

    `prompts` gives the training prompts per label (default: the name with `_` as spaces); `context_init`
    initialises the context from a phrase (then M is its token count) instead of N(0, 0.02^2) with M =
    `n_context`; `class_context` learns one context per class instead of one shared context. `augment` draws
    seeded intensity and small affine changes (no flips: they swap left and right organs); `contrast` also remaps
    the contrast at random and paints labelled structures with random intensities (`segxai.models.contrast`),
    so that a localizer trained on one modality (CT) reads another (MR) by shape and position; pair it with the
    `equalize` intensity spec and the `unet2d-deep` preset, whose field of view spans the body. `preset` names
    the U-Net (`segxai.models.presets`; default `unet2d` or `unet3d` by the images' dimension). `saving` keeps
    the training state every few steps and resumes from it (`segxai.models.loop.Resumable`).
    """
    from monai.losses import DiceLoss

    images, labels = _check_data(images, label_maps)
    if not names:
        raise SegxaiError("names must map at least one label value to an organ name")
    values = sorted(int(v) for v in names)
    options = [check_prompts(list((prompts or {}).get(v) or [default_prompt(names[v])])) for v in values]
    dims = images[0].ndim - 1
    if dims not in (2, 3):
        raise SegxaiError(f"the localizer takes 2D or 3D images (C, *spatial), got {dims} spatial axes")
    preset = preset_for(preset, dims)
    network = PRESETS[preset]
    config = {
        "network": {**network, "in_channels": int(images[0].shape[0]), "out_channels": int(features)},
        "classes": [str(names[v]) for v in values], "labels": values, "prompts": options,
        "n_context": int(n_context), "class_context": bool(class_context), "context_init": context_init,
        "intensity": intensity, "encoder": encoder.spec(), "seed": int(seed),
    }
    grid = common_grid([i.shape[1:] for i in images], int(np.prod(network["strides"])))  # any grids: padded at the end
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        localizer = Localizer(encoder, config)
    config["n_context"] = int(localizer.context.shape[1])
    x_all = torch.from_numpy(np.stack([pad_end(normalize_intensity(i, intensity), grid) for i in images]))
    y_all = torch.from_numpy(np.stack([pad_end(l, grid) for l in labels]))
    rng = np.random.default_rng(seed)
    trainable = [p for n, p in localizer.named_parameters() if not n.startswith("encoder.")]
    optimiser = torch.optim.Adam(trainable, lr=lr)
    schedule = one_cycle_schedule(optimiser, lr, steps)
    dice_loss, bce = DiceLoss(sigmoid=True, batch=True), torch.nn.BCEWithLogitsLoss()
    augmenter = Augmenter(dims, flips=False, contrast=contrast) if augment or contrast else None

    holding = [np.flatnonzero((y_all == v).flatten(1).any(1).numpy()) for v in values]

    def step(_: int) -> float:
        classes = rng.integers(len(values), size=batch_size)
        cases = np.array([_draw_case(rng, len(x_all), holding[c]) for c in classes])
        batch_prompts = [options[c][rng.integers(len(options[c]))] for c in classes]
        x, y = x_all[cases], y_all[cases][:, None]
        if augmenter is not None:
            x, y = augmenter(x, y, seed=int(rng.integers(2**31)))
        target = (y == torch.tensor([values[c] for c in classes]).view(-1, *[1] * (dims + 1))).float()
        localizer.train()
        optimiser.zero_grad()
        logits = localizer(x, batch_prompts)
        loss = dice_loss(logits, target) + bce(logits, target)
        loss.backward()
        optimiser.step()
        schedule.step()
        return float(loss.detach())

    signature = {"seed": seed, "steps": steps, "batch_size": batch_size, "lr": lr, "preset": preset,
                 "augment": bool(augment),
                 "contrast": bool(contrast), "cases": len(images),
                 "labels": values, "prompts": options, "grid": list(grid)}
    loop = Loop({"localizer": localizer, "optimiser": optimiser, "schedule": schedule}, {"draws": rng}, signature,
                global_rng=torch.Generator().manual_seed(seed),
                losses=localizer.history)
    run_loop(loop, step, steps, saving, progress=progress, desc="training localizer")
    localizer.eval()
    return localizer


FOREGROUND = 2 / 3  # share of draws that take an image holding the class (nnU-Net oversamples foreground a third)


def _draw_case(rng: np.random.Generator, count: int, holding: np.ndarray) -> int:
    """A training image for one draw: with probability `FOREGROUND` one that holds the class (small organs,
    absent from most slices, would otherwise be learnt as "nothing"), else any image."""
    if len(holding) and rng.random() < FOREGROUND:
        return int(holding[rng.integers(len(holding))])
    return int(rng.integers(count))


def localizer_dice(
    localizer: Localizer,
    images: Sequence[np.ndarray],
    label_maps: Sequence[np.ndarray],
    prompts: Mapping[str, int],
    threshold: float = 0.5,
) -> dict[str, float]:
    """Mean Dice over cases of `probability >= threshold` against the label for each `prompt -> label value`
    (1.0 when both are empty, as in `segxai.models.train.dice_per_class`)."""
    from segxai.models.train import dice_per_class

    images, labels = _check_data(images, label_maps)
    scores: dict[str, float] = {}
    for prompt, value in prompts.items():
        per_case = []
        for image, truth in zip(images, labels):
            predicted = (localizer.predict(image, prompt) >= threshold).astype(np.int64)
            per_case.append(dice_per_class(predicted, (truth == value).astype(np.int64), [1])[1])
        scores[prompt] = float(np.mean(per_case))
    return scores


def _check_data(images: Sequence[np.ndarray], label_maps: Sequence[np.ndarray]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    if len(images) == 0 or len(images) != len(label_maps):
        raise SegxaiError(f"need the same, non-zero number of images and label maps (got {len(images)} and {len(label_maps)})")
    images = [np.asarray(i, dtype=np.float32) for i in images]
    labels = [np.asarray(l).astype(np.int64) for l in label_maps]
    for index, (image, label) in enumerate(zip(images, labels)):
        if image.ndim < 3 or image.ndim != images[0].ndim or image.shape[0] != images[0].shape[0]:
            raise SegxaiError(f"image {index} has shape {image.shape}; all images need (C, *spatial) with the same "
                              f"channels and axes as the first, {images[0].shape}")
        if label.shape != image.shape[1:]:
            raise SegxaiError(f"label map {index} has shape {label.shape} but its image grid is {image.shape[1:]}")
        if not np.isfinite(image).all():
            raise SegxaiError(f"image {index} holds NaN or infinite values")
    return images, labels
