"""What a run configuration can know of each backbone without building it.

Each backbone's feature width (the ETF and LADM width) and its number of blocks (what
``method.train_blocks`` counts) follow from the method config alone; the networks in
:mod:`clinfl.model.backbones` are built to match (a unit test checks every one).
"""

from __future__ import annotations

RESNET_VARIANTS: tuple[str, ...] = ("auto", "standard", "small", "compact")
"""The ResNet-18 stems (``auto`` picks one by image size)."""
PRETRAINABLE: tuple[str, ...] = ("mobilenet_v2", "densenet121")
"""The torchvision feature extractors that start from pretrained weights."""
FEATURE_STRIDES: tuple[int, ...] = (16,)
"""Where a pretrainable backbone may be cut (None, the default, keeps the whole network)."""

RESNET_BLOCKS = 9
"""ResNet-18's blocks: the stem, then two residual blocks in each of four stages."""
_PRETRAINABLE_SHAPE: dict[tuple[str, int | None], tuple[int, int]] = {
    # (backbone, feature_stride) -> (feature width, blocks)
    ("mobilenet_v2", None): (1280, 19),  # stem, 17 inverted residuals, the 1x1 head conv
    ("mobilenet_v2", 16): (96, 14),  # up to the last 96-channel block (stride 16)
    ("densenet121", None): (1024, 8),  # stem, 4 dense blocks, 3 transitions (norm5 in the last)
    ("densenet121", 16): (512, 7),  # up to transition 3 without its pooling (stride 16)
}


def feature_width(backbone: str, width: int, feature_stride: int | None) -> int:
    """Return the channels of the backbone's feature map: ``8 * width`` for ResNet-18.

    Raises:
        KeyError: for an unknown backbone or an unsupported stride (validation reports those).
    """
    if backbone in RESNET_VARIANTS:
        return 8 * width
    return _PRETRAINABLE_SHAPE[(backbone, feature_stride)][0]


def block_count(backbone: str, feature_stride: int | None) -> int:
    """Return how many blocks the backbone has (the most ``train_blocks`` may name).

    Raises:
        KeyError: for an unknown backbone or an unsupported stride.
    """
    if backbone in RESNET_VARIANTS:
        return RESNET_BLOCKS
    return _PRETRAINABLE_SHAPE[(backbone, feature_stride)][1]
