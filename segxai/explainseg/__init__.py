"""ExplainSeg ("No Masks Needed", arXiv 2508.04534): segmentation masks from a classifier's explanation.

A ViT classifier trained on image-level labels is explained with Integrated Gradients in a noise tunnel; the
relevance (alone or fused with a ViT feature map) becomes a mask by morphology or a normalized cut, optionally
refined by DenseCRF. TokenCut and MaskCut on the same backbone are the baselines. Modules: `backbone` (the
DINO-layout ViT), `classifier`, `relevance`, `ncut`, `crf`, `postprocess`, `baselines`, `segment`, `evaluate`.
"""
from segxai.explainseg.backbone import VisionTransformer, load_backbone, vit_small
from segxai.explainseg.classifier import TrainConfig, ViTClassifier, load_classifier, save_classifier, train_classifier
from segxai.explainseg.segment import METHODS, RelevanceSettings, Segmentation, segment

__all__ = [
    "METHODS",
    "RelevanceSettings",
    "Segmentation",
    "TrainConfig",
    "ViTClassifier",
    "VisionTransformer",
    "load_backbone",
    "load_classifier",
    "save_classifier",
    "segment",
    "train_classifier",
    "vit_small",
]
