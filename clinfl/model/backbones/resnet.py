"""ResNet-18 feature extractor (torchvision), DP-ready.

The residual blocks are torchvision's ``BasicBlock`` with the two in-place operations removed
(``ReLU(inplace=True)`` and ``out += identity``), which crash Opacus' per-sample-gradient hooks.
Weight names are unchanged, so a local torchvision ResNet-18 weights file loads directly
(:func:`load_resnet18_weights`). Its input is clinfl's normalised grayscale, repeated to three
channels; no ImageNet normalisation is applied (as before pretrained backbones existed).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Literal

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, ResNet

from clinfl.config.run import WIDTHS
from clinfl.errors import ModelError
from clinfl.model.backbones.base import FeatureBackbone
from clinfl.model.backbones.inputs import repeat_grayscale
from clinfl.model.backbones.loading import fit_state, load_fitted, read_state_dict

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


class ResNet18Features(FeatureBackbone):
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

        self.norm = norm
        self.description = f"ResNet-18 ({stem} stem, width {width}, {norm} norm)"

    def blocks(self) -> list[nn.Module]:
        """The stem (``conv1`` and ``bn1``), then each residual block of the four stages."""
        stem = nn.ModuleList([self.conv1, self.bn1])
        return [stem, *self.layer1, *self.layer2, *self.layer3, *self.layer4]

    def batchnorm_pairs(self) -> list[tuple[str, str]]:
        """Every (convolution, BatchNorm after it) pair, for :func:`fold_batchnorms`."""
        pairs = [("conv1", "bn1")]
        for stage in ("layer1", "layer2", "layer3", "layer4"):
            for index, block in enumerate(getattr(self, stage)):
                name = f"{stage}.{index}"
                pairs += [(f"{name}.conv1", f"{name}.bn1"), (f"{name}.conv2", f"{name}.bn2")]
                if block.downsample is not None:
                    pairs.append((f"{name}.downsample.0", f"{name}.downsample.1"))
        return pairs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the last stage's feature map; grayscale input is repeated to 3 channels."""
        x = repeat_grayscale(x)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        features: torch.Tensor = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return features


def load_resnet18_weights(backbone: ResNet18Features, path: Path) -> None:
    """Load a torchvision ResNet-18 weights file into ``backbone``.

    The classification head (``fc.*``) is ignored, and so are BatchNorm running statistics
    when the backbone uses GroupNorm (its affine weights take the BatchNorm's).

    Raises:
        ModelError: if the file is missing or unreadable, or (one line, naming the first
            mismatching key) its tensors do not fit this ResNet-18.
    """

    def rename(key: str) -> str | None:
        key = key.removeprefix("module.")
        if key.startswith("fc.") or key.endswith("num_batches_tracked"):
            return None
        if backbone.norm == "group" and key.endswith(("running_mean", "running_var")):
            return None
        return key

    optional = [k for k in backbone.state_dict() if k.endswith("num_batches_tracked")]
    state = fit_state(
        backbone,
        read_state_dict(path),
        rename=rename,
        source=path.name,
        architecture=backbone.description,
        optional=optional,
    )
    load_fitted(backbone, state)
