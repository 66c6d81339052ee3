"""Backbones: feature extractors that return a feature map ``[B, out_dim, h, w]``.

ResNet-18 (:mod:`.resnet`), MobileNetV2 (:mod:`.mobilenet`) and DenseNet-121
(:mod:`.densenet`); their shared pieces: the ImageNet input (:mod:`.inputs`), BatchNorm folding
(:mod:`.folding`), reading and fitting weights files (:mod:`.loading`), freezing leading blocks
(:mod:`.base`) and building one from a method config (:mod:`.build`).
"""

from clinfl.model.backbones.base import FeatureBackbone, freeze_leading_blocks
from clinfl.model.backbones.densenet import DenseNet121Features
from clinfl.model.backbones.mobilenet import MobileNetV2Features
from clinfl.model.backbones.resnet import FEATURE_DIM, ResNet18Features, load_resnet18_weights

__all__ = [
    "FEATURE_DIM",
    "DenseNet121Features",
    "FeatureBackbone",
    "MobileNetV2Features",
    "ResNet18Features",
    "freeze_leading_blocks",
    "load_resnet18_weights",
]
