"""Frozen normalisation: exact on a batch-norm network, local on an instance-norm one, and the deviation it
reports is the one measured here by a hand-written frozen network with the first-order statistics correction."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import segxai as sx
from segxai.methods.perturb import frozen_norm
from segxai.methods.perturb.plan import prepare
from segxai.metrics import deletion_curve
from segxai.roi import receptive_field
from segxai.targets import ClassRegion, evaluate

pytestmark = pytest.mark.usefixtures("one_thread")
SHAPE = (24, 24)


def instance_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.InstanceNorm2d(4, affine=True), nn.ReLU(),
                         nn.Conv2d(4, 2, 3, padding=1)).eval()


def by_hand_frozen(net: nn.Sequential, clean: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The network with its instance norm using the clean input's per-channel mean and variance."""
    conv1, norm, _, conv2 = net
    reference = conv1(clean)
    mean = reference.mean((2, 3), keepdim=True)
    var = reference.var((2, 3), unbiased=False, keepdim=True)
    h = (conv1(x) - mean) / torch.sqrt(var + norm.eps) * norm.weight.view(1, -1, 1, 1) + norm.bias.view(1, -1, 1, 1)
    return conv2(F.relu(h))


def by_hand_corrected(net: nn.Sequential, clean: torch.Tensor, x: torch.Tensor, bound) -> torch.Tensor:
    """The frozen network's scores plus d score / d (mean, variance) of the instance norm (autograd on the
    written-out exact network) times how far each input moves that mean and variance."""
    conv1, norm, _, conv2 = net
    reference = conv1(clean).detach()
    mean = reference.mean((2, 3), keepdim=True)
    var = reference.var((2, 3), unbiased=False, keepdim=True)
    mean_shift = torch.zeros_like(mean, requires_grad=True)
    var_shift = torch.zeros_like(var, requires_grad=True)
    h = (reference - mean - mean_shift) / torch.sqrt(var + var_shift + norm.eps)
    h = h * norm.weight.view(1, -1, 1, 1) + norm.bias.view(1, -1, 1, 1)
    score = evaluate(bound, sx.model.SegOutput(conv2(F.relu(h)), "softmax", 0.5)).sum()
    mean_gradient, var_gradient = torch.autograd.grad(score, [mean_shift, var_shift])
    with torch.no_grad():
        moved = conv1(x)
        mean_moved = moved.mean((2, 3), keepdim=True) - mean
        var_moved = moved.var((2, 3), unbiased=False, keepdim=True) - var
        frozen = evaluate(bound, sx.model.SegOutput(by_hand_frozen(net, clean, x), "softmax", 0.5))
        return frozen + (mean_gradient * mean_moved + var_gradient * var_moved).sum((1, 2, 3))


def test_frozen_equals_exact_on_a_batch_norm_network():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1)).eval()
    x = torch.randn(1, *SHAPE, generator=torch.Generator().manual_seed(1))
    target = ClassRegion(1)
    exact = sx.Occlusion(net, window=4, stride=4).explain(x, target, seed=0, batch_size=8)
    frozen = sx.Occlusion(net, window=4, stride=4, norm="frozen").explain(x, target, seed=0, batch_size=8)
    assert frozen.stats["norm"] == "frozen (no layer to freeze)"
    assert torch.equal(frozen.attribution, exact.attribution)


