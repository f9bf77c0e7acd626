"""Benchmark: ExplainSeg's four variants and the TokenCut / MaskCut baselines on real images (the paper's Tables
1 and 2, train and validation splits scored separately).

Documented runs (one CPU thread: polyp ~12 min, nuclei ~4 min; results in benchmarks/results/explainseg_*.md):

    .venv/bin/python benchmarks/explainseg.py --dataset polyp --size 128 --epochs 30 --lr-step 15 --n-steps 5 \
        --crf --threads 1
    .venv/bin/python benchmarks/explainseg.py --dataset nuclei --size 128 --epochs 30 --lr-step 15 --n-steps 5 \
        --crf --threads 1

Beside the tables sit trivial baselines on each tile's own geometry (the whole tile, a centred blob of the
object's area, a centred blob of a quarter of the tile), and a verdict per method: does its Dice beat the best
of them? Quick run (5 minutes on one thread, no CRF): `--image-size 256 --size 128 --epochs 10 --lr-step 5
--n-steps 3 --threads 1`.

Add `--backbone dino_deitsmall16_pretrain.pth` for a local DINO (or timm / Hugging Face) ViT checkpoint; the
flags' defaults are the paper's settings (classifier input 224, 100 epochs with the lr x0.1 every 50, IG with
50 steps), about 30x slower on CPU (IG alone took ~2 min per tile at 224 with 50 steps, ~4 s with the above).

Data: the 40 EndoTect polyp images of ../shared/data (first 30 by file name train, last 10 validate), or the
H&E nuclei tiles (first 3/4 train). Every image is resized to `--image-size` and cut into `--tiles` x `--tiles`
tiles labelled 1 when they hold a mask pixel, as the paper does for Kvasir-SEG (every image holds a polyp);
masks label tiles and score segmentations, nothing else. The classifier is the given local ViT checkpoint
(DINO/timm/Hugging Face layout; none is downloaded) with a linear head, or a randomly initialised ViT-S/16 when
no `--backbone` is given, trained with the paper's SGD schedule. Tables score the tiles holding the object.
"""
from __future__ import annotations

import argparse
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from segxai.explainseg import files
from segxai.explainseg.classifier import TrainConfig
from segxai.explainseg.segment import RelevanceSettings


def load(dataset: str, image_size: int, tiles: int) -> dict[str, files.Dataset]:
    """The dataset's train and validation splits, resized and tiled."""
    from skimage.transform import resize

    from segxai.data import load_endotect, load_nuclei

    cases = load_endotect() if dataset == "polyp" else load_nuclei()
    images = [resize(c.image.array, (3, image_size, image_size), order=1, anti_aliasing=True, preserve_range=True)
              .astype(np.float32) for c in cases]
    masks = [resize(c.labels > 0, (image_size, image_size), order=0, anti_aliasing=False) for c in cases]
    cut = 30 if dataset == "polyp" else (3 * len(cases)) // 4
    return {"train": files.tiled(images[:cut], masks[:cut], tiles),
            "val": files.tiled(images[cut:], masks[cut:], tiles)}


def accuracy(net, data: files.Dataset) -> float:
    """Tile classification accuracy of the trained classifier."""
    with torch.no_grad():
        predicted = [int(net(net.prepare(i)).argmax()) for i in data.images]
    return float(np.mean(np.array(predicted) == np.array(data.labels)))


