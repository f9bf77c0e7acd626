"""The README's Python block runs as written on phantoms, with its sample budgets cut so it takes seconds."""
from __future__ import annotations

import re
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from torch import nn

from segxai.data import abdomen_phantom, brain_phantom

README = Path(__file__).resolve().parents[1] / "README.md"
BUDGETS = {r"n_masks=\d+": "n_masks=16", r"n_samples=\d+": "n_samples=8", r"draws=\d+": "draws=2",
           r"steps=\d+": "steps=3", r"n_steps=\d+": "n_steps=4"}


def python_block() -> str:
    text = README.read_text()
    section = text[text.index("## Python in a few lines"):]
    block = section[section.index("```python") + len("```python"):]
    return block[: block.index("```")]


def lesion_net() -> nn.Module:
    """Class 1 wherever the locally averaged FLAIR is bright: the phantom's lesions, several instances."""
    net = nn.Sequential(nn.Conv3d(2, 4, 3, padding=1), nn.ReLU(), nn.Conv3d(4, 2, 1))
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        net[0].weight[0, 0] = 1.0 / 27
        net[2].weight[1, 0] = 40.0
        net[2].bias[1] = -40.0 * 0.7
    return net


def save(array: np.ndarray, path: Path) -> None:
    nib.save(nib.Nifti1Image(array, np.diag([1.5, 1.5, 2.0, 1.0])), path)


def test_readme_python_block_runs(tmp_path, monkeypatch):
    torch.manual_seed(0)
    brain = brain_phantom((32, 32, 24), n_lesions=5, seed=0)
    save(brain.image[0], tmp_path / "flair.nii.gz")
    save(brain.image[1], tmp_path / "t1.nii.gz")
    save(brain.labels.astype(np.int16), tmp_path / "lesions.nii.gz")
    ct = abdomen_phantom((48, 48, 24), seed=1)
    save((ct.image[0] / 1000.0).astype(np.float32), tmp_path / "ct.nii.gz")
    save(ct.labels.astype(np.int16), tmp_path / "ct_labels.nii.gz")
    others = [(abdomen_phantom((48, 48, 24), seed=s).image / 1000.0).astype(np.float32) for s in (2, 3)]
    slices = [abdomen_phantom((32, 32), seed=s) for s in (4, 5)]
    code = python_block()
    for pattern, budget in BUDGETS.items():
        code = re.sub(pattern, budget, code)
    namespace = {
        "net": lesion_net(),
        "organ_net": nn.Sequential(nn.Conv3d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv3d(8, 7, 3, padding=1)).eval(),
        "LAYER": "0",
        "other_cts": others,
        "images": [(s.image / 1000.0).astype(np.float32) for s in slices],
        "label_maps": [s.labels for s in slices],
    }
    monkeypatch.chdir(tmp_path)
    exec(compile(code, str(README), "exec"), namespace)
    assert namespace["expl"].attribution.shape == brain.image.shape
    assert namespace["expl"].cost.backward_passes == 1
    assert (tmp_path / "out" / "attribution_stats.json").exists()
    assert len(namespace["per_lesion"]) >= 3 and len(namespace["rows"]) == len(namespace["per_lesion"])
    assert namespace["occ"].cost.forward_passes > 0
    assert bool((namespace["occ"].attribution[0][~namespace["roi"]] == 0).all())
    assert namespace["text_roi"].shape == ct.labels.shape
