"""DenseNet-121 feature extractor (torchvision's ``densenet121().features``), BatchNorm folded.

The CheXNet and TorchXRayVision architecture. Weights come from a user's file
(``--init-weights``) under any of these key layouts, all mapped to torchvision's:

- torchvision's ``features.denseblock1.denselayer1.norm1.weight`` (TorchXRayVision uses the
  same names; its ``classifier.*`` and ``op_threshs`` are ignored), with or without the
  ``features.`` prefix, and a ``module.`` or ``module.densenet121.`` (CheXNet) prefix;
- the older ``...denselayer1.norm.1.weight`` layout (``norm.1`` for ``norm1``, ``conv.2`` for
  ``conv2``) of early torchvision checkpoints and CheXNet.

TorchXRayVision's networks take one channel scaled to ``[-1024, 1024]``; a file whose ``conv0``
has one input channel is converted on load to this network's 3-channel ImageNet-normalised
input (:class:`~clinfl.model.backbones.inputs.ImageNetInput`): the weight is spread over the
three channels and scaled, and the constant it leaves is taken into ``norm0``'s running mean.
The converted network equals the original away from the image border (the padding of
``conv0`` is zero in the other input scale, so its 3-pixel border differs slightly).

After loading, BatchNorm is removed (:mod:`clinfl.model.backbones.folding`): ``norm0`` and each
layer's ``norm2`` fold into the convolution before them; the pre-activation norms (each layer's
``norm1``, each transition's ``norm`` and ``norm5``) become depthwise 1x1 convolutions.

Blocks: the stem (``conv0``..``pool0``), then ``denseblock1``, ``transition1``, ...,
``denseblock4`` with ``norm5``. The feature map is ``relu(norm5(...))`` as in torchvision's
classifier: 1024 channels at stride 32. ``feature_stride=16`` ends after ``transition3``'s
convolution, before its pooling: 512 channels at stride 16.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import densenet121

from clinfl.model.backbones.base import FeatureBackbone, check_feature_stride, out_of_place
from clinfl.model.backbones.folding import Normalisation, normalise
from clinfl.model.backbones.inputs import IMAGENET_MEAN, IMAGENET_STD, ImageNetInput
from clinfl.model.backbones.loading import fit_state, load_fitted
from clinfl.typing import StateDict

ARCHITECTURE = "DenseNet-121 (torchvision densenet121().features)"
XRV_SCALE = 2048.0
"""TorchXRayVision's input is ``XRV_SCALE * x / 255 - XRV_SCALE / 2``."""
FULL_WIDTH = 1024
STRIDE_16_WIDTH = 512
_LEGACY = re.compile(r"\.(norm|relu|conv)\.([12])\.")
_IGNORED_PREFIXES = ("classifier.", "op_threshs", "fc.")


def densenet_key(key: str) -> str | None:
    """Map a DenseNet-121 key (torchvision, TorchXRayVision or CheXNet) to ``features``' name.

    None: a tensor that is not part of the features (a classifier, xrv's thresholds, a counter).
    """
    for prefix in ("module.", "densenet121.", "model."):
        key = key.removeprefix(prefix)
    if key.startswith(_IGNORED_PREFIXES) or key.endswith("num_batches_tracked"):
        return None
    return _LEGACY.sub(r".\1\2.", key.removeprefix("features."))


def densenet_batchnorm_pairs(features: nn.Module) -> list[tuple[str, str]]:
    """Every (convolution, BatchNorm right after it) pair of torchvision's DenseNet features."""
    pairs = [("conv0", "norm0")]
    for name, _ in features.named_modules():
        if name.count(".") == 1 and ".denselayer" in name:
            pairs.append((f"{name}.conv1", f"{name}.norm2"))
    return pairs


def _from_one_channel(state: StateDict) -> StateDict:
    """Convert a TorchXRayVision-style file (1-channel conv0) to the 3-channel ImageNet input.

    With ``x`` in [0, 1], xrv's conv0 sees ``q = 2048 (x - 1/2)``; this network's sees
    ``u_c = (x - m_c) / s_c`` on three channels. ``W'_c = W * 2048 s_c / 3`` gives
    ``sum_c W'_c u_c = 2048 W (x - mean(m))``, which is xrv's plus the constant
    ``2048 (1/2 - mean(m)) sum(W)`` per output channel; norm0's running mean takes it.
    """
    weight = state["conv0.weight"].to(torch.float64)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float64).view(1, 3, 1, 1)
    converted = dict(state)
    converted["conv0.weight"] = weight * XRV_SCALE * std / 3
    offset = XRV_SCALE * (0.5 - sum(IMAGENET_MEAN) / 3) * weight.sum(dim=(1, 2, 3))
    if "norm0.running_mean" in state:
        converted["norm0.running_mean"] = state["norm0.running_mean"].to(torch.float64) + offset
    return converted


class _Stride16Transition(nn.Module):
    """A transition's norm, ReLU and convolution, without its pooling."""

    def __init__(self, transition: nn.Module) -> None:
        super().__init__()
        self.norm: nn.Module = transition.get_submodule("norm")
        self.relu = nn.ReLU(inplace=False)
        self.conv: nn.Module = transition.get_submodule("conv")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result: torch.Tensor = self.conv(self.relu(self.norm(x)))
        return result


class DenseNet121Features(FeatureBackbone):
    """``[B, 1 or 3, H, W] -> [B, 1024, H/32, W/32]`` (``[B, 512, H/16, W/16]`` at stride 16).

    ``state`` holds the weights to start from (see the module's key layouts; None:
    torchvision's random initialisation). They are loaded, then BatchNorm is removed.

    Raises:
        ModelError: for a ``feature_stride`` other than 16 or 32, or (one line, naming the
            first mismatching key) weights that do not fit DenseNet-121.
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
        check_feature_stride("densenet121", feature_stride)
        features = densenet121().features
        out_of_place(features)
        if state is not None:
            renamed = {
                name: value
                for key, value in state.items()
                if (name := densenet_key(key)) is not None
            }
            conv0 = renamed.get("conv0.weight")
            if conv0 is not None and conv0.dim() == 4 and conv0.shape[1] == 1:
                renamed = _from_one_channel(renamed)
            optional = [k for k in features.state_dict() if k.endswith("num_batches_tracked")]
            fitted = fit_state(
                features,
                renamed,
                rename=lambda key: key,
                source=source,
                architecture=ARCHITECTURE,
                optional=optional,
            )
            load_fitted(features, fitted)
        normalise(features, densenet_batchnorm_pairs(features), normalisation)
        self.input = ImageNetInput()
        self.stride16 = feature_stride == 16
        if self.stride16:
            del features.denseblock4, features.norm5
            features.transition3 = _Stride16Transition(features.transition3)
        self.features = features
        self.out_dim = STRIDE_16_WIDTH if self.stride16 else FULL_WIDTH

    def blocks(self) -> list[nn.Module]:
        """The stem, then each dense block and transition; ``norm5`` joins the last block."""
        children = dict(self.features.named_children())
        stem = nn.ModuleList([children[name] for name in ("conv0", "norm0", "relu0", "pool0")])
        blocks: list[nn.Module] = [stem]
        for index in range(1, 5):
            if f"denseblock{index}" in children:
                blocks.append(children[f"denseblock{index}"])
            if f"transition{index}" in children:
                blocks.append(children[f"transition{index}"])
        if "norm5" in children:
            blocks[-1] = nn.ModuleList([blocks[-1], children["norm5"]])
        return blocks

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Return the (ReLU-activated) feature map of ImageNet-normalised ``images``."""
        return F.relu(self.features(self.input(images)))
