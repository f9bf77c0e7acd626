"""Checkpoints: weights-only loading, round trips, and clear errors for anything that is not ours."""
from __future__ import annotations

import pickle

import pytest
import torch

from segxai.models.checkpoint import load_checkpoint, save_checkpoint
from segxai.models.presets import build_network, network_config, total_stride
from segxai.errors import SegxaiError


@pytest.fixture
def config():
    return network_config("unet2d", in_channels=1, out_channels=3, names={1: "a", 2: "b"}, intensity=None)


def test_round_trip_gives_the_same_predictions(tmp_path, config):
    torch.manual_seed(0)
    net = build_network(config).eval()
    path = save_checkpoint(tmp_path / "model.pt", net, config)
    model, loaded = load_checkpoint(path)
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x).logits, net(x), atol=1e-6)
    assert loaded["names"] == {1: "a", 2: "b"} and total_stride(loaded) == 4
    assert model.in_channels == 1 and model.spatial_dims == 2


def test_a_plain_state_dict_is_refused_with_a_hint(tmp_path, config):
    path = tmp_path / "weights.pt"
    torch.save(build_network(config).state_dict(), path)
    with pytest.raises(SegxaiError, match="not a segxai checkpoint"):
        load_checkpoint(path)


class Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_pickled_code_is_never_run(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    with open(path, "wb") as handle:
        pickle.dump({"format": "segxai-checkpoint-1", "config": Payload()}, handle, protocol=2)
    with pytest.raises(SegxaiError, match="cannot read a segxai checkpoint"):
        load_checkpoint(path)
    assert "must never run" not in capsys.readouterr().out


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"PK\x03\x04truncated"])
def test_unreadable_files_are_clear_errors(tmp_path, content):
    path = tmp_path / "broken.pt"
    path.write_bytes(content)
    with pytest.raises(SegxaiError, match="cannot read a segxai checkpoint"):
        load_checkpoint(path)


def test_missing_file_and_mismatched_weights(tmp_path, config):
    with pytest.raises(SegxaiError, match="does not exist"):
        load_checkpoint(tmp_path / "nothing.pt")
    path = save_checkpoint(tmp_path / "m.pt", build_network(config), config)
    payload = torch.load(path, weights_only=True)
    payload["config"]["network"]["out_channels"] = 5
    torch.save(payload, path)
    with pytest.raises(SegxaiError, match="does not match its configuration"):
        load_checkpoint(path)


def test_unknown_preset(config):
    with pytest.raises(SegxaiError, match="unknown preset"):
        network_config("resnet", 1, 2)
