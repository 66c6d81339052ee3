"""Turning uint8 image arrays into normalised tensors and shuffled mini-batches."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

PIXEL_MEAN = 0.5
PIXEL_STD = 0.25


def to_input_tensor(images: np.ndarray) -> torch.Tensor:
    """Return ``[N, 1, H, W]`` float32 inputs normalised from ``[N, H, W]`` uint8 images."""
    tensor = torch.from_numpy(np.ascontiguousarray(images)).to(torch.float32).unsqueeze(1)
    return (tensor / 255.0 - PIXEL_MEAN) / PIXEL_STD


def shuffled_batches(
    size: int, *, batch_size: int, generator: torch.Generator
) -> Iterator[torch.Tensor]:
    """Yield index tensors covering ``range(size)`` once in a random order, a batch at a time."""
    order = torch.randperm(size, generator=generator)
    for start in range(0, size, batch_size):
        yield order[start : start + batch_size]


def wrapped_batches(
    size: int, *, batch_size: int, steps: int, generator: torch.Generator
) -> Iterator[torch.Tensor]:
    """Yield ``steps`` index tensors of exactly ``batch_size`` rows each.

    The rows come from fresh random passes over ``range(size)``, one after another: a batch that
    runs past the end of a pass continues in the next one, so every batch is full whatever
    ``size`` is (a set smaller than a batch repeats rows within it). The work is ``steps``
    batches of ``batch_size``, whatever ``size`` is.
    """
    pending = torch.empty(0, dtype=torch.int64)
    for _ in range(steps):
        while pending.numel() < batch_size:
            pending = torch.cat((pending, torch.randperm(size, generator=generator)))
        yield pending[:batch_size]
        pending = pending[batch_size:]


def ordered_batches(size: int, *, batch_size: int) -> Iterator[slice]:
    """Yield slices covering ``range(size)`` in order (for evaluation)."""
    for start in range(0, size, batch_size):
        yield slice(start, min(start + batch_size, size))
