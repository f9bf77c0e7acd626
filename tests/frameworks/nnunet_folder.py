"""Build a real nnU-Net v2 trained-model folder with nnU-Net's own code, on a synthetic dataset made here.

Run as a script (`python nnunet_folder.py OUT`): nnU-Net reads its nnUNet_raw / nnUNet_preprocessed paths from the
environment, which this process sets for itself, so the test process never needs them. Steps:
1. a two-channel dataset (channel 0 "CT", channel 1 "T2"): a zero background around a body box, a bright sphere
   in the CT channel (label 1) and a bright block in the T2 channel (label 2);
2. nnU-Net's fingerprint extraction and experiment planning; the planned 3d_fullres network is kept as planned
   except its widths, shrunk so tests stay fast;
3. two folds, each from the network the plans describe, trained for a few steps on nnU-Net-preprocessed cases and
   saved in nnU-Net's checkpoint layout (numpy scalars in the logs, as nnU-Net writes them);
4. a test case whose spacing differs from the plans', and nnUNetPredictor's own predictions of it.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

DATASET = "Dataset901_Tiny"
CONFIG = "3d_fullres"
TRAINER = "nnUNetTrainer__nnUNetPlans__3d_fullres"
SHAPE = (28, 24, 20)
TEST_SPACING = (1.4, 0.9, 1.2)


def make_case(rng: np.random.Generator, shape=SHAPE, spacing=(1.0, 1.0, 1.0)):
    """Two channels and labels (nibabel axis order) with a sphere and a block at random places in a body box."""
    ct = np.zeros(shape, np.float32)
    t2 = np.zeros(shape, np.float32)
    labels = np.zeros(shape, np.uint8)
    body = tuple(slice(2, s - 2) for s in shape)
    ct[body] = rng.normal(40, 8, ct[body].shape)
    t2[body] = rng.normal(10, 2, t2[body].shape)
    grid = np.indices(shape)
    centre = [rng.uniform(7, s - 7) for s in shape]
    sphere = sum((g - c) ** 2 for g, c in zip(grid, centre)) <= rng.uniform(3, 4.5) ** 2
    ct[sphere] += 120
    labels[sphere] = 1
    corner = [int(rng.integers(3, s - 9)) for s in shape]
    block = tuple(slice(c, c + 5) for c in corner)
    block_mask = np.zeros(shape, bool)
    block_mask[block] = True
    block_mask &= labels == 0
    t2[block_mask] += 25
    labels[block_mask] = 2
    affine = np.diag([*spacing, 1.0])
    return [nib.Nifti1Image(ct, affine), nib.Nifti1Image(t2, affine)], nib.Nifti1Image(labels, affine)


def write_raw(raw: Path, cases: int = 6) -> None:
    folder = raw / DATASET
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    rng = np.random.default_rng(0)
    for index in range(cases):
        images, labels = make_case(rng)
        for channel, image in enumerate(images):
            nib.save(image, folder / "imagesTr" / f"tiny_{index:03d}_{channel:04d}.nii.gz")
        nib.save(labels, folder / "labelsTr" / f"tiny_{index:03d}.nii.gz")
    (folder / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "CT", "1": "T2"}, "labels": {"background": 0, "sphere": 1, "block": 2},
        "numTraining": cases, "file_ending": ".nii.gz"}))


def shrink_widths(plans_file: Path) -> dict:
    plans = json.loads(plans_file.read_text())
    arch = plans["configurations"][CONFIG]["architecture"]["arch_kwargs"]
    arch["features_per_stage"] = [min(f, 4 * 2 ** i) for i, f in enumerate(arch["features_per_stage"])]
    plans_file.write_text(json.dumps(plans, indent=2))
    return plans


def train_fold(plans: dict, dataset_json: dict, raw: Path, fold: int, steps: int, start: dict | None = None):
    """A network from the plans, fitted for a few Adam steps (from the weights `start`, if given) on
    nnU-Net-preprocessed training cases."""
    import torch
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    manager = PlansManager(plans)
    config = manager.get_configuration(CONFIG)
    torch.manual_seed(fold)
    net = get_network_from_plans(config.network_arch_class_name, config.network_arch_init_kwargs,
                                 config.network_arch_init_kwargs_req_import, 2, 3, deep_supervision=False)
    if start is not None:
        net.load_state_dict(start)
    images = raw / DATASET / "imagesTr"
    data = []
    for index in range(fold, 6, 2):
        files = [str(images / f"tiny_{index:03d}_{c:04d}.nii.gz") for c in range(2)]
        x, seg, _ = DefaultPreprocessor(verbose=False).run_case(
            files, str(raw / DATASET / "labelsTr" / f"tiny_{index:03d}.nii.gz"), manager, config, dataset_json)
        data.append((torch.from_numpy(x), torch.from_numpy(seg.astype(np.int64)).clamp_min(0)))
    patch = config.patch_size
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-2)
    rng = np.random.default_rng(fold)
    losses = []
    for step in range(steps):
        x, seg = data[step % len(data)]
        pads = [v for s, p in reversed(list(zip(x.shape[1:], patch))) for v in (0, max(0, p - s))]
        x, seg = torch.nn.functional.pad(x, pads), torch.nn.functional.pad(seg, pads)
        start = [int(rng.integers(0, s - p + 1)) for s, p in zip(x.shape[1:], patch)]
        box = tuple(slice(o, o + p) for o, p in zip(start, patch))
        loss = torch.nn.functional.cross_entropy(net(x[(slice(None), *box)][None]), seg[(slice(0, 1), *box)])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(np.float64(loss.item()))
    return net, optimiser, losses


def save_like_nnunet(path: Path, net, optimiser, losses, plans, dataset_json, fold: int) -> None:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({
        "network_weights": net.state_dict(), "optimizer_state": optimiser.state_dict(), "grad_scaler_state": None,
        "logging": {"train_losses": losses, "val_losses": losses, "mean_fg_dice": [np.float64(0.5)] * len(losses),
                    "ema_fg_dice": [np.float64(0.5)] * len(losses), "lrs": [0.01] * len(losses)},
        "_best_ema": np.float64(0.5), "current_epoch": 1,
        "init_args": {"plans": plans, "configuration": CONFIG, "fold": fold, "dataset_json": dataset_json,
                      "device": torch.device("cpu")},
        "trainer_name": "nnUNetTrainer", "inference_allowed_mirroring_axes": (0, 1, 2),
    }, path)


def predict_with_nnunet(model: Path, files: list[str], out: Path, folds, mirror: bool) -> None:
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=mirror,
                                device=torch.device("cpu"), allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(model), use_folds=folds)
    out.parent.mkdir(parents=True, exist_ok=True)
    predictor.predict_from_files_sequential([files], [str(out)], save_probabilities=False)


def build(out: Path) -> None:
    raw, pre, results = out / "raw", out / "preprocessed", out / "results"
    for key, folder in (("nnUNet_raw", raw), ("nnUNet_preprocessed", pre), ("nnUNet_results", results)):
        folder.mkdir(parents=True, exist_ok=True)
        os.environ[key] = str(folder)
    write_raw(raw)
    from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprints, plan_experiments

    extract_fingerprints([901], num_processes=1, check_dataset_integrity=True, verbose=False,
                         show_progress_bar=False)
    plan_experiments([901])
    plans = shrink_widths(pre / DATASET / "nnUNetPlans.json")
    dataset_json = json.loads((raw / DATASET / "dataset.json").read_text())
    model = out / "model"
    model.mkdir()
    for name, source in (("plans.json", pre / DATASET / "nnUNetPlans.json"),
                         ("dataset.json", raw / DATASET / "dataset.json"),
                         ("dataset_fingerprint.json", pre / DATASET / "dataset_fingerprint.json")):
        shutil.copy(source, model / name)
    start = None
    for fold, steps in ((0, 150), (1, 30)):
        net, optimiser, losses = train_fold(plans, dataset_json, raw, fold, steps, start)
        start = net.state_dict()
        save_like_nnunet(model / f"fold_{fold}" / "checkpoint_final.pth", net, optimiser, losses, plans,
                         dataset_json, fold)
    images, labels = make_case(np.random.default_rng(100), shape=(30, 22, 18), spacing=TEST_SPACING)
    case = out / "imagesTs"
    case.mkdir()
    files = []
    for channel, image in enumerate(images):
        files.append(str(case / f"tiny_100_{channel:04d}.nii.gz"))
        nib.save(image, files[-1])
    (out / "labelsTs").mkdir()
    nib.save(labels, out / "labelsTs" / "tiny_100.nii.gz")
    predict_with_nnunet(model, files, out / "nnunet" / "both_folds", (0, 1), mirror=False)
    predict_with_nnunet(model, files, out / "nnunet" / "fold0_mirror", (0,), mirror=True)


if __name__ == "__main__":
    build(Path(sys.argv[1]))