@pytest.mark.filterwarnings("ignore:frozen normalisation deviates")
def test_frozen_instance_norm_is_local_and_reports_the_deviation_measured_by_hand():
    net = instance_net()
    model = sx.SegModel(net)
    x = torch.randn(1, 1, *SHAPE, generator=torch.Generator().manual_seed(1))
    assert receptive_field(model, x) is None  # instance norm: global
    with frozen_norm.recording(model) as statistics:
        model(x)
    with frozen_norm.frozen(model, statistics):
        assert receptive_field(model, x) == (2, 2)  # two 3x3 convolutions
        assert torch.allclose(model(x).logits, by_hand_frozen(net, x, x), atol=1e-5)
    assert model.receptive_fields[SHAPE] is None  # the exact network's radius is kept apart

    mask = torch.zeros(SHAPE, dtype=torch.bool)
    mask[10:14, 10:14] = True
    roi = torch.zeros(SHAPE, dtype=torch.bool)
    roi[8:16, 8:16] = True  # four 4x4 windows: no more than CHECKS, so every one is checked
    target = ClassRegion(1, mask)
    explanation = sx.Occlusion(net, window=4, stride=4, norm="frozen").explain(x[0], target, roi=roi, seed=0)
    stats = explanation.stats
    assert stats["norm"] == "frozen" and stats["norm_checked"] == 4 and stats["norm_correction"] == "first-order"

    windows = [(r, c) for r in (8, 12) for c in (8, 12)]
    inputs = x.repeat(4, 1, 1, 1)
    for i, (r, c) in enumerate(windows):
        inputs[i, :, r:r + 4, c:c + 4] = 0.0
    with torch.no_grad():
        bound = target.bind(model(x))
        clean = float(evaluate(bound, model(x))[0])
        exact = evaluate(bound, sx.SegModel(net)(inputs))
        plain = evaluate(bound, sx.model.SegOutput(by_hand_frozen(net, x, inputs), "softmax", 0.5))
    approximate = by_hand_corrected(net, x, inputs, bound)
    assert (approximate - exact).abs().mean() < (plain - exact).abs().mean()  # the correction helps on average
    relative = (approximate - exact).abs() / abs(clean)
    assert stats["norm_deviation_max"] == pytest.approx(float(relative.max()), rel=1e-4, abs=1e-7)
    assert stats["norm_deviation_mean"] == pytest.approx(float(relative.mean()), rel=1e-4, abs=1e-7)
    of_effect = float((approximate - exact).abs().max() / (exact - clean).abs().max())
    assert stats["norm_deviation_of_effect"] == pytest.approx(of_effect, rel=1e-4)
    assert stats["norm_deviation_max"] > 0  # instance norm does see the windows
    # the map is the corrected frozen network's occlusion map (score drops)
    drops = clean - approximate
    for (r, c), drop in zip(windows, drops):
        assert float(explanation.attribution[0, r, c]) == pytest.approx(float(drop), rel=1e-4, abs=1e-5)


def test_a_large_deviation_is_a_warning():
    exact = torch.tensor([1.0, 2.0])
    with pytest.warns(UserWarning, match="frozen normalisation deviates"):
        found = frozen_norm.deviation(exact, exact + torch.tensor([0.0, 0.5]), torch.tensor([10.0]))
    assert found.max == pytest.approx(0.05) and found.mean == pytest.approx(0.025)
    assert found.of_effect == pytest.approx(0.5 / 9.0)  # the largest exact effect is |1 - 10|
    assert found.figures()["norm_warning"] is not None
    assert frozen_norm.deviation(exact, exact, torch.tensor([1.0])).figures()["norm_warning"] is None
    with pytest.warns(UserWarning, match="of the largest exact effect"):  # small against the score, not the effects
        small = frozen_norm.deviation(torch.tensor([100.0, 100.1]), torch.tensor([100.0, 100.05]),
                                      torch.tensor([100.0]))
    assert small.max < frozen_norm.WARN_ABOVE and small.of_effect == pytest.approx(0.5, rel=1e-3)  # float32 inputs


@pytest.mark.filterwarnings("ignore:frozen normalisation deviates")
def test_causal_blocks_and_curves_take_the_norm_keyword():
    net = instance_net()
    x = torch.randn(1, *SHAPE, generator=torch.Generator().manual_seed(2))
    mask = torch.zeros(SHAPE, dtype=torch.bool)
    mask[8:16, 8:16] = True
    target = ClassRegion(1, mask)
    blocks = sx.CausalBlocks(net, block=8, fill="zero", norm="frozen", incremental="auto").explain(
        x, target, seed=0)
    assert blocks.stats["norm"] == "frozen" and blocks.stats["norm_deviation_max"] is not None
    assert blocks.stats["incremental"] == "on"
    attribution = torch.rand(SHAPE, generator=torch.Generator().manual_seed(3))
    exact = deletion_curve(net, x, target, attribution, steps=4)
    frozen = deletion_curve(net, x, target, attribution, steps=4, norm="frozen")
    assert frozen.scores[0] == pytest.approx(exact.scores[0], rel=1e-5)  # nothing deleted: the same network
    assert not torch.allclose(torch.from_numpy(frozen.scores[1:]), torch.from_numpy(exact.scores[1:]))


def test_unknown_norm_is_a_clear_error():
    with pytest.raises(sx.SegxaiError, match="norm must be"):
        sx.RISE(instance_net(), norm="batch")


class HardLogitSum(ClassRegion):
    """Summed class logits over a mask, declared non-differentiable so the correction goes through the logits."""

    differentiable = False

    def bind(self, reference):
        return self

    def crop(self, box):
        cropped = super().crop(box)
        if cropped is not None:
            cropped.__class__ = HardLogitSum
        return cropped


@pytest.mark.parametrize("incremental", ["off", "auto"])
@pytest.mark.parametrize("kind, correction, gain", [(ClassRegion, "first-order", 1.0),
                                                     (HardLogitSum, "first-order (logits)", 0.5)])
