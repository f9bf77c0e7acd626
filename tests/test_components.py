"""Component effects (PdCR-style ATE of layers and channels, a library extension): interventions through
forward hooks, ranking, seeding, pass counting and the cross-model table."""
from __future__ import annotations

import csv

import pytest
import torch
from torch import nn

import segxai as sx
from segxai import targets as T
from segxai.errors import SegxaiError
from segxai.methods import ComponentEffects, compare_models
from tests.conftest import conv, conv_stack, grid


class SideBranch(nn.Module):
    """A conv stack plus a side convolution that runs in every forward pass but never reaches the output."""

    def __init__(self, dims: int) -> None:
        super().__init__()
        self.main = conv_stack(dims)
        self.side = conv(dims, 1, 4, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.side(x)
        return self.main(x)


def weighted_channels(dims: int) -> nn.Module:
    """Four identical 1x1 channels, read by class 1 with weights 0.1, 0.2, 3.0, 0.3 (channel 2 dominates)."""
    net = nn.Sequential(conv(dims, 1, 4, kernel_size=1), conv(dims, 4, 2, kernel_size=1))
    with torch.no_grad():
        net[0].weight.fill_(1.0)
        net[0].bias.zero_()
        net[1].weight.zero_()
        net[1].bias.zero_()
        net[1].weight[1, :, ...] = torch.tensor([0.1, 0.2, 3.0, 0.3]).view(4, *(1,) * dims)
    return net


class BatchSensitive(SideBranch):
    """SideBranch whose output is scaled by 1 + 1e-6 (batch size - 1), as float kernels chosen by batch size
    differ: the same input scores differently in batches of different sizes."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * (1.0 + 1e-6 * (x.shape[0] - 1))


def image(dims: int, seed: int = 0, n: int | None = None) -> torch.Tensor:
    shape = (1, *grid(dims, 8)) if n is None else (n, 1, *grid(dims, 8))
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


def test_zero_ablation_is_exactly_zero_off_the_path_and_non_zero_on_it(dims):
    report = ComponentEffects(SideBranch(dims), ["side", "main.0"], intervention="zero").explain(
        image(dims), T.ClassRegion(1), progress=False
    )
    effects = {e.layer: e for e in report.layers}
    assert effects["side"].effect == 0.0
    assert effects["main.0"].effect != 0.0
    assert [e.layer for e in report.layers] == ["main.0", "side"] and report.layers[0].rank == 1
    assert effects["side"].se == 0.0 and effects["side"].draws == 1


def test_channel_ranking_recovers_the_channel_with_the_largest_weight(dims):
    report = ComponentEffects(weighted_channels(dims), ["0"], unit="channel", intervention="zero").explain(
        image(dims), T.ClassRegion(1), progress=False)
    top = report.channels[0]
    assert (top.layer, top.channel, top.rank) == ("0", 2, 1)
    assert [e.channel for e in report.channels] == [2, 3, 1, 0]
    x = image(dims)
    assert top.effect == pytest.approx(-3.0 * float(x.sum()), rel=1e-5)
    assert report.layers[0].effect == pytest.approx(-3.6 * float(x.sum()), rel=1e-5)


def test_resample_with_the_input_as_donor_has_no_effect(dims):
    x = image(dims)
    report = ComponentEffects(conv_stack(dims), ["0", "2"], unit="channel", draws=4).explain(
        x, T.ClassRegion(1), donors=x[None], progress=False
    )
    assert len(report.channels) == 8
    assert all(abs(e.effect) < 1e-4 for e in [*report.layers, *report.channels])


def test_mean_ablation_over_identical_donors_has_no_effect_and_spatial_mean_does(dims):
    x = image(dims)
    method = ComponentEffects(conv_stack(dims), ["0"], intervention="mean")
    # the donors' activations come from a batch of two, the clean one from a batch of one: no exact equality
    assert abs(method.explain(x, T.ClassRegion(1), donors=torch.stack([x, x]), progress=False).layers[0].effect) < 1e-4
    assert abs(method.explain(x, T.ClassRegion(1), progress=False).layers[0].effect) > 1e-3


def test_seeds_repeat_and_differ(dims):
    x, donors = image(dims), image(dims, seed=1, n=5)
    method = ComponentEffects(conv_stack(dims), ["0", "2"], unit="channel", draws=4)
    settings = vars(method).copy()
    run = lambda seed: method.explain(x, T.ClassRegion(1), donors=donors, seed=seed, progress=False).rows()
    first = run(3)
    assert run(3) == first and run(4) != first
    assert vars(method) == settings  # the settings only: no per-call state on the object
    assert all(row["se"] > 0 for row in first if row["unit"] == "channel")


def test_passes_are_counted_and_batched(dims):
    model = sx.SegModel(conv_stack(dims))
    method = ComponentEffects(model, ["0", "2"], draws=3)
    report = method.explain(image(dims), T.ClassRegion(1), donors=image(dims, seed=1, n=2), batch_size=4,
                            progress=False)
    # clean, 2 donors, 6 interventions in batches of 4 that each carry the clean input beside 3 of them
    assert report.cost.forward_passes == 1 + 2 + 2 * 3 + 2
    assert model.forward_calls == 1 + 1 + 2
    assert report.cost.seconds > 0


def test_screening_skips_components_without_effect(dims):
    net = SideBranch(dims)
    model = sx.SegModel(net)
    method = ComponentEffects(model, ["side", "main.0"], draws=5, screen_draws=2, tau=1e-6)
    report = method.explain(image(dims), T.ClassRegion(1), donors=image(dims, seed=1, n=3), progress=False)
    effects = {e.layer: e for e in report.layers}
    assert effects["side"].screened_out and effects["side"].draws == 0 and effects["side"].effect == 0.0
    assert not effects["main.0"].screened_out and effects["main.0"].draws == 5
    assert report.cost.forward_passes == 1 + 3 + 2 * 2 + 5 + 2  # + the clean input in the screen's and the estimate's batch


def test_unknown_layer_lists_candidates():
    with pytest.raises(SegxaiError, match="no layer 'nope'; candidate layers: 0, 2, 4"):
        ComponentEffects(conv_stack(2), ["0", "nope"])


@pytest.mark.parametrize(
    "kwargs, call, message",
    [
        ({"intervention": "shuffle"}, {}, "intervention must be one of"),
        ({"unit": "voxel"}, {}, "unit must be one of"),
        ({"draws": 0}, {}, "draws must be an int >= 1"),
        ({}, {"donors": None}, "resample ablation needs donors"),
        ({}, {"donors": torch.rand(2, 1, 4, 4)}, "donors have shape"),
        ({}, {"roi": torch.zeros(8, 8)}, "the ROI is empty"),
    ],
)
def test_errors(kwargs, call, message):
    args = {"inputs": image(2), "donors": image(2, n=2), **call}
    with pytest.raises(SegxaiError, match=message):
        ComponentEffects(conv_stack(2), ["0"], **kwargs).explain(
            args["inputs"], T.ClassRegion(1), args.get("roi"), donors=args["donors"], progress=False
        )


def test_compare_models_makes_one_table_and_csv(dims, tmp_path):
    models = {"a": conv_stack(dims), "b": weighted_channels(dims)}
    layers = {"a": ["0", "2"], "b": ["0"]}
    comparison = compare_models(models, image(dims), T.ClassRegion(1), layers, intervention="zero", progress=False)
    rows = comparison.rows()
    assert [(r["model"], r["layer"]) for r in rows if r["unit"] == "layer"][-1] == ("b", "0")
    assert {r["model"] for r in rows} == {"a", "b"} and len(rows) == 3
    assert "effect" in comparison.table().splitlines()[0]
    with open(comparison.write_csv(tmp_path / "components.csv"), newline="") as handle:
        written = list(csv.DictReader(handle))
    assert len(written) == 3 and written[0]["model"] == "a"
    with pytest.raises(SegxaiError, match="no layers given for model"):
        compare_models(models, image(dims), T.ClassRegion(1), {"a": ["0"]})


def test_region_dice_outcome_against_the_prediction(dims):
    noise = lambda seed, n: 3 * torch.randn(n, 1, *grid(dims, 8), generator=torch.Generator().manual_seed(seed))
    x = noise(0, 1)[0]  # mixed classes inside the region
    region = torch.zeros(grid(dims, 8), dtype=torch.bool)
    region[(slice(2, 6),) * dims] = True
    target = T.RegionDice(1, region, reference="prediction")
    report = ComponentEffects(SideBranch(dims), ["side", "main.0"], draws=4).explain(
        x, target, donors=noise(1, 3), progress=False
    )
    effects = {e.layer: e.effect for e in report.layers}
    assert report.base == 1.0 and effects["side"] == 0.0
    assert -1.0 <= effects["main.0"] < 0.0


@pytest.mark.parametrize("batch_size", ["auto", 1, 2])
def test_effects_are_exactly_zero_off_the_path_whatever_the_batch_kernels(dims, batch_size):
    net = BatchSensitive(dims)
    for intervention, donors in (("zero", None), ("resample", image(dims, seed=1, n=3))):
        method = ComponentEffects(net, ["side", "main.0"], intervention=intervention, draws=3, screen_draws=2,
                                  tau=1e-9)
        report = method.explain(image(dims), T.ClassRegion(1), donors=donors, batch_size=batch_size, progress=False)
        effects = {e.layer: e for e in report.layers}
        assert effects["side"].effect == 0.0 and effects["side"].se == 0.0
        assert abs(effects["main.0"].effect) > 1e-3


def reference_effect(net: nn.Module, x: torch.Tensor, layer: nn.Module, channel: int | None,
                     replacement: torch.Tensor, roi: torch.Tensor | None = None) -> float:
    """`T(x | do(h := replacement)) - T(x)` for the class-1 logit sum, one plain forward pass per side."""
    score = lambda: float(net(x[None])[0, 1].double().sum())
    with torch.no_grad():
        clean = score()

        def hook(_module, _inputs, output):
            where = torch.zeros_like(output, dtype=torch.bool)
            where[:, slice(None) if channel is None else channel] = True
            if roi is not None:
                where &= roi
            return torch.where(where, replacement, output)

        handle = layer.register_forward_hook(hook)
        try:
            treated = score()
        finally:
            handle.remove()
    return treated - clean


def test_effects_equal_a_hand_written_reference(dims):
    net, x = conv_stack(dims), image(dims)
    donor = image(dims, seed=4)
    with torch.no_grad():
        donor_activation = net[0](donor[None])
        clean_activation = net[0](x[None])
    spatial_mean = clean_activation.mean(dim=tuple(range(2, 2 + dims)), keepdim=True).expand_as(clean_activation)
    cases = {"zero": (None, torch.zeros_like(clean_activation)), "resample": (donor[None], donor_activation),
             "mean": (None, spatial_mean)}
    for intervention, (donors, replacement) in cases.items():
        report = ComponentEffects(net, ["0"], unit="channel", intervention=intervention, draws=3).explain(
            x, T.ClassRegion(1), donors=donors, batch_size=3, progress=False)
        found = {(e.layer, e.channel): e.effect for e in [*report.layers, *report.channels]}
        for channel in (None, 0, 1, 2, 3):
            expected = reference_effect(net, x, net[0], channel, replacement)
            assert found["0", channel] == pytest.approx(expected, rel=1e-4, abs=1e-5), (intervention, channel)


def test_an_roi_restricts_the_intervention_to_its_voxels(dims):
    x = image(dims)
    roi = torch.zeros(grid(dims, 8), dtype=torch.bool)
    roi[(slice(0, 3),) * dims] = True
    report = ComponentEffects(weighted_channels(dims), ["0"], unit="channel", intervention="zero").explain(
        x, T.ClassRegion(1), roi, progress=False)
    top = report.channels[0]
    assert top.effect == pytest.approx(-3.0 * float(x[0][roi].sum()), rel=1e-5)
    net = conv_stack(dims)
    strided = ComponentEffects(net, ["0"], intervention="zero").explain(x, T.ClassRegion(1), roi, progress=False)
    expected = reference_effect(net, x, net[0], None, torch.zeros(1, 4, *grid(dims, 8)), roi)
    assert strided.layers[0].effect == pytest.approx(expected, rel=1e-4, abs=1e-5)


def test_a_batch_gives_one_report_per_image(dims):
    x = image(dims, n=2)
    method = ComponentEffects(weighted_channels(dims), ["0"], unit="channel", intervention="zero")
    reports = method.explain(x, T.ClassRegion(1), progress=False)
    assert len(reports) == 2 and reports.keys == (0, 1)
    for item, report in enumerate(reports):
        assert report.channels[0].effect == pytest.approx(-3.0 * float(x[item].sum()), rel=1e-5)
    assert reports.cost.forward_passes == sum(r.cost.forward_passes for r in reports)
    assert [row["item"] for row in reports.rows()] == [0] * 5 + [1] * 5
