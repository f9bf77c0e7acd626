"""The classifier ExplainSeg explains: a (mostly) frozen ViT backbone and a trainable linear head.

Training follows the paper: SGD (lr 0.005, momentum 0.9), the learning rate x0.1 every 50 epochs, flips, colour
jitter and rotation, and channel mean/std measured on the training split only. The classifier's input is the
normalised image at `size` x `size`; `prepare` turns raw images into that, so relevance maps are computed in the
same (normalised) space the classifier was trained in.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from segxai.errors import SegxaiError
from segxai.explainseg.backbone import VisionTransformer, load_weights
from segxai.models.loop import Loop, Resumable, run_loop

FORMAT = "segxai-explainseg-classifier-1"


class ViTClassifier(nn.Module):
    """`logits = head(backbone(x))` on normalised `(B, 3, size, size)` inputs; `mean`/`std` are kept with it."""

    def __init__(self, backbone: VisionTransformer, num_classes: int, mean: Sequence[float], std: Sequence[float],
                 size: int = 224) -> None:
        super().__init__()
        if num_classes < 2:
            raise SegxaiError(f"a classifier needs at least 2 classes, got {num_classes}")
        self.backbone = backbone
        self.head = nn.Linear(backbone.embed_dim, num_classes)
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32).view(-1, 1, 1))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32).view(-1, 1, 1))
        self.size = int(size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    def prepare(self, images: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Raw `(3, H, W)` or `(B, 3, H, W)` images -> resized to `size` and normalised with the training stats."""
        x = (images if isinstance(images, torch.Tensor) else torch.from_numpy(np.asarray(images))).float()
        x = x.unsqueeze(0) if x.ndim == 3 else x
        if x.ndim != 4 or x.shape[1] != self.mean.shape[0]:
            raise SegxaiError(f"images must be ({self.mean.shape[0]}, H, W) or batched, got {tuple(x.shape)}")
        x = resize(x.to(self.mean.device), self.size)
        return (x - self.mean) / self.std


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear, anti-aliased resize of `(B, C, H, W)` to `size` x `size` (a no-op when already there)."""
    if tuple(x.shape[2:]) == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def channel_stats(images: Sequence[np.ndarray]) -> tuple[list[float], list[float]]:
    """Per-channel mean and standard deviation over all pixels of the (training) images `(C, H, W)`."""
    if not images:
        raise SegxaiError("channel statistics need at least one training image")
    flat = np.concatenate([np.asarray(i, dtype=np.float64).reshape(i.shape[0], -1) for i in images], axis=1)
    std = flat.std(axis=1)
    return flat.mean(axis=1).tolist(), np.where(std > 0, std, 1.0).tolist()


def tile(image: np.ndarray, mask: np.ndarray, tiles: int) -> tuple[list[np.ndarray], list[np.ndarray], list[int]]:
    """Cut an image `(C, H, W)` and its mask into `tiles` x `tiles` patches labelled 1 if any mask pixel lies in
    them (for datasets where every image is positive; the mask labels patches and nothing else)."""
    if image.shape[1:] != mask.shape:
        raise SegxaiError(f"image {image.shape} and mask {mask.shape} grids differ")
    rows = np.linspace(0, image.shape[1], tiles + 1).astype(int)
    cols = np.linspace(0, image.shape[2], tiles + 1).astype(int)
    images, masks, labels = [], [], []
    for r0, r1 in zip(rows[:-1], rows[1:]):
        for c0, c1 in zip(cols[:-1], cols[1:]):
            images.append(image[:, r0:r1, c0:c1])
            masks.append(mask[r0:r1, c0:c1] > 0)
            labels.append(int(masks[-1].any()))
    return images, masks, labels


def augment(x: torch.Tensor, generator: torch.Generator, rotation: float = 15.0, jitter: float = 0.2) -> torch.Tensor:
    """Random horizontal flip, colour jitter (brightness, contrast, saturation by up to `jitter`) and rotation
    by up to `rotation` degrees (reflected borders), on a normalised batch `(B, C, H, W)`."""
    b = x.shape[0]

    def uniform(low: float, high: float) -> torch.Tensor:
        return (low + (high - low) * torch.rand(b, generator=generator)).view(b, 1, 1, 1).to(x)

    flip = (torch.rand(b, generator=generator) < 0.5).view(b, 1, 1, 1).to(x.device)
    x = torch.where(flip, x.flip(-1), x)
    x = x * uniform(1 - jitter, 1 + jitter)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * uniform(1 - jitter, 1 + jitter) + mean
    grey = x.mean(dim=1, keepdim=True)
    x = (x - grey) * uniform(1 - jitter, 1 + jitter) + grey
    angle = uniform(-rotation, rotation).view(b) * math.pi / 180
    cos, sin, zero = angle.cos(), angle.sin(), torch.zeros_like(angle)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


@dataclass
class TrainConfig:
    """Training settings; the defaults are the paper's (epochs are not given there: 100)."""

    size: int = 224
    epochs: int = 100
    batch_size: int = 32
    lr: float = 0.005
    momentum: float = 0.9
    step: int = 50
    gamma: float = 0.1
    trainable_blocks: int = 0
    augment: bool = True
    seed: int = 0
    history: list[float] = field(default_factory=list)