def test_corrected_scores_agree_on_crops_boxes_and_whole_passes(incremental, kind, correction, gain):
    """The statistics' shifts are measured on a crop or on boxes as on the whole input, so the corrected
    scores agree (to float32 rounding of the sums), and they beat the plain frozen scores against the exact
    ones; a target without gradients gets the correction through the logits it reads."""
    net = instance_net()
    model = sx.SegModel(net)
    shape = (64, 64)
    x = torch.randn(1, 1, *shape, generator=torch.Generator().manual_seed(2))
    mask = torch.zeros(shape, dtype=torch.bool)
    mask[6:10, 6:10] = True
    roi = torch.zeros(shape, dtype=torch.bool)
    roi[2:14, 2:14] = True
    target = kind(1, mask, score="logit", reduce="sum")
    inputs = x.repeat(4, 1, 1, 1)
    for i, (r, c) in enumerate([(2, 2), (2, 10), (10, 2), (10, 10)]):
        inputs[i, :, r:r + 4, c:c + 4] = 0.0
    found = {}
    for crop in ("auto", "none"):
        plan = prepare(model, x, target, roi, outside="keep", crop=crop, norm="frozen",
                       incremental_mode=incremental if crop == "auto" else "off")
        assert plan.correction == correction
        with torch.no_grad(), plan.active():
            found[crop] = plan.scorer(inputs)
        if crop == "auto":
            assert plan.crop is not None
            assert plan.incremental == ("on" if incremental == "auto" else "off")
    scale = float(found["none"].abs().max())
    assert torch.allclose(found["auto"], found["none"], rtol=0, atol=1e-4 * scale)
    with torch.no_grad():
        bound = target.bind(model(x))
        exact = evaluate(bound, model(inputs))
        plain = evaluate(bound, sx.model.SegOutput(by_hand_frozen(net, x, inputs), "softmax", 0.5))
    assert (found["none"] - exact).abs().sum() < gain * (plain - exact).abs().sum()


def test_logit_jacobian_is_the_derivative_of_the_shifted_network():
    """Forward mode through the exact network: moving each layer's (mean, variance) by a small step moves
    the logits over the box by the Jacobian times that step, to second order."""
    net = instance_net()
    model = sx.SegModel(net)
    x = torch.randn(1, 1, *SHAPE, generator=torch.Generator().manual_seed(4))
    with torch.no_grad(), frozen_norm.recording(model) as statistics:
        model(x)
    layers = frozen_norm.statistic_layers(model)
    box = (slice(4, 12), slice(6, 14))
    jacobian = frozen_norm._logit_jacobian(model, x, layers, statistics, box)
    generator = torch.Generator().manual_seed(5)
    (mean, var), = statistics.moments["1"]
    step = (1e-3 * torch.randn(mean.shape, generator=generator), 1e-3 * var * torch.rand(var.shape, generator=generator))
    zero = (torch.zeros_like(mean), torch.zeros_like(var))
    with torch.no_grad():
        with frozen_norm._shifted(layers, {"1": zero}):
            before = model(x).logits[(..., *box)]
        with frozen_norm._shifted(layers, {"1": step}):
            after = model(x).logits[(..., *box)]
    mean_jacobian, var_jacobian = jacobian["1"]
    predicted = (mean_jacobian.flatten(1) @ step[0].double().flatten() + var_jacobian.flatten(1) @ step[1].double().flatten())
    moved = (after - before).double().flatten()
    assert float(moved.abs().max()) > 1e-4  # the step does move the logits
    assert torch.allclose(predicted, moved, rtol=0, atol=0.02 * float(moved.abs().max()))


@pytest.mark.filterwarnings("ignore:frozen normalisation deviates")
def test_every_block_reaches_a_corrected_target():
    """With the correction, a block far outside the frozen receptive field still acts through the statistics,
    so none is skipped as unreachable and its effect is not zero."""
    net = instance_net()
    x = torch.randn(1, 32, 32, generator=torch.Generator().manual_seed(6))
    mask = torch.zeros(32, 32, dtype=torch.bool)
    mask[0:8, 0:8] = True
    target = ClassRegion(1, mask, score="logit", reduce="sum")
    blocks = sx.CausalBlocks(net, block=8, fill="zero", norm="frozen", tau=0.0, screen_draws=1, draws=1).explain(
        x, target, seed=0)
    assert blocks.stats["norm_correction"] == "first-order"
    assert blocks.stats["unreachable_blocks"] == 0
    assert float(blocks.attribution[0, 24:, 24:].abs().max()) > 0  # the far corner block, 16 voxels away
