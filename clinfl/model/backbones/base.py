"""What every backbone is: a feature extractor with a feature width and an ordered list of blocks.

A backbone maps ``[B, 1 or 3, H, W]`` images (clinfl's normalised grayscale) to a feature map
``[B, out_dim, h, w]``. :meth:`FeatureBackbone.blocks` lists its blocks from input to output;
:func:`freeze_leading_blocks` keeps all but the last N at their initial weights.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from torch import nn

from clinfl.errors import ModelError


class FeatureBackbone(nn.Module, ABC):
    """A feature extractor: ``forward`` returns ``[B, out_dim, h, w]``."""

    out_dim: int

    @abstractmethod
    def blocks(self) -> list[nn.Module]:
        """Return the backbone's blocks in order, input first; together they hold every weight."""


def freeze_leading_blocks(backbone: FeatureBackbone, train_blocks: int | None) -> None:
    """Let only the last ``train_blocks`` blocks train (None: every block; 0: only the head).

    The earlier blocks' parameters get ``requires_grad=False``: the optimiser and DP-SGD skip
    them, and :meth:`~clinfl.algorithms.base.Algorithm.travelling_state` leaves them out.

    Raises:
        ModelError: if ``train_blocks`` is below 0 or above the number of blocks.
    """
    if train_blocks is None:
        return
    blocks = backbone.blocks()
    if not 0 <= train_blocks <= len(blocks):
        raise ModelError(
            f"train_blocks {train_blocks} does not fit a backbone of {len(blocks)} blocks",
            remedy=f"use 0 (the head only) to {len(blocks)}, or leave it unset to train the "
            "whole backbone",
        )
    for block in blocks[: len(blocks) - train_blocks]:
        for parameter in block.parameters():
            parameter.requires_grad_(False)


def check_feature_stride(architecture: str, feature_stride: int) -> None:
    """Refuse a ``feature_stride`` other than 16 or 32.

    Raises:
        ModelError: naming the architecture and the stride.
    """
    if feature_stride not in (16, 32):
        raise ModelError(
            f"feature_stride {feature_stride} is not supported by {architecture}",
            remedy="use 16 or 32",
        )


def out_of_place(module: nn.Module) -> None:
    """Make every ReLU/ReLU6 of ``module`` out-of-place (in-place ones break Opacus' hooks)."""
    for layer in module.modules():
        if isinstance(layer, (nn.ReLU, nn.ReLU6)):
            layer.inplace = False
