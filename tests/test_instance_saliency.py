"""InstanceSaliency (and its one-call form explain_instances): shared-forward instance SmoothGrad checked against
per-instance computation, 2D and 3D."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import segxai as sx
from segxai.errors import SegxaiError
from segxai.methods.instance_saliency import explain_instances, find_instances
from segxai.targets import ClassRegion

from conftest import conv_stack, cube, grid, threshold_net


def two_lesions(dims: int, size: int = 24) -> torch.Tensor:
    """A one-channel image, positive (class 1 for `threshold_net`) on two separate cubes."""
    x = -torch.ones(1, *grid(dims, size))
    x[0][cube(dims, 2, 6, size)] = 1.0
    x[0][cube(dims, 14, 19, size)] = 2.0
    return x


def test_instances_are_found_and_typed_against_a_reference(dims):
    model = sx.SegModel(threshold_net(dims))
    x = two_lesions(dims)
    reference = cube(dims, 2, 6, 24) | cube(dims, 20, 23, 24)  # the first lesion, plus one the model misses
    found = find_instances(model, x[None], 1, reference)
    assert [(f.index, f.kind, int(f.mask.sum())) for f in found] == [
        (1, "TP", 4**dims), (2, "FP", 5**dims), (3, "FN", 3**dims)]


def test_shared_smoothgrad_equals_a_per_instance_loop(dims):
    model = sx.SegModel(conv_stack(dims, layers=2, seed=1))
    x = two_lesions(dims)
    found = find_instances(sx.SegModel(threshold_net(dims)), x[None], 1)
    explanations = explain_instances(model, x, 1, "smoothgrad", instances=found, n_samples=5, noise=0.2,
                                     relative=False, seed=3, batch_size=2, progress=False)
    assert len(explanations) == 2
    for explanation, instance in zip(explanations, found):
        # segxai's own SmoothGrad on this instance alone: one forward and one backward per draw
        expected = sx.SmoothGrad(model, n_samples=5, noise=0.2, relative=False).explain(
            x, ClassRegion(1, instance.mask, score="logit", reduce="sum"), seed=3, progress=False).attribution
        assert torch.allclose(explanation.attribution, expected, atol=1e-5)
        assert torch.equal(explanation.target_mask, instance.mask)
        assert explanation.stats["instance"] == instance.index
    stats = explanations[0].stats
    assert stats["forward_passes"] == 5  # shared by both instances
    assert stats["backward_calls"] == 3 * 2  # one per batch of draws per instance
    assert explanations.cost == explanations[0].cost  # counted once for the call, not once per instance
    assert explanations.keys == (1, 2) and explanations.by_key[2] is explanations[1]


def test_zero_noise_equals_saliency_and_seeds_repeat(dims):
    model = sx.SegModel(conv_stack(dims, layers=2, seed=1))
    x = two_lesions(dims)
    found = find_instances(sx.SegModel(threshold_net(dims)), x[None], 1)
    quiet = explain_instances(model, x, 1, "smoothgrad", instances=found, n_samples=3, noise=0.0, progress=False)
    plain = explain_instances(model, x, 1, "saliency", instances=found, progress=False)
    for a, b, instance in zip(quiet, plain, found):
        expected = sx.Saliency(model).explain(x, ClassRegion(1, instance.mask), progress=False).attribution
        assert torch.allclose(a.attribution, expected, atol=1e-6)
        assert torch.allclose(b.attribution, expected, atol=1e-6)
    run = lambda seed: explain_instances(model, x, 1, instances=found, n_samples=3, noise=0.1, seed=seed,
                                         progress=False)[0].attribution
    assert torch.equal(run(0), run(0))
    assert not torch.equal(run(0), run(1))


def test_max_aggregation_keeps_the_strongest_voxel_gradient(dims):
    model = sx.SegModel(conv_stack(dims, layers=2, seed=1))
    x = two_lesions(dims)
    instance = find_instances(sx.SegModel(threshold_net(dims)), x[None], 1)[:1]
    exact = explain_instances(model, x, 1, "saliency", instances=instance, aggregation="max", chunk=1,
                              progress=False)[0].attribution
    voxels = instance[0].mask.nonzero().tolist()
    grads = torch.stack([sx.Saliency(model).explain(x, sx.targets.Voxel(1, tuple(v)), progress=False).attribution
                         for v in voxels])
    strongest = grads.gather(0, grads.abs().argmax(0, keepdim=True))[0]
    assert torch.allclose(exact, strongest, atol=1e-6)
    whole = explain_instances(model, x, 1, "saliency", instances=instance, aggregation="max", chunk=10**6,
                              progress=False)[0].attribution
    summed = explain_instances(model, x, 1, "saliency", instances=instance, progress=False)[0].attribution
    assert torch.allclose(whole, summed, atol=1e-6)  # one chunk holding every voxel is the summed target
    assert not torch.allclose(exact, summed, atol=1e-3)


def test_crop_to_instance_gives_the_full_volume_map(dims):
    model = sx.SegModel(conv_stack(dims, layers=3, seed=2))  # receptive-field radius 3
    x = two_lesions(dims, size=40)
    found = find_instances(sx.SegModel(threshold_net(dims)), x[None], 1)
    options = dict(instances=found, n_samples=3, noise=0.1, seed=0, progress=False)
    full = explain_instances(model, x, 1, **options)
    sx.roi.receptive_field(model, x[None])  # probed once per model and shape; keep it out of the count
    cropped = explain_instances(model, x, 1, crop=True, **options)
    for a, b in zip(full, cropped):
        assert torch.allclose(a.attribution, b.attribution, atol=1e-5)
    assert cropped[0].stats["forward_voxels"] < full[0].stats["forward_voxels"]
    assert cropped[0].stats["crops"] == 2  # one crop is cheaper than the union box with both lesions


def test_instances_in_one_crop_share_it():
    model = sx.SegModel(conv_stack(3, layers=2, seed=2))  # receptive-field radius 2
    x = -torch.ones(1, 64, 64, 64)
    x[0, 2:4, 2:4, 2:4] = x[0, 8:10, 8:10, 8:10] = 1.0  # both crops are the box [0, 16)^3
    found = find_instances(sx.SegModel(threshold_net(3)), x[None], 1)
    options = dict(instances=found, n_samples=2, noise=0.1, progress=False)
    sx.roi.receptive_field(model, x[None])  # probed once per model and shape; keep it out of the count
    cropped = explain_instances(model, x, 1, crop=True, **options)
    assert cropped[0].stats["crops"] == 1
    assert cropped[0].stats["forward_voxels"] == 2 * 16**3
    for a, b in zip(explain_instances(model, x, 1, **options), cropped):
        assert torch.allclose(a.attribution, b.attribution, atol=1e-5)


def test_sliding_window_inference_is_explained_through(dims):
    net = conv_stack(dims, layers=2, seed=1)
    model = sx.SegModel(net, inferer="sliding_window", roi_size=16, sw_batch_size=2)
    x = two_lesions(dims)
    found = find_instances(sx.SegModel(threshold_net(dims)), x[None], 1)
    shared = explain_instances(model, x, 1, "saliency", instances=found, progress=False)
    for explanation, instance in zip(shared, found):
        expected = sx.Saliency(model).explain(x, ClassRegion(1, instance.mask), progress=False).attribution
        assert torch.allclose(explanation.attribution, expected, atol=1e-6)
        assert explanation.attribution.abs().sum() > 0


def test_other_methods_run_once_per_instance(dims):
    model = sx.SegModel(conv_stack(dims, layers=2, seed=1))
    x = two_lesions(dims)
    found = find_instances(sx.SegModel(threshold_net(dims)), x[None], 1)
    explanations = explain_instances(model, x, 1, sx.Occlusion(model, window=4, stride=4), instances=found,
                                     progress=False)
    assert [e.stats["method"] for e in explanations] == ["occlusion", "occlusion"]
    assert [e.stats["instance"] for e in explanations] == [1, 2]
    for explanation in explanations:  # the instance's figures, with the method's own (regions) kept
        assert explanation.item().base.regions == explanation.stats["regions"] > 0
    assert explanations.cost.forward_passes == sum(e.cost.forward_passes for e in explanations)


def test_bad_calls_raise_clear_errors(dims):
    model = sx.SegModel(threshold_net(dims))
    with pytest.raises(SegxaiError, match="no instance"):
        explain_instances(model, -torch.ones(1, *grid(dims)), 1, progress=False)
    x = two_lesions(dims)
    with pytest.raises(SegxaiError, match="reference mask has shape"):
        explain_instances(model, x, 1, reference=np.zeros(grid(dims, 5)), progress=False)
    with pytest.raises(SegxaiError, match="aggregation"):
        explain_instances(model, x, 1, aggregation="median", progress=False)
    with pytest.raises(SegxaiError, match="one image"):
        explain_instances(model, torch.stack([x, x]), 1, progress=False)


@pytest.fixture(scope="module")
def brain_model():
    """A small 3D U-Net trained for 150 steps on seeded two-channel brain phantoms (about 15 s)."""
    from segxai.models.train import train_on_phantoms

    return train_on_phantoms("brain", (48, 48, 24), n_train=12, steps=150, progress=False)


def test_brain_phantom_lesions_show_the_papers_saliency_pattern(brain_model):
    """As the instance-saliency paper reports: positive saliency inside each lesion, lower in the ring around it,
    and the larger share on the modality carrying the lesion (here FLAIR: contrast 0.8-2.5 vs T1's 0.1-0.5)."""
    from segxai.data import brain_phantom
    from segxai.metrics.instance import inside_vs_rings, modality_share
    from segxai.preprocess import normalize_intensity

    case = brain_phantom((48, 48, 24), seed=1000)
    x = normalize_intensity(case.image, brain_model.config["intensity"])
    explanations = explain_instances(sx.SegModel(brain_model.net), x, 1, reference=case.labels > 0, n_samples=8,
                                     progress=False)
    assert sum(e.stats["instance_type"] == "TP" for e in explanations) >= 5
    profiles = [inside_vs_rings(e.attribution[0].numpy(), e.target_mask.numpy(), rings=2) for e in explanations]
    shares = np.array([modality_share(e.attribution.numpy(), e.target_mask.numpy()) for e in explanations])
    assert all(p["inside"] > 0 for p in profiles)
    assert all(p["ring_1"] < p["inside"] for p in profiles)
    assert np.mean([p["ring_2"] for p in profiles]) < np.mean([p["ring_1"] for p in profiles])
    assert (shares[:, 0] > shares[:, 1]).all()
