"""The embedded end-to-end demo (`segxai demo`, run by `make demo`).

It builds seeded phantoms, trains (or reuses cached) reference U-Nets, writes the scans as NIfTI files, explains
an organ of the abdominal CT phantom, and every lesion of the two-channel brain phantom (instance SmoothGrad,
typed TP/FP/FN against its lesion mask) from those files, compares ROI-guided (organ mask and text prompt) with
unrestricted perturbation, estimates the causal effect (PdCR) of the blocks around the left kidney with patches
from other phantoms, and writes `report.html` beside the NIfTI/PNG/JSON outputs.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from segxai.models.case import load_case, load_model
from segxai.pipelines.causal import causal_blocks_case
from segxai.pipelines.evaluate import evaluate_case
from segxai.pipelines.explain import FileExplanation, explain_case
from segxai.pipelines.instances import InstanceFileExplanation, explain_instances_case
from segxai.pipelines.options import RunOptions

if TYPE_CHECKING:
    from segxai.models.loop import Resumable

SHAPES = {"abdomen": (64, 64, 32), "brain": (48, 48, 48)}
TRAIN_STEPS = {"abdomen": 300, "brain": 300}
ABDOMEN_SPACING = (1.5, 1.5, 2.5)
DEMO_ORGANS = ("liver", "kidney_left")
CASE_SEED = 1000  # held out: training uses seeds derived from 0
DEMO_METHODS = ("saliency",)
# The ROI-guided vs unrestricted comparison (XAI-CLIP) on one small organ, with budgets that take seconds on a CPU.
COMPARISON_ORGAN = "kidney_left"
# Instance SmoothGrad of the brain lesions: noise draws (5 % of the FLAIR range, as in the paper).
LESION_PARAMS = {"n_samples": 10, "noise": 0.05, "reference_channel": 0}
COMPARISON_PARAMS = {"occlusion": {"window": 8, "stride": 8}, "rise": {"n_masks": 200}, "lime": {"n_samples": 200}}
# The text-prompted ROI (XAI-CLIP): a 2D localizer (tiny built-in text encoder) trained on axial slices of phantoms,
# run slice by slice on the volume; the comparison adds the ROI it finds from the organ's name.
LOCALIZER_PHANTOMS = 8
LOCALIZER_STEPS = 600
COMPARISON_PROMPT = "left kidney"
# Causal blocks (PdCR) on the same organ's Dice: 8-voxel cubes, patches drawn from a few other phantoms, 20 draws.
CAUSAL_POOL_CASES = 3
CAUSAL_PARAMS = {"block": 8, "screen_draws": 3, "draws": 20}
# Cached models keep their training state this often, so an interrupted `make demo` continues where it stopped.
CACHE_EVERY = 50


def cached_model(kind: str, shape: tuple[int, ...], cache_dir: Path, steps: int, progress: bool) -> tuple[Path, dict]:
    """Train a reference model on phantoms once and keep its checkpoint in `cache_dir` as soon as it is trained;
    an interrupted training continues from its state (kept every `CACHE_EVERY` steps) on the next run."""
    from segxai.models.checkpoint import load_checkpoint, save_checkpoint
    from segxai.models.train import train_on_phantoms

    path = cache_dir / f"{kind}-{'x'.join(map(str, shape))}-{steps}steps-v1.pt"
    if path.is_file():
        return path, load_checkpoint(path)[1]
    saving = _resumable(path)
    result = train_on_phantoms(kind, shape, steps=steps, progress=progress, saving=saving)
    save_checkpoint(path, result.net, result.config)
    saving.path.unlink(missing_ok=True)  # the model is cached: its training state is no longer needed
    return path, result.config


def cached_localizer(shape: tuple[int, ...], intensity: dict, cache_dir: Path, progress: bool) -> Path:
    """Train the demo's 2D text localizer on axial slices of seeded abdominal phantoms once; keep it in `cache_dir`."""
    from segxai.data import phantom_dataset
    from segxai.localize import TinyTextEncoder, save_localizer, train_localizer

    path = cache_dir / f"localizer-abdomen-{'x'.join(map(str, shape))}-{LOCALIZER_STEPS}steps-v1.pt"
    if path.is_file():
        return path
    cases = phantom_dataset("abdomen", LOCALIZER_PHANTOMS, shape, seed=0)
    images = [case.image[..., z] for case in cases for z in range(shape[-1])]
    labels = [case.labels[..., z] for case in cases for z in range(shape[-1])]
    names = cases[0].names
    prompts = {value: [COMPARISON_PROMPT] for value, name in names.items() if name == COMPARISON_ORGAN}
    saving = _resumable(path)
    localizer = train_localizer(images, labels, names, TinyTextEncoder(), prompts=prompts, intensity=intensity,
                                steps=LOCALIZER_STEPS, seed=0, saving=saving, progress=progress)
    save_localizer(path, localizer)
    saving.path.unlink(missing_ok=True)
    return path


