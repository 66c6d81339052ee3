"""Turning clinfl's normalised grayscale input into what ImageNet-trained weights expect.

clinfl feeds every network ``z = (x / 255 - 0.5) / 0.25`` (:mod:`clinfl.data.batching`), one
channel. ImageNet weights expect three channels ``(x / 255 - mean_c) / std_c`` with torchvision's
mean and standard deviation. :class:`ImageNetInput` computes exactly that from ``z``: a fixed
per-channel affine map with no parameters, inside the backbone, so every caller (training,
evaluation, ``clinfl model predict``) feeds the same ``z``.
"""

from __future__ import annotations

import torch
from torch import nn

from clinfl.data.batching import PIXEL_MEAN, PIXEL_STD

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


def repeat_grayscale(images: torch.Tensor) -> torch.Tensor:
    """Return 3-channel images: a 1-channel batch repeated, a 3-channel one unchanged."""
    return images.repeat(1, 3, 1, 1) if images.shape[1] == 1 else images


class ImageNetInput(nn.Module):
    """``z -> (z * PIXEL_STD + PIXEL_MEAN - mean_c) / std_c`` on 3 channels (1 is repeated)."""

    scale: torch.Tensor
    shift: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        # not persistent: fixed constants, never in a state dict, an update or a checkpoint
        self.register_buffer("scale", PIXEL_STD / std, persistent=False)
        self.register_buffer("shift", (PIXEL_MEAN - mean) / std, persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Return the ImageNet-normalised 3-channel images."""
        result: torch.Tensor = repeat_grayscale(images) * self.scale + self.shift
        return result