def trivial_baselines(data: files.Dataset) -> dict[str, dict[str, float]]:
    """mIoU and Dice (%) on the positive tiles of trivial masks built on each tile's own geometry: the whole
    tile (the ROI itself), a centred blob of the object's area (knowing only its size) and one of a quarter
    of the tile (knowing nothing). A useful method must beat them."""
    from segxai.metrics.baselines import centred_blob
    from segxai.metrics.overlap import dice, iou

    masks = [np.asarray(m) > 0 for m in data.masks if np.asarray(m).any()]
    makers = {"all-foreground (the tile)": lambda m: np.ones_like(m),
              "centred blob, object's area": lambda m: centred_blob(m.shape, int(m.sum())).numpy(),
              "centred blob, 1/4 of the tile": lambda m: centred_blob(m.shape, m.size // 4).numpy()}
    return {name: {"miou": 100 * float(np.mean([iou(make(m), m) for m in masks])),
                   "dice": 100 * float(np.mean([dice(make(m), m) for m in masks]))} for name, make in makers.items()}


def verdicts(means: dict[str, dict[str, dict[str, float]]],
             floors: dict[str, dict[str, dict[str, float]]]) -> str:
    """Per method and split, `mIoU / Dice` and whether it beats the best trivial baseline's Dice."""
    from segxai.io.table import format_table

    rows = []
    for method in next(iter(means.values())):
        row = {"method": method}
        for split, scores in means.items():
            best = max(floors[split], key=lambda name: floors[split][name]["dice"])
            found = scores[method]
            row[f"{split} mIoU / Dice"] = f"{found['miou']:.1f} / {found['dice']:.1f}"
            row[f"{split} vs trivial"] = ("beats all" if found["dice"] > floors[split][best]["dice"]
                                          else f"does not beat {best}")
        rows.append(row)
    return format_table(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=["polyp", "nuclei"], default="polyp")
    parser.add_argument("--backbone", default=None, help="local ViT checkpoint (default: random ViT-S/16)")
    parser.add_argument("--image-size", type=int, default=448, help="images are resized to this before tiling")
    parser.add_argument("--tiles", type=int, default=2)
    parser.add_argument("--size", type=int, default=224, help="classifier input size")
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--lr-step", type=int, default=50, help="epochs between lr x0.1 steps")
    parser.add_argument("--trainable-blocks", type=int, default=0)
    parser.add_argument("--n-steps", type=int, default=50, help="Integrated Gradients steps (5 noise samples)")
    parser.add_argument("--crf", action="store_true", help="DenseCRF refinement (segxai[crf])")
    parser.add_argument("--graph", choices=["token", "superpixel"], default="token")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    progress = not args.no_progress
    device = "cuda" if torch.cuda.is_available() else "cpu"

    start = time.perf_counter()
    splits = load(args.dataset, args.image_size, args.tiles)
    backbone = files.backbone_from(args.backbone)
    config = TrainConfig(size=args.size, epochs=args.epochs, step=args.lr_step,
                         trainable_blocks=args.trainable_blocks)
    net = files.train(splits["train"], backbone, config, progress=progress).to(device)
    trained = time.perf_counter()
    accuracies = {name: accuracy(net, data) for name, data in splits.items()}
    first, second, means = files.evaluate_splits(
        net, splits, progress=progress, settings=RelevanceSettings(n_steps=args.n_steps), graph=args.graph,
        crf=args.crf)
    done = time.perf_counter()

    backbone_name = Path(args.backbone).name if args.backbone else "random ViT-S/16 (no pretrained weights)"
    counts = {name: (len(d.images), sum(d.labels)) for name, d in splits.items()}
    majority = {name: max(n - k, k) / n for name, (n, k) in counts.items()}
    floors = {name: trivial_baselines(data) for name, data in splits.items()}
    floor = {name: "{miou:.1f} / {dice:.1f}".format(**found["all-foreground (the tile)"])
             for name, found in floors.items()}
    settings = (f"dataset {args.dataset}; backbone {backbone_name}; images {args.image_size}^2 in "
                f"{args.tiles}x{args.tiles} tiles (train {counts['train'][0]} tiles, {counts['train'][1]} positive; "
                f"val {counts['val'][0]}, {counts['val'][1]} positive); classifier input {args.size}^2, "
                f"{args.epochs} epochs (lr x0.1 every {args.lr_step}), {args.trainable_blocks} trainable blocks; "
                f"tile accuracy train {accuracies['train']:.3f} (majority class {majority['train']:.3f}), "
                f"val {accuracies['val']:.3f} ({majority['val']:.3f}); "
                f"IG {args.n_steps} steps x 5 noise samples; "
                f"NCut graph {args.graph}; CRF {'on' if args.crf else 'off'}; device {device}; training "
                f"{trained - start:.0f} s, segmentation {done - trained:.0f} s; all-foreground mask (reference) "
                f"mIoU / Dice train {floor['train']}, val {floor['val']}")
    from segxai.io.table import format_table

    trivial = format_table([{"baseline": name, **{f"{split} mIoU / Dice": "{miou:.1f} / {dice:.1f}".format(
        **floors[split][name]) for split in floors}} for name in next(iter(floors.values()))])
    text = (f"{settings}\n\nTable 1 (mIoU / Dice, %)\n{first}\n\nTable 2 (%)\n{second}\n\n"
            f"Trivial baselines on the same tiles (%)\n{trivial}\n\n"
            f"Every method against the best trivial baseline's Dice\n{verdicts(means, floors)}\n")
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"explainseg_{args.dataset}.md").write_text(f"# ExplainSeg on {args.dataset} ({date.today()})\n\n"
                                                      f"```\n{text}```\n")


if __name__ == "__main__":
    main()
