"""A random, non-monotonic contrast remapping (MONAI randomizable transforms), for models that must read a
modality they were not trained on: MONAI's own histogram shift keeps the intensity order, this one may fold it."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from monai.transforms import MapTransform, RandomizableTransform


class RandContrastRemap(RandomizableTransform):
    """Map each channel's intensities, scaled to [0, 1] by its own range, through a random piecewise-linear
    curve whose 2 to 5 control values are drawn independently in [0, 1] (so the curve may invert or fold the
    contrast: fat bright or dark, organs above or below their surroundings), then back to that range."""

    def __init__(self, prob: float = 0.5, points: tuple[int, int] = (2, 5)) -> None:
        RandomizableTransform.__init__(self, prob)
        self.points = points
        self.curve: np.ndarray | None = None

    def randomize(self, data: object = None) -> None:
        super().randomize(None)
        if self._do_transform:
            self.curve = self.R.uniform(0.0, 1.0, size=self.R.randint(self.points[0], self.points[1] + 1))

    def __call__(self, image: torch.Tensor, randomize: bool = True) -> torch.Tensor:
        if randomize:
            self.randomize()
        if not self._do_transform:
            return image
        x = torch.as_tensor(image).float()
        out = x.clone()
        values = torch.as_tensor(self.curve, dtype=torch.float32)
        for channel, plane in enumerate(x):
            low, high = plane.min(), plane.max()
            if high > low:
                t = ((plane - low) / (high - low)).clamp(0, 1) * (len(values) - 1)
                index = t.floor().long().clamp(max=len(values) - 2)
                curve = torch.lerp(values[index], values[index + 1], t - index)
                out[channel] = low + (high - low) * curve
        return out


class RandContrastRemapd(RandomizableTransform, MapTransform):
    """`RandContrastRemap` on the images under `keys`."""

    def __init__(self, keys: str | Sequence[str], prob: float = 0.5) -> None:
        MapTransform.__init__(self, keys)
        RandomizableTransform.__init__(self, 1.0)
        self.remap = RandContrastRemap(prob)

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None):
        super().set_random_state(seed, state)
        self.remap.set_random_state(seed, state)
        return self

    def __call__(self, data: dict) -> dict:
        out = dict(data)
        self.remap.randomize()
        for key in self.key_iterator(out):
            out[key] = self.remap(out[key], randomize=False)
        return out
