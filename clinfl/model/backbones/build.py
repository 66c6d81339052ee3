"""Building the backbone a method config asks for, from its initial weights.

Where the initial weights come from (:func:`initial_weights_path`): ``method.init_weights``
when given; else, for ``mobilenet_v2`` with ``pretrained`` on, the cached ImageNet weights
(:func:`~clinfl.weights.cache.cached_weights`, filled by ``clinfl weights fetch``); else none
(random initialisation from the global RNG, which the algorithms seed inside a forked RNG).
"""

from __future__ import annotations

from pathlib import Path

from clinfl.config import MethodConfig
from clinfl.config.backbones import resolved_feature_stride
from clinfl.model.backbones.base import FeatureBackbone, freeze_leading_blocks
from clinfl.model.backbones.densenet import DenseNet121Features
from clinfl.model.backbones.loading import read_state_dict
from clinfl.model.backbones.mobilenet import MobileNetV2Features
from clinfl.model.backbones.resnet import ResNet18Features, StemKind, load_resnet18_weights
from clinfl.weights.cache import MOBILENET_V2_IMAGENET, cached_weights


def initial_weights_path(method: MethodConfig) -> Path | None:
    """Return the file the backbone starts from (None: random initialisation).

    Raises:
        ModelError: for ``mobilenet_v2`` with ``pretrained`` on, no ``init_weights`` and no
            cached ImageNet weights (the remedy names ``clinfl weights fetch``).
    """
    if method.init_weights is not None:
        return method.init_weights
    if method.backbone == "mobilenet_v2" and method.pretrained:
        return cached_weights(MOBILENET_V2_IMAGENET)
    return None


def build_feature_backbone(method: MethodConfig, image_size: int) -> FeatureBackbone:
    """Build the configured backbone, load its initial weights and freeze its leading blocks.

    ``auto`` is the ResNet-18 ``small`` stem below 64 px, else ``standard``. An unset
    ``feature_stride`` is the backbone's default (:func:`resolved_feature_stride`).

    Raises:
        ModelError: if the initial weights are missing, unreadable or do not fit (one line
            naming the first mismatching key), or ``train_blocks`` or ``feature_stride`` does
            not fit the backbone.
    """
    path = initial_weights_path(method)
    stride = resolved_feature_stride(method.backbone, method.feature_stride) or 32
    backbone: FeatureBackbone
    if method.backbone == "mobilenet_v2":
        state = None if path is None else read_state_dict(path)
        backbone = MobileNetV2Features(state, feature_stride=stride, source=_name(path))
    elif method.backbone == "densenet121":
        state = None if path is None else read_state_dict(path)
        backbone = DenseNet121Features(state, feature_stride=stride, source=_name(path))
    else:
        stem: StemKind
        if method.backbone == "auto":
            stem = "small" if image_size < 64 else "standard"
        else:
            stem = method.backbone
        resnet = ResNet18Features(stem=stem, norm=method.norm, width=method.width)
        if path is not None:
            load_resnet18_weights(resnet, path)
        backbone = resnet
    freeze_leading_blocks(backbone, method.train_blocks)
    return backbone


def _name(path: Path | None) -> str:
    return "" if path is None else path.name
