"""The text-prompted ROI localizer: frozen text encoder + CoOp context + a FiLM-conditioned MONAI U-Net.

A prompt becomes `[v_1..v_M, words]` (CoOp; the context is shared, or one per training class), the frozen text
encoder turns it into an embedding `t`, and `t` conditions the image branch twice: FiLM (`h * (1 + gamma(t)) +
beta(t)`, zero-initialised so training starts from the plain U-Net) on the output of every encoder level of the
U-Net, and a text-generated 1x1 head that maps the U-Net's feature channels to one ROI logit. Only the context,
the U-Net, the FiLM layers and the head train.
"""
from __future__ import annotations

import warnings
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from segxai.errors import SegxaiError
from segxai.localize.text import TextEncoder, check_prompts, words
from segxai.grid import CANONICAL, SameGrid, canonical_grid, grid_values
from segxai.io import Image
from segxai.preprocess import normalize_intensity


SLICE_BATCH = 16  # slices of a volume a 2D localizer runs at once

class Localizer(nn.Module):
    """ROI logits `(B, 1, *spatial)` for the structure named in each prompt; see `train_localizer` to fit one.

    `config` holds everything but the weights (network, context size, class prompts, intensity normalisation,
    the encoder's spec), so a checkpoint rebuilds the same module.
    """

    def __init__(self, encoder: TextEncoder, config: dict[str, Any]):
        super().__init__()
        from monai.networks.nets import UNet

        self.config = config
        self.encoder = encoder.requires_grad_(False)
        n_sets = len(config["classes"]) if config["class_context"] else 1
        self.context = nn.Parameter(_initial_context(encoder, config, n_sets))
        network = config["network"]
        self.unet = UNet(**network)
        self.levels = _encoder_levels(self.unet)
        self.film = nn.ModuleList(nn.Linear(encoder.dim, 2 * c) for c in network["channels"])
        for layer in self.film:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        self.head = nn.Linear(encoder.dim, network["out_channels"] + 1)
        self._modulation: list[tuple[torch.Tensor, torch.Tensor]] = []
        for index, level in enumerate(self.levels):
            level.register_forward_hook(self._film_hook(index))
        self.history: list[float] = []

    @property
    def spatial_dims(self) -> int:
        return int(self.config["network"]["spatial_dims"])

    @property
    def stride(self) -> int:
        return int(np.prod(self.config["network"]["strides"]))

    def embed(self, prompts: Sequence[str]) -> torch.Tensor:
        """The conditioning embedding `(B, dim)` of each prompt (context vectors included)."""
        prompts = check_prompts(prompts)
        unique = sorted(set(prompts))
        context = torch.stack([self._context_for(p) for p in unique])
        table = self.encoder.encode(unique, context)
        return table[torch.tensor([unique.index(p) for p in prompts], device=table.device)]

    def forward(self, x: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        if len(prompts) != x.shape[0]:
            raise SegxaiError(f"need one prompt per image: {len(prompts)} prompts for a batch of {x.shape[0]}")
        text = self.embed(prompts).to(x.dtype)
        shape = (x.shape[0], -1) + (1,) * self.spatial_dims
        self._modulation = [tuple(t.view(shape) for t in layer(text).chunk(2, dim=1)) for layer in self.film]
        try:
            features = self.unet(x)
        finally:
            self._modulation = []
        weights = self.head(text)
        return (features * weights[:, :-1].view(shape)).sum(1, keepdim=True) + weights[:, -1:].view(shape)

    def predict(self, image: np.ndarray | torch.Tensor | Image, prompt: str) -> np.ndarray:
        """The ROI probability map (`*spatial`, float32) of the structure named by `prompt` on one raw image.

        The image is `(C, *spatial)` in its own units (normalised with the training intensity spec) and is padded
        to a multiple of the network stride, then cropped back. Warns when no word of the prompt was in training.
        A 2D localizer given a volume `(C, H, W, D)` runs on its slices along the last axis (axial for NIfTI).
        An `Image` (a file read with its affine) is first turned to the orientation the localizer was trained in
        (RAS+ for one trained on volume files), and the map comes back on the image's own grid.
        """
        if isinstance(image, Image):
            oriented = self.config.get("orientation") == CANONICAL
            grid = canonical_grid(image) if oriented else SameGrid(tuple(image.spatial_shape))
            return grid.labels_to_image(self.predict(grid_values(grid, image.array), prompt))
        volume = self.spatial_dims == 2 and image.ndim == 4
        items = [image[..., z] for z in range(image.shape[-1])] if volume else [image]
        x = torch.stack([self._prepare(item) for item in items])
        self._warn_if_unseen(check_prompts([prompt])[0])
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():  # slices of a volume go through in batches, the prompt encoded once per batch
                logits = torch.cat([self(batch, [prompt] * len(batch))[:, 0] for batch in x.split(SLICE_BATCH)])
        finally:
            self.train(was_training)
        crop = (slice(None), *(slice(0, n) for n in items[0].shape[1:]))
        probability = torch.sigmoid(logits[crop]).cpu().numpy().astype(np.float32)
        return np.moveaxis(probability, 0, -1) if volume else probability[0]

    def _prepare(self, image: np.ndarray | torch.Tensor) -> torch.Tensor:
        array = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
        dims, channels = self.spatial_dims, self.config["network"]["in_channels"]
        if array.ndim != dims + 1:
            raise SegxaiError(f"the localizer takes one {dims}D image (C, *spatial), got shape {array.shape}")
        if array.shape[0] != channels:
            raise SegxaiError(f"the localizer was trained on {channels} channel(s), the image has {array.shape[0]}")
        if min(array.shape[1:]) == 0:
            raise SegxaiError(f"the image is empty (shape {array.shape})")
        if not np.isfinite(array).all():
            raise SegxaiError("the image holds NaN or infinite values")
        x = torch.from_numpy(normalize_intensity(array, self.config.get("intensity")))
        pad = [p for n in reversed(array.shape[1:]) for p in (0, -n % self.stride)]
        x = F.pad(x[None], pad, mode="replicate")[0] if any(pad) else x
        return x.to(self.context.device)

    def _context_for(self, prompt: str) -> torch.Tensor:
        """Shared context, the class's own for a training prompt, or the mean of all for any other prompt."""
        if len(self.context) == 1:
            return self.context[0]
        key = tuple(words(prompt))
        for index, options in enumerate(self.config["prompts"]):
            if any(tuple(words(o)) == key for o in options):
                return self.context[index]
        return self.context.mean(0)

    def _warn_if_unseen(self, prompt: str) -> None:
        known = {w for options in self.config["prompts"] for o in options for w in words(o)}
        if not set(words(prompt)) & known:
            warnings.warn(f"no word of the prompt {prompt!r} was seen in training; the ROI rests on the text "
                          f"encoder alone (training prompts: {self.config['prompts']})", stacklevel=3)

    def _film_hook(self, index: int):
        def hook(module: nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor:
            if not self._modulation:
                raise SegxaiError("call the Localizer with prompts, not its U-Net alone")
            gamma, beta = self._modulation[index]
            return output * (1 + gamma) + beta
        return hook


def _encoder_levels(unet: nn.Module) -> list[nn.Module]:
    """The down-sampling blocks of a MONAI UNet, shallow to deep, then its bottom block."""
    from monai.networks.layers import SkipConnection

    levels, block = [], unet.model
    while isinstance(block, nn.Sequential) and isinstance(block[1], SkipConnection):
        levels.append(block[0])
        block = block[1].submodule
    levels.append(block)
    return levels


def _initial_context(encoder: TextEncoder, config: dict[str, Any], n_sets: int) -> torch.Tensor:
    """CoOp initialisation: N(0, 0.02^2) vectors, or the token embeddings of a phrase such as "a CT image of"."""
    phrase = config.get("context_init")
    generator = torch.Generator().manual_seed(int(config.get("seed", 0)))
    if phrase:
        vectors = encoder.phrase_vectors(phrase).detach().float().cpu()
        return vectors.expand(n_sets, *vectors.shape).clone()
    return 0.02 * torch.randn(n_sets, int(config["n_context"]), encoder.width, generator=generator)
