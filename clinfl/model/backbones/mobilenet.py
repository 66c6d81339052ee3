"""MobileNetV2 feature extractor (torchvision's ``mobilenet_v2().features``), BatchNorm folded.

The network is torchvision's, with its ``ReLU6(inplace=True)`` made out-of-place (in-place
operations break Opacus' per-sample-gradient hooks; torchvision's residual ``x + conv(x)`` is
already out-of-place). Weights load under torchvision's key names (``0.0.weight``,
``1.conv.0.0.weight``, ...; a ``features.`` prefix is accepted) before every BatchNorm is folded
into the convolution before it (:mod:`clinfl.model.backbones.folding`). The input is clinfl's
grayscale, ImageNet-normalised inside (:class:`~clinfl.model.backbones.inputs.ImageNetInput`).

Blocks: ``features[0]`` (the stem convolution), the 17 inverted residuals ``features[1..17]``
and the 1x1 convolution to 1280 channels ``features[18]``. The total stride is 32;
``feature_stride=16`` keeps ``features[0..13]`` (stride 16, 96 channels).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn
from torchvision.models import mobilenet_v2

from clinfl.model.backbones.base import FeatureBackbone, check_feature_stride, out_of_place
from clinfl.model.backbones.folding import Normalisation, normalise, sequential_pairs
from clinfl.model.backbones.inputs import ImageNetInput
from clinfl.model.backbones.loading import fit_state, load_fitted

STRIDE_16_BLOCKS = 14
"""``features[0..13]``: everything before the first stride-32 block."""
FULL_BLOCKS = 19
FULL_WIDTH = 1280
STRIDE_16_WIDTH = 96
ARCHITECTURE = "MobileNetV2 (torchvision mobilenet_v2().features)"


def mobilenet_key(key: str) -> str | None:
    """Map a torchvision MobileNetV2 key to ``features``' own name (None: not a feature key)."""
    key = key.removeprefix("module.")
    if key.startswith("classifier.") or key.endswith("num_batches_tracked"):
        return None
    return key.removeprefix("features.")


class MobileNetV2Features(FeatureBackbone):
    """``[B, 1 or 3, H, W] -> [B, 1280, H/32, W/32]`` (``[B, 96, H/16, W/16]`` at stride 16).

    ``state`` holds the weights to start from (torchvision key names; None: torchvision's random
    initialisation, drawn from the global RNG as torchvision does). They are loaded, then every
    BatchNorm is folded into its convolution, so the network holds no BatchNorm.

    Raises:
        ModelError: for a ``feature_stride`` other than 16 or 32, or (one line, naming the
            first mismatching key) weights that do not fit MobileNetV2.
    """

    def __init__(
        self,
        state: Mapping[str, torch.Tensor] | None = None,
        *,
        feature_stride: int = 32,
        source: str = "",
        normalisation: Normalisation = "folded",
    ) -> None:
        super().__init__()
        check_feature_stride("mobilenet_v2", feature_stride)
        features = mobilenet_v2().features
        out_of_place(features)
        if state is not None:
            optional = [k for k in features.state_dict() if k.endswith("num_batches_tracked")]
            fitted = fit_state(
                features,
                state,
                rename=mobilenet_key,
                source=source,
                architecture=ARCHITECTURE,
                optional=optional,
            )
            load_fitted(features, fitted)
        normalise(features, sequential_pairs(features), normalisation)
        if feature_stride == 16:
            features = features[:STRIDE_16_BLOCKS]
        self.input = ImageNetInput()
        self.features = features
        self.out_dim = STRIDE_16_WIDTH if feature_stride == 16 else FULL_WIDTH

    def blocks(self) -> list[nn.Module]:
        """The stem convolution, the inverted residuals and (at stride 32) the head conv."""
        return list(self.features)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Return the feature map of ImageNet-normalised (grayscale-repeated) ``images``."""
        result: torch.Tensor = self.features(self.input(images))
        return result
