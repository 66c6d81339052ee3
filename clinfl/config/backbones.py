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
FEATURE_STRIDES: tuple[int, ...] = (16, 32)
"""A pretrainable backbone's output stride: 16 cuts it after its last stride-16 block, 32 keeps
the whole network. Unset, each takes its default (:data:`DEFAULT_FEATURE_STRIDE`)."""
DEFAULT_FEATURE_STRIDE: dict[str, int] = {"mobilenet_v2": 16, "densenet121": 32}
"""mobilenet_v2: 16, chosen by measurement on NIH1000 (docs/method.md, "Pretrained backbones":
at 64 px its 4x4 map of 96 channels beat the 128 px stride-32 map for an LADM head, at a fifth
of the training cost); densenet121: the whole network (not measured)."""

RESNET_BLOCKS = 9
"""ResNet-18's blocks: the stem, then two residual blocks in each of four stages."""
_PRETRAINABLE_SHAPE: dict[tuple[str, int], tuple[int, int]] = {
    # (backbone, feature_stride) -> (feature width, blocks)
    ("mobilenet_v2", 32): (1280, 19),  # stem, 17 inverted residuals, the 1x1 head conv
    ("mobilenet_v2", 16): (96, 14),  # up to the last 96-channel block (stride 16)
    ("densenet121", 32): (1024, 8),  # stem, 4 dense blocks, 3 transitions (norm5 in the last)
    ("densenet121", 16): (512, 7),  # up to transition 3 without its pooling (stride 16)
}


def resolved_feature_stride(backbone: str, feature_stride: int | None) -> int | None:
    """Return the stride a pretrainable backbone is cut at (None for ResNet-18, uncut)."""
    if backbone not in PRETRAINABLE:
        return None
    return DEFAULT_FEATURE_STRIDE[backbone] if feature_stride is None else feature_stride


def _pretrainable_shape(backbone: str, feature_stride: int | None) -> tuple[int, int]:
    """Return a pretrainable backbone's (feature width, blocks) at its stride.

    Raises:
        KeyError: for a backbone that is not pretrainable or an unsupported stride.
    """
    stride = DEFAULT_FEATURE_STRIDE[backbone] if feature_stride is None else feature_stride
    return _PRETRAINABLE_SHAPE[(backbone, stride)]


def feature_width(backbone: str, width: int, feature_stride: int | None) -> int:
    """Return the channels of the backbone's feature map: ``8 * width`` for ResNet-18.

    Raises:
        KeyError: for an unknown backbone or an unsupported stride (validation reports those).
    """
    if backbone in RESNET_VARIANTS:
        return 8 * width
    return _pretrainable_shape(backbone, feature_stride)[0]


def block_count(backbone: str, feature_stride: int | None) -> int:
    """Return how many blocks the backbone has (the most ``train_blocks`` may name).

    Raises:
        KeyError: for an unknown backbone or an unsupported stride.
    """
    if backbone in RESNET_VARIANTS:
        return RESNET_BLOCKS
    return _pretrainable_shape(backbone, feature_stride)[1]
