"""Building the backbone a method config asks for, from its initial weights.

Where the initial weights come from is one rule,
:func:`~clinfl.weights.provenance.resolve_init_weights` (the one the run's records and its
run-config digest use): ``method.init_weights`` when given; else, for ``mobilenet_v2`` with
``pretrained`` on, the cached ImageNet weights (filled by ``clinfl weights fetch``); else none
(random initialisation from the global RNG, which the algorithms seed inside a forked RNG).
"""

from __future__ import annotations

from pathlib import Path

from clinfl.config import MethodConfig
from clinfl.config.backbones import resolved_feature_stride
from clinfl.config.presets import or_library_default
from clinfl.model.backbones.base import FeatureBackbone, freeze_leading_blocks
from clinfl.model.backbones.densenet import DenseNet121Features
from clinfl.model.backbones.folding import Normalisation
from clinfl.model.backbones.loading import read_state_dict
from clinfl.model.backbones.mobilenet import MobileNetV2Features
from clinfl.model.backbones.resnet import ResNet18Features, StemKind, load_resnet18_weights
from clinfl.weights.provenance import pretrained_set, resolve_init_weights


def build_feature_backbone(
    method: MethodConfig, image_size: int, *, load_initial_weights: bool = True
) -> FeatureBackbone:
    """Build the configured backbone, load its initial weights and freeze its leading blocks.

    ``auto`` is the ResNet-18 ``small`` stem below 64 px, else ``standard``. An unset
    ``feature_stride`` is the backbone's default (:func:`resolved_feature_stride`).
    A MobileNetV2 or DenseNet-121 that starts from a weights file has its BatchNorm folded into
    them; one that starts from random weights has GroupNorm instead (folding untrained
    BatchNorm would leave it unnormalised). ``load_initial_weights=False`` builds the network
    the weights would give without reading them, for a model whose every tensor is loaded
    afterwards (a model folder).

    Raises:
        ModelError: if the initial weights are missing, unreadable or do not fit (one line
            naming the first mismatching key), or ``train_blocks`` or ``feature_stride`` does
            not fit the backbone.
    """
    starts_from_file = method.init_weights is not None or pretrained_set(method) is not None
    path = resolve_init_weights(method) if starts_from_file and load_initial_weights else None
    # a network that starts from weights folds their BatchNorm; a random one gets GroupNorm
    normalisation: Normalisation = "folded" if starts_from_file else "group"
    stride = resolved_feature_stride(method.backbone, method.feature_stride) or 32
    backbone: FeatureBackbone
    if method.backbone == "mobilenet_v2":
        state = None if path is None else read_state_dict(path)
        backbone = MobileNetV2Features(
            state, feature_stride=stride, source=_name(path), normalisation=normalisation
        )
    elif method.backbone == "densenet121":
        state = None if path is None else read_state_dict(path)
        backbone = DenseNet121Features(
            state, feature_stride=stride, source=_name(path), normalisation=normalisation
        )
    else:
        stem: StemKind
        if method.backbone == "auto":
            stem = "small" if image_size < 64 else "standard"
        else:
            stem = method.backbone
        width = or_library_default(method.width, "method.width")
        resnet = ResNet18Features(stem=stem, norm=method.norm, width=width)
        if path is not None:
            load_resnet18_weights(resnet, path)
        backbone = resnet
    freeze_leading_blocks(backbone, method.train_blocks)
    return backbone


def _name(path: Path | None) -> str:
    return "" if path is None else path.name