def train_classifier(
    images: Sequence[np.ndarray],
    labels: Sequence[int],
    backbone: VisionTransformer,
    config: TrainConfig | None = None,
    *,
    device: str | torch.device = "cpu",
    saving: Resumable = Resumable(),
    on_checkpoint: Callable[[ViTClassifier], None] | None = None,
    progress: bool = True,
) -> ViTClassifier:
    """Fit a linear head (and the last `trainable_blocks` blocks) on raw images `(C, H, W)` with labels 0..K-1.

    Seeded: the same call gives the same classifier. The mean training loss per epoch is `config.history`.
    `saving` keeps the training state every few epochs (`on_checkpoint` then gets the classifier so far) and
    resumes from it, ending with the weights of an uninterrupted run.
    """
    config = config or TrainConfig()
    labels_t = torch.as_tensor(list(labels), dtype=torch.long)
    if len(images) != len(labels_t) or len(images) == 0:
        raise SegxaiError(f"got {len(images)} images for {len(labels_t)} labels")
    if labels_t.min() < 0:
        raise SegxaiError("labels must be class indices 0..K-1")
    torch.manual_seed(config.seed)
    mean, std = channel_stats(images)
    net = ViTClassifier(backbone, max(2, int(labels_t.max()) + 1), mean, std, config.size).to(device)
    x = torch.cat([net.prepare(i) for i in images]).cpu()
    trainable = set_trainable(net, config.trainable_blocks)
    optimiser = torch.optim.SGD(trainable, lr=config.lr, momentum=config.momentum)
    schedule = torch.optim.lr_scheduler.StepLR(optimiser, step_size=config.step, gamma=config.gamma)
    generator = torch.Generator().manual_seed(config.seed)
    config.history.clear()

    def epoch(_: int) -> float:
        net.train()
        order = torch.randperm(len(x), generator=generator)
        total = 0.0
        for start in range(0, len(x), config.batch_size):
            index = order[start : start + config.batch_size]
            batch = augment(x[index], generator) if config.augment else x[index]
            loss = F.cross_entropy(net(batch.to(device)), labels_t[index].to(device))
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += loss.item() * len(index)
        schedule.step()
        return total / len(x)

    def checkpoint(_: int) -> None:
        if on_checkpoint is not None:
            net.eval()
            on_checkpoint(net)

    signature = {key: value for key, value in vars(config).items() if key != "history"}
    signature.update(images=len(x), classes=int(labels_t.max()) + 1)
    loop = Loop({"net": net, "optimiser": optimiser, "schedule": schedule}, {"generator": generator}, signature,
                losses=config.history)
    run_loop(loop, epoch, config.epochs, saving, on_checkpoint=checkpoint, progress=progress, desc="classifier")
    net.eval()
    return net


def set_trainable(net: ViTClassifier, blocks: int) -> list[nn.Parameter]:
    """Freeze the backbone except its last `blocks` blocks (and final norm when any); return what trains."""
    depth = len(net.backbone.blocks)
    if not 0 <= blocks <= depth:
        raise SegxaiError(f"trainable_blocks must be between 0 and {depth}, got {blocks}")
    net.backbone.requires_grad_(False)
    for block in list(net.backbone.blocks)[depth - blocks :] if blocks else []:
        block.requires_grad_(True)
    if blocks:
        net.backbone.norm.requires_grad_(True)
    return [p for p in net.parameters() if p.requires_grad]


def save_classifier(path: str | Path, net: ViTClassifier) -> Path:
    """Write the classifier (backbone, head, normalisation, size) as a segxai checkpoint."""
    from segxai.models.checkpoint import save_checkpoint

    vit = net.backbone
    config = {
        "format": FORMAT,
        "vit": {"patch_size": vit.patch_size, "embed_dim": vit.embed_dim, "depth": len(vit.blocks),
                "num_heads": vit.num_heads, "mlp_ratio": vit.blocks[0].mlp.fc1.out_features / vit.embed_dim,
                "in_chans": vit.patch_embed.proj.in_channels,
                "img_size": math.isqrt(vit.pos_embed.shape[1] - 1) * vit.patch_size},
        "num_classes": net.head.out_features,
        "mean": net.mean.flatten().tolist(),
        "std": net.std.flatten().tolist(),
        "size": net.size,
    }
    return save_checkpoint(path, net, config)


def load_classifier(path: str | Path, device: str | torch.device = "cpu") -> ViTClassifier:
    """Read a classifier written by `save_classifier` (with `weights_only=True`)."""
    from segxai.models.checkpoint import FORMAT as CHECKPOINT_FORMAT, read_payload

    payload = read_payload(path, CHECKPOINT_FORMAT, "an ExplainSeg classifier checkpoint",
                           "train one with `segxai explainseg train`")
    config, state = payload["config"], payload["state_dict"]
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise SegxaiError(f"{path} is a segxai checkpoint but not an ExplainSeg classifier; "
                          "train one with `segxai explainseg train`")
    net = ViTClassifier(VisionTransformer(**config["vit"]), config["num_classes"], config["mean"], config["std"],
                        config["size"])
    load_weights(net, state)
    return net.to(device).eval()
