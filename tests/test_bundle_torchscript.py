"""MONAI bundles (read with MONAI's own ConfigParser) and TorchScript exports, built here with the frameworks' own
code: recognised by content, predictions equal to the framework's own, maps on the input file's grid and affine."""
from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from torch import nn

from segxai.cli import main
from segxai.errors import SegxaiError

# The file is stored with its first axis flipped (x runs right-to-left) and anisotropic voxels, so the bundle's
# Orientationd and Spacingd both change the grid the network sees.
AFFINE = np.array([[-1.2, 0, 0, 30.0], [0, 1.0, 0, -5.0], [0, 0, 1.4, 2.0], [0, 0, 0, 1]])
SHAPE = (26, 20, 15)

INFERENCE = {
    "imports": ["$import torch"],
    "bundle_root": ".",
    "device": "$torch.device('cpu')",
    "network_def": {"_target_": "UNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 3,
                    "channels": [4, 8], "strides": [2], "num_res_units": 1, "norm": "batch"},
    "preprocessing": {"_target_": "Compose", "transforms": [
        {"_target_": "LoadImaged", "keys": "image", "image_only": True},
        {"_target_": "EnsureChannelFirstd", "keys": "image"},
        {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
        {"_target_": "Spacingd", "keys": "image", "pixdim": [1.0, 1.0, 1.0], "mode": "bilinear"},
        {"_target_": "ScaleIntensityd", "keys": "image"},
    ]},
    "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [16, 16, 16], "sw_batch_size": 2, "overlap": 0.25},
    "postprocessing": {"_target_": "Activationsd", "keys": "pred", "softmax": True},
}
METADATA = {"network_data_format": {"outputs": {"pred": {"channel_def": {"0": "background", "1": "ball",
                                                                          "2": "rim"}}}}}


def _image(path: Path) -> Path:
    grid = np.indices(SHAPE)
    ball = sum((g - c) ** 2 for g, c in zip(grid, (8, 12, 7))) < 16
    rng = np.random.default_rng(0)
    data = rng.normal(10, 2, SHAPE).astype(np.float32) + 40 * ball
    nib.save(nib.Nifti1Image(data, AFFINE), path)
    return path


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> tuple[Path, Path]:
    """A MONAI bundle folder (network from MONAI's UNet, seeded weights) and an image for it."""
    from monai.bundle import ConfigParser

    root = tmp_path_factory.mktemp("bundle")
    (root / "configs").mkdir()
    (root / "models").mkdir()
    (root / "configs" / "inference.json").write_text(json.dumps(INFERENCE))
    (root / "configs" / "metadata.json").write_text(json.dumps(METADATA))
    parser = ConfigParser(INFERENCE)
    torch.manual_seed(0)
    net = parser.get_parsed_content("network_def")
    with torch.no_grad():  # move the batch-norm statistics off the identity, as training would
        for module in net.modules():
            if isinstance(module, nn.BatchNorm3d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
    torch.save(net.state_dict(), root / "models" / "model.pt")
    return root, _image(root.parent / "case.nii.gz")


def monai_prediction(bundle_root: Path, image: Path) -> np.ndarray:
    """What the bundle itself predicts on the file's grid: its preprocessing, inferer and argmax, inverted onto
    the input with MONAI's Invertd (nearest), as bundles' postprocessing does."""
    from monai.bundle import ConfigParser
    from monai.data import MetaTensor
    from monai.transforms import Invertd

    parser = ConfigParser()
    parser.read_config(str(bundle_root / "configs" / "inference.json"))
    net = parser.get_parsed_content("network_def")
    net.load_state_dict(torch.load(bundle_root / "models" / "model.pt", weights_only=True))
    net.eval()
    preprocessing = parser.get_parsed_content("preprocessing")
    data = preprocessing({"image": str(image)})
    with torch.no_grad():
        logits = parser.get_parsed_content("inferer")(data["image"][None], net)
    pred = MetaTensor(logits[0].argmax(0, keepdim=True).float(), meta=data["image"].meta)
    pred.applied_operations = data["image"].applied_operations
    inverted = Invertd("pred", preprocessing, orig_keys="image", nearest_interp=True)({"pred": pred, "image": data["image"]})
    return np.asarray(inverted["pred"][0]).round().astype(int)


def test_bundle_is_recognised_and_predicts_as_monai_does(bundle, tmp_path):
    import segxai as sx

    root, image = bundle
    assert sx.models.model_kind(root) == "bundle"
    loaded = sx.models.load(root)
    assert loaded.config["names"] == {0: "background", 1: "ball", 2: "rim"}
    out = tmp_path / "out"
    assert main(["explain", "--model", str(root), "--image", str(image), "--target", "voxel:1:8,12,7",
                 "--out", str(out), "--no-progress"]) == 0
    ours = np.asarray(nib.load(out / "prediction.nii.gz").dataobj)
    theirs = monai_prediction(root, image)
    assert ours.shape == theirs.shape == SHAPE
    assert len(np.unique(theirs)) > 1 and (ours == theirs).mean() >= 0.995


def test_bundle_map_peaks_at_the_voxel_in_world_coordinates(bundle, tmp_path):
    """The bundle flips axis 0 and resamples: a map written back must peak at the voxel the user named."""
    import segxai as sx
    from segxai.models.case import load_case
    from segxai.pipelines.explain import explain_case

    root, image = bundle
    case = load_case(image, model=sx.models.load(root))
    assert case.grid.model_shape != SHAPE
    spacing = np.abs(np.diag(AFFINE)[:3])
    for position in [(5, 14, 4), (19, 6, 10)]:
        result = explain_case(case, f"voxel:1:{','.join(map(str, position))}", tmp_path / str(position))
        written = nib.load(next(p for k, p in result.written.items() if k.startswith("attribution_c")))
        np.testing.assert_allclose(written.affine, AFFINE)
        magnitude = np.abs(np.asarray(written.dataobj))
        strong = np.where(magnitude >= 0.5 * magnitude.max(), magnitude, 0)
        centre = (np.indices(SHAPE).reshape(3, -1) * strong.ravel()).sum(1) / strong.sum()
        assert np.linalg.norm((centre - position) * spacing) <= 2.0, (centre, position)


def test_bundle_without_network_def_is_a_clear_error(tmp_path, capsys):
    root = tmp_path / "broken"
    (root / "configs").mkdir(parents=True)
    (root / "configs" / "inference.json").write_text(json.dumps({"preprocessing": INFERENCE["preprocessing"]}))
    image = _image(tmp_path / "case.nii.gz")
    assert main(["explain", "--model", str(root), "--image", str(image), "--target", "class:1",
                 "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "no 'network_def'" in err and err.count("segxai: error:") == 1


# ------------------------------------------------------------------------------------ TorchScript
class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(2, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 3, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


@pytest.fixture(scope="module")
def scripted(tmp_path_factory) -> tuple[Path, nn.Module]:
    torch.manual_seed(0)
    net = TinyNet().eval()
    path = tmp_path_factory.mktemp("ts") / "exported_model.pt"  # named like a checkpoint on purpose
    torch.jit.save(torch.jit.script(net), str(path))
    return path, net


def test_torchscript_is_recognised_by_content_and_predicts_as_the_network(scripted, tmp_path):
    import segxai as sx

    path, net = scripted
    assert sx.models.model_kind(path) == "torchscript"
    loaded = sx.models.load(path, activation="softmax")
    assert (loaded.model.in_channels, loaded.model.spatial_dims) == (2, 2)
    x = torch.randn(2, 17, 23, generator=torch.Generator().manual_seed(3))
    expected = net(x[None]).argmax(1)[0]
    assert torch.equal(loaded.model.predict(x), expected)


def test_torchscript_voxel_saliency_from_the_cli(scripted, tmp_path):
    path, _ = scripted
    x = np.random.default_rng(1).normal(size=(2, 17, 23)).astype(np.float32)
    image = tmp_path / "x.npy"
    np.save(image, x)
    out = tmp_path / "out"
    assert main(["explain", "--model", str(path), "--image", str(image), "--target", "voxel:1:8,11",
                 "--activation", "softmax", "--intensity", '{"kind": "none"}', "--out", str(out),
                 "--no-progress"]) == 0
    stats = json.loads((out / "attribution_stats.json").read_text())
    assert stats["target"]["position"] == [8, 11]
    attribution = sum(np.abs(np.load(p)) for p in out.glob("attribution_*.npy"))
    support = np.argwhere(attribution > 0)
    # two 3x3 convolutions: the gradient reaches exactly two voxels around the target
    assert support.min(0).tolist() == [6, 9] and support.max(0).tolist() == [10, 13]


def test_folds_on_a_non_nnunet_model_is_an_error(scripted):
    import segxai as sx

    with pytest.raises(SegxaiError, match="apply to nnU-Net model folders"):
        sx.models.load(scripted[0], folds=[0])
