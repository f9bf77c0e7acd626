"""`segxai train` on files as they come: mixed, odd sizes, a class subset, a validation split, checkpoints as it
goes and a resumed run that ends where an uninterrupted one does."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from segxai.cli import main
from segxai.models.checkpoint import load_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def files(tmp_path):
    rng = np.random.default_rng(0)
    images, labels = [], []
    for index, shape in enumerate([(30, 27), (25, 33), (36, 30), (29, 29), (31, 26)]):
        label = np.zeros(shape, np.int64)
        label[3:10, 4:11], label[-9:-3, -8:-2] = 1, 2
        image = (rng.normal(0, 0.1, (1, *shape)) + (label == 1) - 0.5 * (label == 2)).astype(np.float32)
        np.save(tmp_path / f"image{index}.npy", image)
        np.save(tmp_path / f"label{index}.npy", label)
        images.append(str(tmp_path / f"image{index}.npy"))
        labels.append(str(tmp_path / f"label{index}.npy"))
    (tmp_path / "names.json").write_text(json.dumps({"1": "square"}))
    return tmp_path, images, labels


def train(root, images, labels, out, *extra):
    return main(["train", "--images", *images, "--labels", *labels, "--names", str(root / "names.json"),
                 "--steps", "4", "--out", str(out), "--no-progress", *extra])


def test_mixed_sizes_resampled_with_a_validation_split_and_the_named_class_only(files, capsys):
    root, images, labels = files
    assert train(root, images, labels, root / "m.pt", "--size", "32,32") == 0
    printed = capsys.readouterr().out
    assert "validation Dice: square" in printed and "final loss" in printed
    model, config = load_checkpoint(root / "m.pt")
    assert config["network"]["out_channels"] == 2 and config["input_size"] == [32, 32]
    assert set(config["validation_dice"]) == {"square"} and config["training"]["validation_cases"] == 1
    assert model.predict(np.load(images[1])).shape == (25, 33)  # any grid in, the same grid out


def test_an_interrupted_run_resumes_to_the_weights_of_an_uninterrupted_one(files, monkeypatch):
    import segxai.models.loop as loop

    root, images, labels = files
    assert train(root, images, labels, root / "whole.pt", "--checkpoint-every", "2") == 0
    real_bar = loop.progress_bar

    def stopped_after_three_steps(items, **kwargs):  # Ctrl-C during step 4, one step after the last save
        for item in real_bar(items, **kwargs):
            if item == 3:
                raise KeyboardInterrupt
            yield item

    monkeypatch.setattr(loop, "progress_bar", stopped_after_three_steps)
    assert train(root, images, labels, root / "cut.pt", "--checkpoint-every", "2") == 130  # Ctrl-C's status
    assert (root / "cut.pt").is_file() and (root / "cut.pt.state").is_file()  # the work so far is kept
    assert torch.load(root / "cut.pt.state")["step"] == 2
    monkeypatch.setattr(loop, "progress_bar", real_bar)
    assert train(root, images, labels, root / "cut.pt", "--checkpoint-every", "2", "--resume") == 0
    whole, cut = torch.load(root / "whole.pt"), torch.load(root / "cut.pt")
    for name, value in whole["state_dict"].items():
        assert torch.allclose(value.float(), cut["state_dict"][name].float(), rtol=1e-5, atol=1e-6), name
    assert whole["config"]["validation_dice"] == pytest.approx(cut["config"]["validation_dice"], abs=1e-6)
