"""Augmentation multiplicity (De et al. 2022): K randomly translated views of every sample.

With ``federation.augment_multiplicity = K > 1`` a site trains each batch of B samples as B x K
views: every view is its sample translated by a random offset of up to :func:`max_shift` pixels
in each direction (edge-replicating padding, then a crop back to the image size; no flips, which
would change a chest X-ray's anatomy). Without DP-SGD the loss is the mean over the views. Under
DP-SGD each sample's per-sample gradient is the mean of its K views' gradients, formed before
per-sample clipping (:func:`average_view_gradients`), so a sample still contributes one clipped
gradient and the privacy charge is that of K = 1. A step costs about K times as much.

The offsets come from a generator the caller seeds from its injected random source (fresh
operating-system randomness per round at a deployed site); nothing here touches global RNG state.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from torch.nn import functional

SHIFT_DIVISOR = 8
"""The largest translation is ``size // SHIFT_DIVISOR`` px per axis (at least 1): De et al.'s
4 px pad-and-crop at 32 px; 2 px at 16 px, 28 px at 224 px."""


def max_shift(height: int, width: int) -> int:
    """Return the largest translation, in px, of an image of ``height`` x ``width``."""
    return max(1, min(height, width) // SHIFT_DIVISOR)


def translated_views(images: torch.Tensor, views: int, generator: torch.Generator) -> torch.Tensor:
    """Return ``views`` randomly translated copies of each image, a sample's views adjacent.

    ``images`` is ``[B, C, H, W]``; the result is ``[B * views, C, H, W]`` with rows
    ``b * views .. b * views + views - 1`` the views of sample ``b``. Each view is shifted by an
    independent offset in ``[-s, s]`` px per axis (``s`` = :func:`max_shift`), drawn from
    ``generator`` (a CPU generator), the uncovered border replicating the edge pixels.
    """
    repeated = images.repeat_interleave(views, dim=0)
    count, _, height, width = repeated.shape
    if count == 0:  # an empty Poisson batch
        return repeated
    shift = max_shift(height, width)
    padded = functional.pad(repeated, (shift, shift, shift, shift), mode="replicate")
    offsets = torch.randint(0, 2 * shift + 1, (count, 2), generator=generator)
    offsets = offsets.to(images.device)
    rows = offsets[:, :1] + torch.arange(height, device=images.device)  # [N, H]
    cols = offsets[:, 1:] + torch.arange(width, device=images.device)  # [N, W]
    which = torch.arange(count, device=images.device)[:, None, None]
    cropped = padded.permute(0, 2, 3, 1)[which, rows[:, :, None], cols[:, None, :]]  # [N, H, W, C]
    return cropped.permute(0, 3, 1, 2).contiguous()


def view_batch(
    images: torch.Tensor, targets: torch.Tensor, views: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the batch as ``views`` translated views per sample, each with its sample's targets."""
    return (
        translated_views(images, views, generator),
        targets.repeat_interleave(views, dim=0),
    )


def average_view_gradients(params: Iterable[nn.Parameter], views: int) -> None:
    """Replace each parameter's per-view gradients by their mean over each sample's views.

    ``p.grad_sample`` (Opacus' per-sample gradients, ``[B * views, ...]`` after a forward pass
    of :func:`translated_views`) becomes ``[B, ...]``: what Opacus' optimiser then clips is one
    gradient per sample. Parameters without per-sample gradients (frozen ones) are left alone.

    Raises:
        ValueError: if a parameter's per-sample gradients are not a whole number of samples'
            views.
    """
    for param in params:
        grads = getattr(param, "grad_sample", None)
        if grads is None:
            continue
        flat = torch.cat(grads, dim=0) if isinstance(grads, list) else grads
        if flat.shape[0] % views:
            raise ValueError(
                f"{flat.shape[0]} per-sample gradients are not a whole number of {views} views"
            )
        param.grad_sample = flat.view(-1, views, *flat.shape[1:]).mean(dim=1)  # type: ignore[attr-defined]