def _resumable(path: Path) -> "Resumable":
    """The training state of a cached model, kept beside it so an interrupted demo continues its training."""
    from segxai.models.loop import Resumable

    return Resumable(path.with_name(path.name + ".state"), CACHE_EVERY, resume=True)


def write_case(out: Path, image: np.ndarray, names: list[str], spacing: tuple[float, ...]) -> list[Path]:
    """Write each channel of a phantom as a NIfTI file with a real affine, as a scanner export would be."""
    from segxai.io import Image, save_array

    out.mkdir(parents=True, exist_ok=True)
    grid = Image(image, np.diag([*spacing, 1.0]), "nifti", (), tuple(names))
    return [save_array(channel, out / f"{name.lower()}.nii.gz", like=grid) for channel, name in zip(image, names)]


def run_demo(out_dir: str | Path = "demo_out", cache_dir: str | Path = ".segxai-cache", *, progress: bool = True,
             steps: dict[str, int] | None = None, shapes: dict[str, tuple[int, ...]] | None = None) -> Path:
    """Run the whole demo and return the path of its `report.html` (smaller `shapes`/`steps` make it quicker)."""
    from segxai.data import abdomen_phantom, brain_phantom
    from segxai.report import Figure, Section, write_report
    from segxai.targets import description_text

    out, cache = Path(out_dir).resolve(), Path(cache_dir)
    out.mkdir(parents=True, exist_ok=True)
    steps = {**TRAIN_STEPS, **(steps or {})}
    shapes = {**SHAPES, **(shapes or {})}
    abdomen_ckpt, abdomen_config = cached_model("abdomen", shapes["abdomen"], cache, steps["abdomen"], progress)
    brain_ckpt, brain_config = cached_model("brain", shapes["brain"], cache, steps["brain"], progress)

    abdomen = abdomen_phantom(shapes["abdomen"], seed=CASE_SEED)
    ct_files = write_case(out / "scans" / "abdomen", abdomen.image, ["ct"], ABDOMEN_SPACING)
    labels_file = write_case(out / "scans" / "abdomen", abdomen.labels[None], ["labels"], ABDOMEN_SPACING)[0]
    brain = brain_phantom(shapes["brain"], seed=CASE_SEED)
    brain_files = write_case(out / "scans" / "brain", brain.image, list(brain.channel_names), (1.0, 1.0, 1.0))

    options = RunOptions(progress=progress, command=_command(out))
    abdomen_model = load_model(abdomen_ckpt)
    ct = load_case(ct_files, reference=labels_file, model=abdomen_model)
    runs: list[tuple[str, FileExplanation]] = []
    for method in DEMO_METHODS:
        for organ in DEMO_ORGANS:
            runs.append((f"{method}: {organ} (abdominal CT phantom)", explain_case(
                ct, f"class:{abdomen.label_of(organ)}", out / f"{method}_{organ}", method=method,
                title=f"{method} of the {organ}", options=options)))
    lesions_file = write_case(out / "scans" / "brain", brain.labels[None].astype(np.uint8), ["lesions"], (1.0, 1.0, 1.0))[0]
    lesions = explain_instances_case(
        load_case(brain_files, reference=lesions_file, model=brain_ckpt), 1, out / "lesions", method="smoothgrad",
        params=LESION_PARAMS, title="Instance SmoothGrad of every lesion", options=options)

    localizer = cached_localizer(shapes["abdomen"], abdomen_config.get("intensity"), cache, progress)
    comparison = evaluate_case(
        ct, abdomen.label_of(COMPARISON_ORGAN), out / "roi_comparison", methods=list(COMPARISON_PARAMS),
        params=COMPARISON_PARAMS, text=f"{COMPARISON_PROMPT}@{localizer}", options=options)

    kidney = abdomen.label_of(COMPARISON_ORGAN)
    kidney_file = write_case(out / "scans" / "abdomen", (abdomen.labels == kidney)[None].astype(np.uint8),
                             [COMPARISON_ORGAN], ABDOMEN_SPACING)[0]
    pool = out / "scans" / "other_abdomens"
    for i in range(CAUSAL_POOL_CASES):
        write_case(pool, abdomen_phantom(shapes["abdomen"], seed=CASE_SEED + 1 + i).image, [f"ct{i}"], ABDOMEN_SPACING)
    causal = causal_blocks_case(ct, f"mask:{kidney_file}", kidney, out / "causal_blocks", pool_dir=pool,
                                params=CAUSAL_PARAMS, options=options)

    sections = [Section("Reference models", text=(
        "Tiny MONAI U-Nets trained on seeded phantoms (cached in the cache directory). Dice is measured on "
        "held-out phantoms."), table=_model_rows({"abdomen": abdomen_config, "brain": brain_config}))]
    for title, run in runs:
        stats, cost = run.explanation.stats, run.explanation.cost
        overlay = next(p for k, p in run.written.items() if k.endswith("_overlay"))
        sections.append(Section(
            title,
            text=f"Target: {description_text(stats['target'])}. Maps are signed and unnormalised (red raises the score, blue lowers it).",
            figures=[Figure(str(overlay.relative_to(out)), "attribution summed over channels; target outlined")],
            table=[{"forward passes": cost.forward_passes, "backward passes": cost.backward_passes,
                    "seconds": cost.seconds, "peak memory (MB)": cost.peak_memory_bytes / 2**20,
                    **{f"share {k}": v for k, v in run.modality_share.items()},
                    "outputs": str(run.written["report"].parent.relative_to(out))}],
        ))
    sections.append(_lesion_section(lesions, out, int(brain.instances.max())))
    sections.append(Section(
        f"ROI-guided vs unrestricted perturbation: {COMPARISON_ORGAN} (abdominal CT phantom)",
        text=("Each method runs on the whole volume (unrestricted), restricted to the organ grown by 4 voxels "
              f"(roi), and restricted to the ROI a text localizer finds from the prompt '{COMPARISON_PROMPT}', "
              "grown the same (text; its seconds include the localisation, also given as roi_seconds in "
              "roi_comparison/records.csv). Only regions touching the ROI within the target's receptive field are "
              "perturbed, and the network runs on a crop when that is exact. Dice/IoU compare the map, binarised "
              "at 0.5 after min-max normalisation, with the organ mask; the ROIs themselves are the trivial "
              "baselines below. Tables are in roi_comparison/."),
        table=comparison.table))
    sections.append(Section("ROI as the explanation (baseline)", table=comparison.baselines))
    sections.append(_causal_section(causal, out))
    return write_report(out / "report.html", "segxai demo", sections, command=_command(out),
                        summary={"organ explanations": len(runs), "methods": ", ".join(DEMO_METHODS),
                                 "lesions explained": len(lesions.rows),
                                 "causal blocks estimated": causal.explanation.stats["estimated_blocks"]})


