"""The `segxai` command: a thin layer over the Python API (`demo`, `train`, `explain`, `evaluate`).

Bad input is reported as one clear line on stderr with exit status 2, never as a traceback.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Sequence

from segxai.errors import SegxaiError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="segxai", description="Explain medical image segmentation models.")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="train tiny models on phantoms, explain an organ and a lesion, write a report")
    demo.add_argument("--out", default="demo_out", help="output directory (default: demo_out)")
    demo.add_argument("--cache", default=".segxai-cache", help="where trained demo models are kept")
    demo.add_argument("--no-progress", action="store_true", help="hide progress bars")

    train = commands.add_parser("train", help="train a reference MONAI U-Net and save a checkpoint")
    source = train.add_mutually_exclusive_group(required=True)
    source.add_argument("--phantom", choices=["abdomen", "brain"], help="train on seeded synthetic phantoms")
    source.add_argument("--images", nargs="+", help="training images (one file per case, one grid for all)")
    train.add_argument("--labels", nargs="+", help="label maps matching --images, in the same order")
    train.add_argument("--names", help="JSON file mapping label values to names, e.g. {\"1\": \"liver\"}")
    train.add_argument("--intensity", default=None,
                       help='normalisation as JSON, e.g. {"kind": "window", "low": -200, "high": 700}')
    train.add_argument("--shape", default="64,64,32", help="phantom grid (H,W or H,W,D; sizes multiples of 4)")
    train.add_argument("--steps", type=int, default=300)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--out", required=True, help="checkpoint path to write (.pt)")
    train.add_argument("--no-progress", action="store_true")

    explain = commands.add_parser("explain", help="explain a checkpoint's prediction on image files")
    explain.add_argument("--model", required=True, help="checkpoint written by `segxai train`")
    explain.add_argument("--image", nargs="+", required=True, help="image file(s); several files are modalities")
    explain.add_argument("--target", required=True,
                         help="class:CLS | instance:[CLS:]INDEX | voxel:[CLS:]z,y,x | instances:CLS (every "
                              "predicted instance of CLS, one map each)")
    explain.add_argument("--method", default="saliency",
                         help="saliency | smoothgrad | integrated_gradients | gradcam | gradcampp | occlusion | rise | lime")
    explain.add_argument("--reference", default=None,
                         help="with --target instances:CLS, a reference mask file: lesions are typed TP/FP and "
                              "missed ones (FN) explained on their reference voxels")
    explain.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                         help="a method setting, e.g. --param window=8 --param stride=4 (repeatable)")
    explain.add_argument("--roi", default=None, help="mask:FILE | box:START:SIZE | prediction:CLS[:MARGIN]")
    explain.add_argument("--out", required=True, help="output directory")
    explain.add_argument("--seed", type=int, default=0)
    explain.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cpu)")
    explain.add_argument("--no-progress", action="store_true")
    evaluate = commands.add_parser("evaluate", help="compare methods unrestricted vs restricted to an organ ROI")
    evaluate.add_argument("--model", required=True)
    evaluate.add_argument("--image", nargs="+", required=True)
    evaluate.add_argument("--mask", required=True, help="label map holding the organ")
    evaluate.add_argument("--label", type=int, required=True, help="the organ's label in --mask (also its class)")
    evaluate.add_argument("--methods", default="occlusion,rise,lime", help="comma-separated method names")
    evaluate.add_argument("--param", action="append", default=[], metavar="METHOD.NAME=VALUE",
                          help="a method setting, e.g. --param occlusion.window=8")
    evaluate.add_argument("--target", default=None, help="default: the organ's mean probability over its mask")
    evaluate.add_argument("--margin", type=float, default=4.0, help="ROI = organ grown by this many voxels")
    evaluate.add_argument("--threshold", type=float, default=0.5, help="binarise min-max-normalised maps at this")
    evaluate.add_argument("--out", required=True)
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.add_argument("--device", default=None)
    evaluate.add_argument("--no-progress", action="store_true")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    command = "segxai " + " ".join(shlex.quote(a) for a in argv)
    try:
        if args.command == "demo":
            from segxai.demo import run_demo

            report = run_demo(args.out, args.cache, progress=not args.no_progress)
            print(f"report: {report}")
        elif args.command == "train":
            _train(args)
        elif args.command == "explain" and args.target.startswith("instances:"):
            _explain_instances(args, command)
        elif args.command == "explain":
            from segxai.pipeline import explain_files

            if args.reference:
                raise SegxaiError("--reference is for --target instances:CLS")
            result = explain_files(
                args.model, args.image, args.target, args.out, method=args.method, roi=args.roi, seed=args.seed,
                device=args.device, progress=not args.no_progress, command=command, params=parse_params(args.param),
            )
            stats = result.explanation.stats
            print(f"{stats['method']}: {stats['forward_passes']} forward / {stats['backward_passes']} backward "
                  f"passes in {stats['seconds']:.2f} s; report: {result.written['report']}")
        elif args.command == "evaluate":
            from segxai.evaluate import evaluate_files

            result = evaluate_files(
                args.model, args.image, args.mask, args.label, args.out, methods=args.methods.split(","),
                params=_method_params(args.param), target=args.target, margin=args.margin,
                threshold=args.threshold, seed=args.seed, device=args.device, progress=not args.no_progress,
            )
            print(result.text())
            print(f"tables: {Path(args.out) / 'comparison.csv'}")
    except SegxaiError as error:
        print(f"segxai: error: {error}", file=sys.stderr)
        return 2
    return 0


def _explain_instances(args: argparse.Namespace, command: str) -> None:
    from segxai.pipeline import explain_instance_files

    if args.roi:
        raise SegxaiError("--roi does not apply to --target instances:CLS (each instance is its own target)")
    cls = args.target.partition(":")[2]
    if not cls.isdigit():
        raise SegxaiError(f"--target instances:CLS needs a class number, got {args.target!r}")
    result = explain_instance_files(
        args.model, args.image, int(cls), args.out, method=args.method, reference=args.reference, seed=args.seed,
        device=args.device, progress=not args.no_progress, command=command, params=parse_params(args.param))
    counts = {}
    for row in result.rows:
        counts[row["type"]] = counts.get(row["type"], 0) + 1
    stats = result.explanations[0].stats
    print(f"{args.method}: {len(result.rows)} instance(s) {counts}; {stats['forward_passes']} forward / "
          f"{stats['backward_passes']} backward passes; report: {result.written['report']}")


def _train(args: argparse.Namespace) -> None:
    from segxai.checkpoint import save_checkpoint
    from segxai.train import train_on_phantoms, train_segmenter

    progress = not args.no_progress
    if args.phantom:
        shape = tuple(int(v) for v in args.shape.split(","))
        result = train_on_phantoms(args.phantom, shape, steps=args.steps, seed=args.seed, progress=progress)
    else:
        from segxai.io import load_image, load_mask

        if not args.labels or len(args.labels) != len(args.images) or not args.names:
            raise SegxaiError("--images needs --labels (one per image, same order) and --names")
        images = [load_image(p) for p in args.images]
        labels = [load_mask(p, like=i) for p, i in zip(args.labels, images)]
        result = train_segmenter(
            [i.array for i in images], labels, names=_read_names(args.names),
            intensity=json.loads(args.intensity) if args.intensity else None,
            channel_names=images[0].channel_names, steps=args.steps, seed=args.seed, progress=progress,
        )
    path = save_checkpoint(args.out, result.net, result.config)
    dice = ", ".join(f"{k} {v:.3f}" for k, v in result.dice.items()) or "no validation cases"
    print(f"checkpoint: {path}; validation Dice: {dice}")


def parse_params(items: Sequence[str]) -> dict[str, object]:
    """`NAME=VALUE` settings; values are read as Python literals (8, 0.5, (8, 8, 4), 'blur') or kept as text."""
    import ast

    params: dict[str, object] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.isidentifier():
            raise SegxaiError(f"--param takes NAME=VALUE, got {item!r}")
        try:
            params[name] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            params[name] = value
    return params


def _method_params(items: Sequence[str]) -> dict[str, dict[str, object]]:
    """`METHOD.NAME=VALUE` settings grouped by method."""
    grouped: dict[str, dict[str, object]] = {}
    for item in items:
        method, dot, rest = item.partition(".")
        if not dot:
            raise SegxaiError(f"--param takes METHOD.NAME=VALUE for evaluate, got {item!r}")
        grouped.setdefault(method, {}).update(parse_params([rest]))
    return grouped


def _read_names(path: str) -> dict[int, str]:
    try:
        raw = json.loads(Path(path).read_text())
        return {int(k): str(v) for k, v in raw.items()}
    except (OSError, ValueError, AttributeError) as error:
        raise SegxaiError(f"cannot read class names from {path}: {error}") from None


if __name__ == "__main__":
    sys.exit(main())
