"""Gaussian noise for DP-SGD from a cryptographic source, and its hook into Opacus.

Opacus' own ``secure_mode`` needs ``torchcsprng``, which does not exist for current PyTorch; its
default noise comes from PyTorch's Mersenne Twister, whose outputs are predictable once enough
of them are seen. clinfl draws 53-bit uniforms from an AES-CTR DRBG keyed by the OS
(:mod:`clinfl.privacy.hazmat.drbg`) and turns them into normals with the Box-Muller transform in
float64.
"""

from __future__ import annotations

import math
import types
from typing import Any

import numpy as np
import torch

from clinfl.privacy.hazmat.drbg import random_bytes

_TWO_POW_MINUS_53 = 2.0**-53


def secure_gaussian(
    shape: torch.Size | tuple[int, ...], *, std: float, dtype: torch.dtype
) -> torch.Tensor:
    """Return a tensor of i.i.d. N(0, std^2) samples drawn from a cryptographic source.

    Raises:
        ValueError: if ``std`` is negative.
    """
    if std < 0:
        raise ValueError(f"std must be >= 0, got {std}")
    count = math.prod(shape)
    if std == 0 or count == 0:
        return torch.zeros(shape, dtype=dtype)
    pairs = (count + 1) // 2
    words = np.frombuffer(random_bytes(16 * pairs), dtype="<u8") >> np.uint64(11)  # 53 bits
    uniform = torch.from_numpy(words.view(np.int64)).to(torch.float64).mul_(_TWO_POW_MINUS_53)
    radius = torch.log1p(-uniform[:pairs]).mul_(-2.0).sqrt_()  # 1 - u is in (0, 1]
    angle = uniform[pairs:].mul_(2 * math.pi)
    normals = torch.empty(2 * pairs, dtype=torch.float64)
    torch.mul(radius, torch.cos(angle), out=normals[:pairs])
    torch.mul(radius, torch.sin(angle), out=normals[pairs:])
    return normals[:count].mul_(std).to(dtype).reshape(shape)


def use_secure_noise(optimizer: Any) -> None:
    """Make an Opacus DP optimizer draw its Gaussian noise with :func:`secure_gaussian`.

    Only this optimizer instance changes; the summed clipped gradients, the noise scale
    (``noise_multiplier * max_grad_norm``) and the accounting stay Opacus' own.
    """

    def add_noise(self: Any) -> None:
        std = (
            getattr(self, "_adjusted_noise_multiplier", self.noise_multiplier) * self.max_grad_norm
        )
        for p in self.params:
            summed = p.summed_grad
            noise = secure_gaussian(summed.shape, std=std, dtype=summed.dtype)
            p.grad = (summed + noise).view_as(p)

    optimizer.add_noise = types.MethodType(add_noise, optimizer)
