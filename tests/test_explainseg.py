"""ExplainSeg: the DINO-layout ViT, the classifier, relevance, post-processing, baselines and the tables."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from segxai.errors import SegxaiError
from segxai.explainseg import (
    RelevanceSettings,
    TrainConfig,
    load_backbone,
    load_classifier,
    save_classifier,
    segment,
    train_classifier,
    vit_small,
)
from segxai.explainseg.backbone import dino_state_dict
from segxai.explainseg.baselines import maskcut, tokencut
from segxai.explainseg.classifier import channel_stats, tile
from segxai.explainseg.crf import crf_available
from segxai.explainseg.evaluate import score_split, table1, table2
from segxai.explainseg.ncut import bipartition, token_affinity
from segxai.explainseg.postprocess import morphology, otsu, superpixel_ncut, token_ncut, variant_mask
from segxai.explainseg.relevance import feature_map, relevance
from segxai.metrics.overlap import iou

SIZE = 32


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_vit(patch: int = 8):
    torch.manual_seed(0)
    return vit_small(patch, embed_dim=32, depth=2, num_heads=2, img_size=SIZE)


def blob_data(n: int = 40, seed: int = 0):
    """RGB noise images, every second one with a bright disc: the class is 'has a blob'."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    images, masks, labels = [], [], []
    for i in range(n):
        image = rng.normal(60, 10, (3, SIZE, SIZE)).astype(np.float32)
        mask = np.zeros((SIZE, SIZE), dtype=bool)
        if i % 2:
            r, c = rng.integers(9, 23, 2)
            mask = (yy - r) ** 2 + (xx - c) ** 2 <= rng.integers(4, 7) ** 2
            image[:, mask] += 120
        images.append(image)
        masks.append(mask)
        labels.append(i % 2)
    return images, masks, labels


@pytest.fixture(scope="module")
def trained():
    images, masks, labels = blob_data()
    config = TrainConfig(size=SIZE, epochs=30, batch_size=8, lr=0.05, trainable_blocks=2)
    return train_classifier(images, labels, tiny_vit(), config, progress=False), images, masks, labels


