"""Removing BatchNorm from a pretrained network without changing what it computes (eval mode).

Opacus cannot train BatchNorm (a sample's output would depend on the rest of its batch), so
every pretrained backbone is built BatchNorm-free, for private and non-private runs alike:

- a BatchNorm right after a convolution is folded into it: with ``s = gamma / sqrt(var + eps)``
  the convolution's weight becomes ``W * s`` (per output channel) and its bias
  ``(b - mean) * s + beta``; the BatchNorm becomes ``nn.Identity``;
- a BatchNorm that follows no convolution (DenseNet's pre-activation norms) becomes the same
  per-channel affine map as a depthwise 1x1 ``nn.Conv2d`` with a bias (``groups=C``), a layer
  Opacus computes per-sample gradients for.

Both use the running statistics: the folded network equals the original in eval mode.
"""

from __future__ import annotations

import itertools
import math
from typing import Literal

import torch
from torch import nn

from clinfl.errors import InternalError

Normalisation = Literal["folded", "group"]
"""What a pretrainable backbone does with its BatchNorm: ``folded`` into the weights it starts
from (:func:`fold_batchnorms`), or ``group``: replaced by GroupNorm for a random start
(:func:`group_normalise`)."""


def _scale_and_shift(norm: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(s, beta - mean * s)``: the norm's eval-mode map is ``x * s + shift``."""
    if norm.running_mean is None or norm.running_var is None:
        raise InternalError("a BatchNorm to fold keeps no running statistics")
    mean, var = norm.running_mean.detach(), norm.running_var.detach()
    gamma = norm.weight.detach() if norm.weight is not None else torch.ones_like(mean)
    beta = norm.bias.detach() if norm.bias is not None else torch.zeros_like(mean)
    scale = gamma / torch.sqrt(var + norm.eps)
    return scale, beta - mean * scale


def fold_into_conv(conv: nn.Conv2d, norm: nn.BatchNorm2d) -> None:
    """Fold ``norm`` (which must follow ``conv`` directly) into ``conv``, in place.

    ``conv`` gains a bias if it had none. The caller replaces ``norm`` by ``nn.Identity``.
    """
    scale, shift = _scale_and_shift(norm)
    with torch.no_grad():
        bias = conv.bias.detach() if conv.bias is not None else torch.zeros_like(shift)
        conv.weight.mul_(scale.to(conv.weight.dtype).view(-1, 1, 1, 1))
        folded = (bias * scale + shift).to(conv.weight.dtype)
        if conv.bias is None:
            conv.bias = nn.Parameter(folded)
        else:
            conv.bias.copy_(folded)


def channel_affine(norm: nn.BatchNorm2d) -> nn.Conv2d:
    """Return a depthwise 1x1 convolution equal to ``norm`` in eval mode."""
    scale, shift = _scale_and_shift(norm)
    channels = norm.num_features
    layer = nn.Conv2d(channels, channels, kernel_size=1, groups=channels, bias=True)
    layer = layer.to(device=scale.device, dtype=scale.dtype)
    with torch.no_grad():
        layer.weight.copy_(scale.view(-1, 1, 1, 1))
        if layer.bias is None:
            raise InternalError("the affine convolution was built without a bias")
        layer.bias.copy_(shift)
    return layer


def _parent(root: nn.Module, name: str) -> tuple[nn.Module, str]:
    path, _, leaf = name.rpartition(".")
    return (root.get_submodule(path) if path else root), leaf


def fold_batchnorms(root: nn.Module, pairs: list[tuple[str, str]]) -> None:
    """Remove every ``nn.BatchNorm2d`` of ``root``, in place, keeping its eval-mode function.

    ``pairs`` names each (convolution, BatchNorm) where the BatchNorm directly follows the
    convolution (names relative to ``root``): those are folded. Every other BatchNorm becomes
    a :func:`channel_affine` layer.

    Raises:
        ValueError: if a pair does not name a ``Conv2d`` and a ``BatchNorm2d``.
    """
    for conv_name, norm_name in pairs:
        conv, norm = root.get_submodule(conv_name), root.get_submodule(norm_name)
        if not isinstance(conv, nn.Conv2d) or not isinstance(norm, nn.BatchNorm2d):
            raise ValueError(f"{conv_name} -> {norm_name} is not a Conv2d -> BatchNorm2d pair")
        fold_into_conv(conv, norm)
        parent, leaf = _parent(root, norm_name)
        setattr(parent, leaf, nn.Identity())
    remaining = [
        name for name, module in root.named_modules() if isinstance(module, nn.BatchNorm2d)
    ]
    for name in remaining:
        norm = root.get_submodule(name)
        if not isinstance(norm, nn.BatchNorm2d):
            raise InternalError(f"{name} is no longer a BatchNorm2d")
        parent, leaf = _parent(root, name)
        setattr(parent, leaf, channel_affine(norm))


def sequential_pairs(root: nn.Module) -> list[tuple[str, str]]:
    """Return every (Conv2d, BatchNorm2d) pair adjacent in an ``nn.Sequential`` of ``root``."""
    pairs: list[tuple[str, str]] = []
    for name, module in root.named_modules():
        if not isinstance(module, nn.Sequential):
            continue
        children = list(module.named_children())
        for (first, a), (second, b) in itertools.pairwise(children):
            if isinstance(a, nn.Conv2d) and isinstance(b, nn.BatchNorm2d):
                prefix = f"{name}." if name else ""
                pairs.append((prefix + first, prefix + second))
    return pairs


def group_normalise(root: nn.Module) -> None:
    """Replace every ``nn.BatchNorm2d`` of ``root`` by a fresh ``nn.GroupNorm``, in place.

    For a network that starts from random weights: folding untrained BatchNorm would leave it
    with no normalisation at all (identity statistics), which a deep network cannot train
    without. GroupNorm normalises each sample on its own, so it works under DP-SGD. The group
    count is the largest divisor of the channel count up to 32.
    """
    for name, module in list(root.named_modules()):
        if isinstance(module, nn.BatchNorm2d):
            channels = module.num_features
            groups = math.gcd(32, channels)
            parent, leaf = _parent(root, name)
            setattr(parent, leaf, nn.GroupNorm(groups, channels))


def normalise(root: nn.Module, pairs: list[tuple[str, str]], normalisation: Normalisation) -> None:
    """Fold ``root``'s BatchNorm (``pairs``: see :func:`fold_batchnorms`) or swap in GroupNorm."""
    if normalisation == "folded":
        fold_batchnorms(root, pairs)
    else:
        group_normalise(root)
