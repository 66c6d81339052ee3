"""ResNet-18 feature extractor (torchvision), DP-ready.

The residual blocks are torchvision's ``BasicBlock`` with the two in-place operations removed
(``ReLU(inplace=True)`` and ``out += identity``), which crash Opacus' per-sample-gradient hooks.
Weight names are unchanged, so a local torchvision ResNet-18 weights file loads directly.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import load_file
from torch import nn
from torchvision.models.resnet import BasicBlock, ResNet

from clinfl.config.run import WIDTHS
from clinfl.errors import ModelError

FEATURE_DIM = 512
"""The feature width of the full ResNet-18 (base width 64): ``8 * width`` in general."""
FULL_WIDTH = 64
NormKind = Literal["group", "batch"]
StemKind = Literal["standard", "small", "compact"]
STEMS: tuple[StemKind, ...] = ("standard", "small", "compact")


class SafeBasicBlock(BasicBlock):  # type: ignore[misc]
    """torchvision's ``BasicBlock`` with no in-place operations."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.relu = nn.ReLU(inplace=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply conv-norm-relu-conv-norm, add the (projected) identity, then ReLU."""
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        result: torch.Tensor = self.relu(out + identity)
        return result


def _group_norm(channels: int) -> nn.GroupNorm:
    """A plain ``nn.GroupNorm`` (32 groups, fewer for narrow layers).

    Plain, not a subclass: Opacus finds a layer's per-sample-gradient and norm samplers by its
    exact type, and falls back to much slower functorch for a subclass.
    """
    return nn.GroupNorm(min(32, channels), channels)


def _norm_layer(kind: NormKind) -> Callable[[int], nn.Module] | None:
    if kind == "batch":
        return None  # torchvision's default BatchNorm2d
    return _group_norm


class ResNet18Features(nn.Module):
    """ResNet-18 up to its last residual stage: ``[B, 3 or 1, H, W] -> [B, 8 * width, h, w]``.

    ``stem`` picks the input end:

    - ``standard``: torchvision's 7x7 stride-2 stem with max-pool (total stride 32; 224 px gives
      the paper's 7x7 map);
    - ``small``: a 3x3 stride-1 stem, no max-pool, for 16-64 px inputs (total stride 8: 32 px
      gives a 4x4 map, 64 px 8x8);
    - ``compact``: a 3x3 stride-2 stem, no max-pool, and ``layer4`` unstrided: the same total
      stride and map as ``small`` with the first three stages at half the resolution, for about
      a third of ``small``'s compute (clinfl's CPU-sized variant; ``docs/method.md``).

    ``width`` is the base
    width: 64 (the default) is torchvision's ResNet-18 with 512 output features; 8, 16 or 32
    scale every stage alike (64, 128 or 256 output features, about 1/64, 1/16 or 1/4 of the
    parameters).

    Raises:
        ModelError: for a width other than 8, 16, 32 or 64, or an unknown stem.
    """

    def __init__(
        self, *, stem: StemKind, norm: NormKind = "group", width: int = FULL_WIDTH
    ) -> None:
        super().__init__()
        if stem not in STEMS:
            raise ModelError(
                f"backbone stem {stem!r} is not supported", remedy=f"use one of {', '.join(STEMS)}"
            )
        if width not in WIDTHS:
            raise ModelError(
                f"backbone width {width} is not supported",
                remedy=f"use one of {', '.join(map(str, WIDTHS))} (64 is the full ResNet-18)",
            )
        net = ResNet(SafeBasicBlock, [2, 2, 2, 2], norm_layer=_norm_layer(norm))
        if width != FULL_WIDTH:  # rebuild every stage at the scaled width (same tensor names)
            norm_layer = net._norm_layer
            net.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
            net.bn1 = norm_layer(width)
            net.inplanes = width
            net.layer1 = net._make_layer(SafeBasicBlock, width, 2)
            net.layer2 = net._make_layer(SafeBasicBlock, 2 * width, 2, stride=2)
            net.layer3 = net._make_layer(SafeBasicBlock, 4 * width, 2, stride=2)
            net.layer4 = net._make_layer(SafeBasicBlock, 8 * width, 2, stride=2)
            for module in net.modules():  # torchvision's own initialisation of the new layers
                if isinstance(module, nn.Conv2d):
                    nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        if stem != "standard":
            stride = 2 if stem == "compact" else 1
            net.conv1 = nn.Conv2d(3, width, kernel_size=3, stride=stride, padding=1, bias=False)
            net.maxpool = nn.Identity()
        if stem == "compact":  # the stem takes layer4's stride: same map, same weights' shapes
            first = net.layer4[0]
            first.conv1.stride = (1, 1)
            first.downsample[0].stride = (1, 1)
        self.conv1 = net.conv1
        self.bn1 = net.bn1
        self.relu = nn.ReLU(inplace=False)
        self.maxpool = net.maxpool
        self.layer1 = net.layer1
        self.layer2 = net.layer2
        self.layer3 = net.layer3
        self.layer4 = net.layer4
        self.out_dim = 8 * width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the last stage's feature map; grayscale input is repeated to 3 channels."""
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        features: torch.Tensor = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return features


def load_backbone_weights(backbone: ResNet18Features, path: Path) -> list[str]:
    """Load a local torchvision ResNet-18 weights file (``.safetensors`` or ``.pt``/``.pth``).

    The classification head (``fc.*``) is ignored, and so are BatchNorm running statistics when the
    backbone uses GroupNorm. Files are read with ``weights_only=True``; nothing is unpickled.
    Returns the names of backbone tensors the file did not provide.

    Raises:
        ModelError: if the file is missing, unreadable, or its tensors do not fit ResNet-18.
    """
    if not path.is_file():
        raise ModelError(f"weights file {path} does not exist", remedy="give an existing file")
    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelError(
            f"cannot read weights file {path}: {exc}",
            remedy="give a torchvision ResNet-18 state dict saved as .safetensors or .pt",
        ) from exc
    if not isinstance(state, dict):
        raise ModelError(f"{path} does not hold a state dict", remedy="save model.state_dict()")
    own = backbone.state_dict()
    usable = {k: v for k, v in state.items() if k in own and isinstance(v, torch.Tensor)}
    bad = [k for k, v in usable.items() if v.shape != own[k].shape]
    if bad:
        raise ModelError(
            f"weights file {path} has tensors of the wrong shape: {', '.join(sorted(bad)[:5])}",
            remedy="use ResNet-18 weights; with --backbone small the 7x7 stem cannot load, "
            "use --backbone standard",
        )
    if not usable:
        raise ModelError(f"{path} holds no ResNet-18 tensors", remedy="check the file")
    backbone.load_state_dict(usable, strict=False)
    return sorted(set(own) - set(usable))
