"""Random contrasts for models that must read a modality they were not trained on (MONAI randomizable
transforms): a non-monotonic remapping of the intensities (MONAI's own histogram shift keeps their order, this
one may fold it) and random intensities painted per labelled structure (the idea of SynthSeg, Billot et al.,
2023: a network that sees every structure in every contrast learns shapes and positions instead)."""
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


class _Keyed(RandomizableTransform, MapTransform):
    """A dictionary version of one array transform (`self.inner`) on the images under `keys`: seeding it seeds
    the inner transform, as MONAI's Compose seeds each of its steps."""

    def __init__(self, keys: str | Sequence[str], inner: RandomizableTransform) -> None:
        MapTransform.__init__(self, keys)
        RandomizableTransform.__init__(self, 1.0)
        self.inner = inner

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None):
        super().set_random_state(seed, state)
        self.inner.set_random_state(seed, state)
        return self


class RandContrastRemapd(_Keyed):
    """`RandContrastRemap` on the images under `keys` (one curve for all of them)."""

    def __init__(self, keys: str | Sequence[str], prob: float = 0.5) -> None:
        super().__init__(keys, RandContrastRemap(prob))

    def __call__(self, data: dict) -> dict:
        out = dict(data)
        self.inner.randomize()
        for key in self.key_iterator(out):
            out[key] = self.inner(out[key], randomize=False)
        return out


class RandLabelPaint(RandomizableTransform):
    """Blend each labelled structure (label value > 0) of the image towards its own random intensity, drawn
    in the channel's range, with a little random texture; the unlabelled remainder keeps its intensities.
    The blend weight is drawn per call in [0.5, 1], so organs keep some of their texture."""

    def __init__(self, prob: float = 0.5, texture: float = 0.05) -> None:
        RandomizableTransform.__init__(self, prob)
        self.texture = texture

    def __call__(self, image: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        self.randomize(None)
        if not self._do_transform:
            return image
        x = torch.as_tensor(image).float()
        label_map = torch.as_tensor(labels).round().long().reshape(x.shape[1:])
        values = [int(v) for v in torch.unique(label_map) if v > 0]
        weight = self.R.uniform(0.5, 1.0)
        painted = x.clone()
        noise = torch.from_numpy(self.R.standard_normal(x.shape).astype(np.float32))
        for channel, plane in enumerate(x):
            low, high = plane.min(), plane.max()
            for value in values:
                inside = label_map == value
                level = low + (high - low) * (self.R.uniform(0.0, 1.0) + self.texture * noise[channel][inside])
                painted[channel][inside] = (1 - weight) * plane[inside] + weight * level
        return painted


class RandLabelPaintd(_Keyed):
    """`RandLabelPaint` on the image under `key`, with the label map under `label_key`."""

    def __init__(self, key: str, label_key: str, prob: float = 0.5) -> None:
        super().__init__([key], RandLabelPaint(prob))
        self.label_key = label_key

    def __call__(self, data: dict) -> dict:
        out = dict(data)
        for key in self.key_iterator(out):
            out[key] = self.inner(out[key], out[self.label_key])
        return out