# ----------------------------------------------------------------------------------------------- backbone
def dino_keys(dim: int = 32, depth: int = 2, patch: int = 8, grid: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random state dict with DINO's key names and shapes, written out by hand (not from our module)."""
    g = torch.Generator().manual_seed(seed)
    shapes = {"cls_token": (1, 1, dim), "pos_embed": (1, 1 + grid * grid, dim),
              "patch_embed.proj.weight": (dim, 3, patch, patch), "patch_embed.proj.bias": (dim,),
              "norm.weight": (dim,), "norm.bias": (dim,)}
    for i in range(depth):
        shapes.update({f"blocks.{i}.norm1.weight": (dim,), f"blocks.{i}.norm1.bias": (dim,),
                       f"blocks.{i}.attn.qkv.weight": (3 * dim, dim), f"blocks.{i}.attn.qkv.bias": (3 * dim,),
                       f"blocks.{i}.attn.proj.weight": (dim, dim), f"blocks.{i}.attn.proj.bias": (dim,),
                       f"blocks.{i}.norm2.weight": (dim,), f"blocks.{i}.norm2.bias": (dim,),
                       f"blocks.{i}.mlp.fc1.weight": (4 * dim, dim), f"blocks.{i}.mlp.fc1.bias": (4 * dim,),
                       f"blocks.{i}.mlp.fc2.weight": (dim, 4 * dim), f"blocks.{i}.mlp.fc2.bias": (dim,)})
    return {k: 0.1 * torch.randn(s, generator=g) for k, s in shapes.items()}


def to_huggingface(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {"vit.embeddings.cls_token": state["cls_token"], "vit.embeddings.position_embeddings": state["pos_embed"],
           "vit.embeddings.patch_embeddings.projection.weight": state["patch_embed.proj.weight"],
           "vit.embeddings.patch_embeddings.projection.bias": state["patch_embed.proj.bias"],
           "vit.layernorm.weight": state["norm.weight"], "vit.layernorm.bias": state["norm.bias"]}
    names = {"norm1": "layernorm_before", "attn.proj": "attention.output.dense", "norm2": "layernorm_after",
             "mlp.fc1": "intermediate.dense", "mlp.fc2": "output.dense"}
    for i in range(2):
        for ours, theirs in names.items():
            for kind in ("weight", "bias"):
                out[f"vit.encoder.layer.{i}.{theirs}.{kind}"] = state[f"blocks.{i}.{ours}.{kind}"]
        for kind in ("weight", "bias"):
            for part, value in zip(("query", "key", "value"), state[f"blocks.{i}.attn.qkv.{kind}"].chunk(3)):
                out[f"vit.encoder.layer.{i}.attention.attention.{part}.{kind}"] = value
    return out


@pytest.mark.parametrize("wrap", ["plain", "teacher", "huggingface"])
def test_dino_state_dict_round_trip(tmp_path, wrap):
    state = dino_keys()
    saved = {
        "plain": {**state, "head.weight": torch.zeros(10, 32), "head.bias": torch.zeros(10)},
        "teacher": {"teacher": {f"module.backbone.{k}": v for k, v in state.items()}, "epoch": torch.tensor(3)},
        "huggingface": to_huggingface(state),
    }[wrap]
    torch.save(saved, tmp_path / "vit.pth")
    net = load_backbone(tmp_path / "vit.pth", num_heads=2)
    assert (net.patch_size, net.embed_dim, len(net.blocks)) == (8, 32, 2)
    loaded = net.state_dict()
    assert set(loaded) == set(state)
    assert all(torch.equal(loaded[k], v) for k, v in state.items())


def test_backbone_errors(tmp_path):
    torch.save({"weight": torch.zeros(3)}, tmp_path / "bad.pth")
    with pytest.raises(SegxaiError, match="no ViT backbone"):
        load_backbone(tmp_path / "bad.pth")
    with pytest.raises(SegxaiError, match="cannot read"):
        load_backbone(tmp_path / "missing.pth")
    with pytest.raises(SegxaiError, match="multiples of 8"):
        tiny_vit().features(torch.zeros(1, 3, 30, 30))
    with pytest.raises(SegxaiError, match="ViT checkpoint"):
        dino_state_dict([1, 2])
    state = dino_keys()
    state["blocks.1.attn.proj.weight"] = torch.zeros(5, 5)
    torch.save(state, tmp_path / "wrong.pth")
    with pytest.raises(SegxaiError, match="does not fit"):
        load_backbone(tmp_path / "wrong.pth")


def test_features_and_position_interpolation():
    net = tiny_vit().eval()
    with torch.no_grad():
        same = net.features(torch.randn(2, 3, SIZE, SIZE))
        larger = net.features(torch.randn(1, 3, 48, 64))
    assert same.grid == (4, 4) and same.tokens.shape == (2, 4, 4, 32) and same.keys.shape == (2, 4, 4, 32)
    assert same.attention.shape == (2, 2, 17, 17)
    assert torch.allclose(same.attention.sum(-1), torch.ones(2, 2, 17))
    assert larger.grid == (6, 8) and larger.cls.shape == (1, 32)
    assert torch.equal(net.positional_embedding((4, 4)), net.pos_embed)


# ----------------------------------------------------------------------------------------------- classifier
def test_tiling_and_stats():
    image = np.arange(2 * 4 * 6, dtype=np.float32).reshape(2, 4, 6)
    mask = np.zeros((4, 6), dtype=np.uint8)
    mask[0, 0] = 1
    tiles, masks, labels = tile(image, mask, 2)
    assert labels == [1, 0, 0, 0] and tiles[3].shape == (2, 2, 3) and masks[0].sum() == 1
    mean, std = channel_stats([image, image + 1])
    assert mean[0] == pytest.approx(12.0) and std[1] > 0


def test_classifier_learns_and_round_trips(trained, tmp_path):
    net, images, _, labels = trained
    with torch.no_grad():
        predicted = [int(net(net.prepare(i)).argmax()) for i in images]
    assert np.mean(np.array(predicted) == np.array(labels)) >= 0.9
    assert not any(p.requires_grad for p in net.backbone.patch_embed.parameters())
    loaded = load_classifier(save_classifier(tmp_path / "clf.pt", net))
    x = net.prepare(images[1])
    assert torch.equal(loaded(x), net(x))
    with pytest.raises(SegxaiError, match="not an ExplainSeg classifier"):
        torch.save({"a": torch.zeros(1)}, tmp_path / "other.pt")
        load_classifier(tmp_path / "other.pt")


def test_relevance_is_on_the_blob(trained):
    net, images, masks, _ = trained
    result = relevance(net, net.prepare(images[1]), n_steps=8, n_samples=5, noise=0.15)
    assert result.cls == 1 and result.map.shape == (SIZE, SIZE)
    assert result.map.min() == 0.0 and result.map.max() == 1.0
    assert result.map[masks[1]].mean() > 2 * result.map[~masks[1]].mean()
    assert result.stats["forward_passes"] > 0 and result.stats["params"]["n_samples"] == 5


def test_whole_pipeline_and_tables(trained):
    net, images, masks, labels = trained
    positives = [i for i, label in enumerate(labels) if label][:4]
    splits = {}
    for name, chosen in (("train", positives[:2]), ("val", positives[2:])):
        means, rows = score_split(net, [images[i] for i in chosen], [masks[i] for i in chosen],
                                  settings=RelevanceSettings(n_steps=8), progress=False)
        splits[name] = means
        assert len(rows) == 2 * 6
    assert all(0 <= m["miou"] <= m["dice"] <= 100 for means in splits.values() for m in means.values())
    assert splits["train"]["C"]["miou"] > 30 and splits["val"]["A"]["miou"] > 30
    first, second = table1(splits), table2(splits)
    assert "XNCut: XAI + NCut" in first and "train mIoU / Dice" in first and "val mIoU / Dice" in first
    assert "MaskCut" in second and "Dice val" in second
    result = segment(net, images[positives[0]], ["XNCut"], settings=RelevanceSettings(n_steps=4), graph="superpixel")
    assert result.masks["XNCut"].shape == (SIZE, SIZE)
    with pytest.raises(SegxaiError, match="unknown method"):
        segment(net, images[0], ["D"])


def test_table2_keeps_one_decimal():
    scores = {m: {"miou": 2.0, "dice": 3.5} for m in ("TokenCut", "MaskCut", "XNCut")}
    assert "2.0" in table2({"train": scores, "val": scores})


@pytest.mark.parametrize("kind", ["attention", "keynorm"])
def test_feature_maps(trained, kind):
    net, images, _, _ = trained
    with torch.no_grad():
        features = net.backbone.features(net.prepare(images[1]))
    values = feature_map(features, (SIZE, SIZE), kind)
    assert values.shape == (SIZE, SIZE) and values.min() == 0.0 and values.max() == 1.0
    with pytest.raises(SegxaiError, match="feature map kind"):
        feature_map(features, (SIZE, SIZE), "pca")


@pytest.mark.skipif(not crf_available(), reason="pydensecrf (segxai[crf]) is not installed")
def test_pipeline_with_crf(trained):
    net, images, masks, _ = trained
    result = segment(net, images[1], ["A", "MaskCut"], settings=RelevanceSettings(n_steps=4), crf=True)
    assert set(result.masks) == {"A", "MaskCut"}
    assert all(m.dtype == bool and m.shape == masks[1].shape for m in result.masks.values())


# ----------------------------------------------------------------------------------------------- post-processing
def disc(shape=(64, 64), centre=(32, 32), radius=10):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


def test_otsu_on_a_bimodal_map():
    rng = np.random.default_rng(0)
    truth = disc()
    values = np.where(truth, rng.normal(0.8, 0.05, truth.shape), rng.normal(0.2, 0.05, truth.shape))
    assert np.array_equal(otsu(values), truth)
    assert not otsu(np.ones((8, 8))).any()


def test_morphology_fills_holes_and_clears_the_border():
    ring = disc(radius=14) & ~disc(radius=5)
    corner = disc(centre=(0, 0), radius=6)
    values = np.where(ring | corner, 0.9, 0.1)
    mask = morphology(values)
    assert mask[32, 32]  # the hole is filled
    assert not mask[0, 0]  # the component touching the border is gone
    assert iou(mask, disc(radius=14)) > 0.9
    alone = morphology(np.where(corner, 0.9, 0.1))  # everything touches the border: kept
    assert alone[0, 0]


def test_ncut_separates_two_clusters_and_two_blobs():
    rng = np.random.default_rng(0)
    features = np.concatenate([rng.normal([1, 0, 0], 0.1, (30, 3)), rng.normal([0, 1, 0], 0.1, (50, 3))])
    side, _ = bipartition(token_affinity(features))
    assert side[:30].all() != side[30:].any() and len(set(side[:30])) == 1 and len(set(side[30:])) == 1
    truth = disc(centre=(20, 20), radius=9)
    values = np.where(truth, 0.9, 0.1) + rng.normal(0, 0.02, truth.shape)
    assert iou(superpixel_ncut(np.clip(values, 0, 1), n_segments=200), truth) > 0.8
    keys = np.where(disc((8, 8), (2, 2), 2)[..., None], [1.0, 0.0], [0.0, 1.0])
    coarse = np.kron(disc((8, 8), (2, 2), 2), np.ones((8, 8))) * 0.8 + 0.1
    assert np.array_equal(token_ncut(coarse, keys), coarse > 0.5)


def test_tokencut_and_maskcut_find_the_small_cluster():
    rng = np.random.default_rng(1)
    square = np.zeros((10, 10), dtype=bool)
    square[3:6, 4:8] = True
    keys = np.where(square[..., None], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]) + rng.normal(0, 0.05, (10, 10, 3))
    assert np.array_equal(tokencut(keys), square)
    masks = maskcut(keys)
    assert masks and np.array_equal(masks[0], square)
    with pytest.raises(SegxaiError, match=r"\(h, w, D\)"):
        tokencut(keys[0])


def test_variants_by_name_and_errors():
    values = np.where(disc(), 0.9, 0.1)
    assert iou(variant_mask("C", values), disc()) > 0.9
    assert iou(variant_mask("A", values, features=np.ones_like(values)), disc()) > 0.9
    with pytest.raises(SegxaiError, match="unknown variant"):
        variant_mask("D", values)
    with pytest.raises(SegxaiError, match="keys"):
        variant_mask("XNCut", values)
    with pytest.raises(SegxaiError, match="feature map"):
        variant_mask("B", values)


@pytest.mark.skipif(not crf_available(), reason="pydensecrf (segxai[crf]) is not installed")
def test_crf_snaps_a_blurred_mask_to_the_edge():
    from scipy import ndimage

    from segxai.explainseg.crf import refine

    truth = disc(radius=14)
    image = np.where(truth[..., None], [200, 60, 60], [40, 40, 160]).astype(np.uint8)
    blurred = ndimage.gaussian_filter(disc(centre=(34, 30), radius=11).astype(float), 4)
    before = iou(blurred > 0.5, truth)
    after = iou(refine(image, blurred), truth)
    assert after > 0.95 > before


# ----------------------------------------------------------------------------------------------- command line
def test_cli_train_segment_evaluate(tmp_path, capsys):
    import PIL.Image

    from segxai.cli import main

    images, masks, _ = blob_data(8, seed=3)
    paths, mask_paths = [], []
    for i, (image, mask) in enumerate(zip(images, masks)):
        paths.append(str(tmp_path / f"img{i}.png"))
        mask_paths.append(str(tmp_path / f"img{i}_mask.png"))
        PIL.Image.fromarray(np.clip(image, 0, 255).astype(np.uint8).transpose(1, 2, 0)).save(paths[-1])
        PIL.Image.fromarray(mask.astype(np.uint8) * 255).save(mask_paths[-1])
    model = str(tmp_path / "clf.pt")
    assert main(["explainseg", "train", "--images", *paths, "--labels", "0,1,0,1,0,1,0,1", "--patch", "8",
                 "--size", "32", "--epochs", "2", "--batch-size", "4", "--out", model, "--no-progress"]) == 0
    assert main(["explainseg", "segment", "--model", model, "--image", paths[1], "--method", "C", "--n-steps", "2",
                 "--out", str(tmp_path / "mask.png"), "--no-progress"]) == 0
    assert PIL.Image.open(tmp_path / "mask.png").size == (SIZE, SIZE)
    assert main(["explainseg", "evaluate", "--model", model, "--images", *paths[:4], "--masks", *mask_paths[:4],
                 "--val-images", *paths[4:], "--val-masks", *mask_paths[4:], "--n-steps", "2", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "Table 1" in out and "ExplainSeg (XNCut)" in out and "val mIoU / Dice" in out
    assert main(["explainseg", "segment", "--model", paths[0], "--image", paths[1], "--out",
                 str(tmp_path / "m.png"), "--no-progress"]) == 2
    assert "cannot read an ExplainSeg classifier" in capsys.readouterr().err


def test_an_interrupted_classifier_training_resumes_to_the_same_weights(tmp_path, monkeypatch):
    import segxai.models.loop as loop
    from segxai.explainseg.classifier import load_classifier
    from segxai.models.loop import Resumable

    images, _, labels = blob_data(8)
    settings = dict(size=SIZE, epochs=4, batch_size=4, lr=0.05, trainable_blocks=1)
    whole = train_classifier(images, labels, tiny_vit(), TrainConfig(**settings), progress=False)
    real_bar, kept = loop.progress_bar, tmp_path / "kept.pt"

    def interrupted(items, **kwargs):
        for item in real_bar(items, **kwargs):
            if item == 3:
                raise KeyboardInterrupt
            yield item

    saving = Resumable(tmp_path / "state.pt", every=2, resume=True)
    monkeypatch.setattr(loop, "progress_bar", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train_classifier(images, labels, tiny_vit(), TrainConfig(**settings), saving=saving, progress=False,
                         on_checkpoint=lambda net: save_classifier(kept, net))
    assert load_classifier(kept).head.weight.shape == whole.head.weight.shape  # the work so far is kept
    monkeypatch.setattr(loop, "progress_bar", real_bar)
    config = TrainConfig(**settings)
    resumed = train_classifier(images, labels, tiny_vit(), config, saving=saving, progress=False)
    assert len(config.history) == 4
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6), name
