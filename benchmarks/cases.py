"""The benchmark's cases and models: seeded data preparation, and small U-Nets trained once and cached.

Three cases, each a set of images (`(C, *spatial)`, raw intensities), label maps and a cached model:
- `phantom`: the 3D abdominal CT phantom of the demo (64x64x32), a model trained on 24 phantoms, one held-out case;
- `ct`: the TotalSegmentator sample CT (cropped/padded to 112x96x32), four organs kept, a model fitted to that
  one volume (its Dice is a training Dice: the point is a real anatomy to explain, not generalisation);
- `polyp`: the 40 EndoTect colonoscopy images resized to 128x128, 30 to train and 10 held out;
- `ct-instance`, `polyp-instance`: the same with MONAI's default instance norm instead of batch norm.
Checkpoints go to `.segxai-cache/bench/` (gitignored); delete the folder to retrain.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from segxai.models.checkpoint import load_checkpoint, save_checkpoint
from segxai.model import SegModel
from segxai.preprocess import normalize_intensity
from segxai.models.train import TrainResult, dice_per_class, train_on_phantoms, train_segmenter

CACHE_DIR = Path(__file__).resolve().parents[1] / ".segxai-cache" / "bench"
SEED = 0

PHANTOM_SHAPE = (64, 64, 32)
PHANTOM_CASE_SEED = 1000  # held out: training phantoms use seeds spawned from 0
PHANTOM_STEPS = 300

CT_ORGANS = {5: "liver", 1: "spleen", 2: "kidney_right", 3: "kidney_left"}  # TotalSegmentator label -> name
CT_BOX = (slice(5, 117), slice(2, 98), slice(0, 30))  # 122x101x30 -> 112x96x30, every kept organ inside
CT_SHAPE = (112, 96, 32)  # z padded with air to a multiple of the U-Net's stride
CT_WINDOW = {"kind": "window", "low": -200.0, "high": 300.0}
CT_STEPS = 300

POLYP_SIZE = (128, 128)
POLYP_TRAIN = 30
POLYP_STEPS = 600


@dataclass
class Case:
    """Images to explain (raw intensities), their label maps and names, and the model with its config."""

    name: str
    images: list[np.ndarray]
    labels: list[np.ndarray]
    names: dict[int, str]
    model: SegModel
    config: dict[str, Any]
    dice: dict[str, float] = field(default_factory=dict)

    def normalized(self, index: int) -> np.ndarray:
        """Image `index` with the intensity normalisation the model was trained with."""
        return normalize_intensity(self.images[index], self.config.get("intensity"))

    def label_of(self, organ: str) -> int:
        return next(value for value, name in self.names.items() if name == organ)


# --------------------------------------------------------------------------------------------- data
def phantom_data() -> tuple[list[np.ndarray], list[np.ndarray], dict[int, str]]:
    """One held-out abdominal phantom (HU), as the demo explains it."""
    from segxai.data import abdomen_phantom

    phantom = abdomen_phantom(PHANTOM_SHAPE, seed=PHANTOM_CASE_SEED)
    return [phantom.image], [phantom.labels], dict(phantom.names)


def ct_data() -> tuple[list[np.ndarray], list[np.ndarray], dict[int, str]]:
    """The sample CT in HU on a 112x96x32 grid, with liver, spleen and kidneys relabelled 1..4."""
    from segxai.data import load_totalsegmentator

    case = load_totalsegmentator("ct")
    image = case.image.array[(slice(None), *CT_BOX)]
    source = case.labels[CT_BOX]
    labels = np.zeros(source.shape, dtype=np.int64)
    names = {}
    for new, (old, name) in enumerate(CT_ORGANS.items(), start=1):
        labels[source == old] = new
        names[new] = name
    pad = [(0, 0)] + [(0, n - s) for n, s in zip(CT_SHAPE, labels.shape)]
    image = np.pad(image, pad, constant_values=-1000.0).astype(np.float32)
    labels = np.pad(labels, pad[1:])
    return [image], [labels], names


def polyp_data() -> tuple[list[np.ndarray], list[np.ndarray], dict[int, str]]:
    """The 40 EndoTect images (RGB, 0..255) at 128x128, masks with nearest."""
    return polyp_data_at(POLYP_SIZE)


# --------------------------------------------------------------------------------------------- models
def load_case(name: str, progress: bool = False) -> Case:
    """Prepare case `name` ("phantom", "ct" or "polyp") and its model, training it on first use."""
    if name == "phantom":
        images, labels, names = phantom_data()
        key = f"phantom-{'x'.join(map(str, PHANTOM_SHAPE))}-{PHANTOM_STEPS}steps"
        model, config = _cached(key, lambda: train_on_phantoms(
            "abdomen", PHANTOM_SHAPE, steps=PHANTOM_STEPS, seed=SEED, progress=progress))
    elif name in ("ct", "ct-instance"):
        images, labels, names = ct_data()
        preset = "unet3d-instance" if name == "ct-instance" else None
        model, config = _cached(f"{name}-{CT_STEPS}steps", lambda: _train_ct(images, labels, names, progress, preset))
    elif name in ("polyp", "polyp-instance"):
        preset = "unet2d-instance" if name == "polyp-instance" else None
        return _polyp_case(name, POLYP_SIZE, POLYP_STEPS, 8, progress, preset)[0]
    else:
        raise ValueError(f"unknown case {name!r}; choose phantom, ct, ct-instance, polyp or polyp-instance")
    return Case(name, images, labels, names, model, config, config.get("validation_dice", {}))


def _train_ct(images, labels, names, progress: bool, preset: str | None = None) -> TrainResult:
    """Fit the CT volume; its Dice (recorded as the config's validation Dice) is a training Dice."""
    result = train_segmenter(images, labels, names=names, preset=preset, intensity=CT_WINDOW, channel_names=["CT"],
                             steps=CT_STEPS, batch_size=1, seed=SEED, progress=progress)
    predicted = SegModel(result.net).predict(normalize_intensity(images[0], CT_WINDOW)).numpy()
    result.config["validation_dice"] = {names[k]: v for k, v in dice_per_class(predicted, labels[0], names).items()}
    return result


def _cached(key: str, train: Callable[[], TrainResult]) -> tuple[SegModel, dict[str, Any]]:
    """Load checkpoint `key` from the cache, training and saving it first if it is missing."""
    path = CACHE_DIR / f"{key}-v1.pt"
    if not path.is_file():
        result = train()
        save_checkpoint(path, result.net, result.config)
    return load_checkpoint(path)


# --------------------------------------------------------------------------------------------- 256x256 polyps
POLYP_256_SIZE = (256, 256)  # PdCR's input size (the causal-blocks benchmark)
POLYP_256_STEPS = 200  # batch 4: a 256x256 step costs four times a 128x128 one


def polyp_data_at(size: tuple[int, int]) -> tuple[list[np.ndarray], list[np.ndarray], dict[int, str]]:
    """The 40 EndoTect images (RGB, 0..255) resized with anti-aliasing to `size`, masks with nearest."""
    from skimage.transform import resize

    from segxai.data import load_endotect

    images, labels = [], []
    for case in load_endotect():
        rgb = resize(case.image.array, (3, *size), order=1, anti_aliasing=True, preserve_range=True)
        images.append(rgb.astype(np.float32))
        labels.append(resize(case.labels, size, order=0, anti_aliasing=False, preserve_range=True).astype(np.int64))
    return images, labels, {1: "polyp"}


def load_polyp_256(progress: bool = False) -> tuple[Case, list[np.ndarray]]:
    """The 10 held-out polyps at 256x256 with a 2D U-Net trained on the other 30 at that size (cached), and
    those 30 training images (raw), e.g. as a pool of treatments drawn from other images."""
    return _polyp_case("polyp256", POLYP_256_SIZE, POLYP_256_STEPS, 4, progress)


def load_polyp_instance(progress: bool = False) -> tuple[Case, list[np.ndarray]]:
    """The 10 held-out polyps at 128x128 with a 2D U-Net with instance norm trained on the other 30 (cached),
    and those 30 training images (raw)."""
    return _polyp_case("polyp-instance", POLYP_SIZE, POLYP_STEPS, 8, progress, "unet2d-instance")


def _polyp_case(name: str, size: tuple[int, int], steps: int, batch_size: int,
                progress: bool, preset: str | None = None) -> tuple[Case, list[np.ndarray]]:
    """Held-out polyps at `size` with a 2D U-Net trained (cached) on the others, and those training images."""
    images, labels, names = polyp_data_at(size)
    train, test = slice(0, POLYP_TRAIN), slice(POLYP_TRAIN, None)
    key = f"polyp-{'x'.join(map(str, size))}-{steps}steps" + ("-instance" if preset else "")
    model, config = _cached(key, lambda: train_segmenter(
        images[train], labels[train], names=names, preset=preset, intensity={"kind": "scale", "factor": 1 / 255},
        channel_names=["R", "G", "B"], val_images=images[test], val_labels=labels[test],
        steps=steps, batch_size=batch_size, seed=SEED, progress=progress))
    case = Case(name, images[test], labels[test], names, model, config, config.get("validation_dice", {}))
    return case, images[train]


# --------------------------------------------------------------------------------------------- BraTS
BRATS_FACTOR = 3  # 1 mm -> 3 mm: the cropped brain becomes 44x57x42, padded to 48x64x48
BRATS_SHAPE = (48, 64, 48)
BRATS_STEPS = 150


def brats_data() -> tuple[list[np.ndarray], list[np.ndarray], dict[int, str], list[str]]:
    """The BraTS example (t1c, t1n, t2f, t2w) cropped to the brain, every third voxel kept (labels too), padded
    with zeros to `BRATS_SHAPE`; its labels are a model's output (see the data's SOURCE.md)."""
    from segxai.data import load_brats_example

    case = load_brats_example()
    box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in np.nonzero(case.image.array.sum(0)))
    step = (slice(None, None, BRATS_FACTOR),) * 3
    image = case.image.array[(slice(None), *box)][(slice(None), *step)].astype(np.float32)
    labels = case.labels[box][step].astype(np.int64)
    pad = [(0, n - s) for n, s in zip(BRATS_SHAPE, labels.shape)]
    return ([np.pad(image, [(0, 0), *pad])], [np.pad(labels, pad)], dict(case.names),
            list(case.image.channel_names))


def load_brats(progress: bool = False) -> Case:
    """The BraTS case and a 3D U-Net fitted to it (cached; its Dice is a training Dice, one case only)."""
    images, labels, names, channels = brats_data()
    intensity = {"kind": "zscore_nonzero"}

    def train() -> TrainResult:
        result = train_segmenter(images, labels, names=names, intensity=intensity, channel_names=channels,
                                 steps=BRATS_STEPS, batch_size=1, seed=SEED, progress=progress)
        predicted = SegModel(result.net).predict(normalize_intensity(images[0], intensity)).numpy()
        result.config["validation_dice"] = {names[k]: v for k, v in dice_per_class(predicted, labels[0], names).items()}
        return result

    model, config = _cached(f"brats-{'x'.join(map(str, BRATS_SHAPE))}-{BRATS_STEPS}steps", train)
    return Case("brats", images, labels, names, model, config, config.get("validation_dice", {}))