def _lesion_section(lesions: InstanceFileExplanation, out: Path, true_lesions: int) -> Any:
    from segxai.report import Figure, Section

    stats, cost = lesions.explanations[0].stats, lesions.explanations.cost
    counts = {kind: sum(row["type"] == kind for row in lesions.rows) for kind in ("TP", "FP", "FN")}
    folder = lesions.written["report"].parent.relative_to(out)
    return Section(
        f"Instance SmoothGrad: every lesion of the brain MRI phantom ({true_lesions} true lesions)",
        text=(f"Each predicted lesion is explained by itself (its summed lesion logit), typed against the phantom's "
              f"lesion mask: {counts['TP']} TP, {counts['FP']} FP, {counts['FN']} FN (missed lesions are explained "
              f"on their true voxels). The {stats['params']['n_samples']} noisy forward passes are shared by all "
              f"lesions: {cost.forward_passes} forward and {cost.backward_passes} backward passes in "
              f"{cost.seconds:.1f} s. Per-lesion maps (NIfTI per modality), instances.csv and the full report "
              f"are in {folder}/."),
        figures=[Figure(f"{folder}/{lesions.written[key].name}", caption) for key, caption in (
            ("radial_profile_plot", "mean FLAIR saliency by signed distance to the lesion border"),
            ("modality_share_plot", "share of |saliency| per modality"),
            ("peak_by_type_plot", "peak saliency by lesion type"))],
        table=[{key: row[key] for key in ("id", "type", "voxels", "peak", "inside", "ring_1", "ring_2")
                if key in row} | {k: v for k, v in row.items() if k.startswith("share_")} for row in lesions.rows],
    )


def _causal_section(causal: Any, out: Path) -> Any:
    """The PdCR block effects: the signed ATE overlay, the pie of positive/negative/zero blocks and the cost."""
    from segxai.report import Figure, Section

    stats, cost = causal.explanation.stats, causal.explanation.cost
    return Section(
        f"Causal effect of input blocks on the {COMPARISON_ORGAN} Dice (PdCR)",
        text=("Each 8-voxel block around the organ (the organ's own blocks are skipped) is replaced by the same block "
              "of another phantom; its average treatment effect is the mean change of the organ's Dice (in points) "
              "against the model's own prediction: 3 screening draws, then up to 20 for blocks whose effect reaches "
              "tau. Red (negative) = the original content supports the segmentation. Blocks beyond the receptive "
              "field are not treated. Tables are in causal_blocks/."),
        figures=[Figure(str(causal.written[key].relative_to(out)), caption)
                 for key, caption in (("overlay_figure", "ATE per block; organ outlined"),
                                      ("pie_figure", "blocks by sign of their effect"))],
        table=[{"blocks screened": stats["screened_blocks"], "blocks estimated": stats["estimated_blocks"],
                "blocks out of reach": stats["unreachable_blocks"], "forward passes": cost.forward_passes,
                "seconds": cost.seconds, **{f"{k} blocks": v for k, v in stats["block_counts"].items()}}],
    )


def _model_rows(configs: dict[str, dict]) -> list[dict[str, Any]]:
    rows = []
    for kind, config in configs.items():
        for name, dice in config.get("validation_dice", {}).items():
            rows.append({"model": f"{kind} ({config['preset']})", "class": name, "validation Dice": dice})
    return rows


def _command(out: Path) -> str:
    return f"segxai demo --out {out}"
