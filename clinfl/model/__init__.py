"""Models: the simplex ETF, the backbones, LADM, the networks and the local losses."""

from clinfl.model.backbones import (
    FEATURE_DIM,
    DenseNet121Features,
    FeatureBackbone,
    MobileNetV2Features,
    ResNet18Features,
    load_resnet18_weights,
)
from clinfl.model.etf import SimplexETF, simplex_etf
from clinfl.model.ladm import LabelAttention
from clinfl.model.losses import LossTerms, bce_per_sample, fedncalign_loss
from clinfl.model.networks import FedNCAlignNet, LinearHeadNet, NetOutput

__all__ = [
    "FEATURE_DIM",
    "DenseNet121Features",
    "FeatureBackbone",
    "FedNCAlignNet",
    "LabelAttention",
    "LinearHeadNet",
    "LossTerms",
    "MobileNetV2Features",
    "NetOutput",
    "ResNet18Features",
    "SimplexETF",
    "bce_per_sample",
    "fedncalign_loss",
    "load_resnet18_weights",
    "simplex_etf",
]
