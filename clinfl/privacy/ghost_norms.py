"""Per-sample gradient norms for ``nn.Conv2d`` and ``nn.GroupNorm`` for Opacus' ghost clipping.

Opacus 1.6's fast-gradient-clipping path ("ghost clipping") asks a layer's *norm sampler* for
each sample's gradient norm and only then computes the clipped sum, by a second backward pass
whose loss is weighted by each sample's clipping factor. It ships norm samplers for
``nn.Linear`` and ``nn.Embedding`` only, so every other layer instantiates its per-sample
gradients (``batch x parameters``) just to take their norms.

This module registers norm samplers (``opacus.grad_sample.register_norm_sampler``) for:

- ``nn.Conv2d``: the ghost norm of Bu et al., "Scalable and Efficient Training of Large
  Convolutional Neural Networks with Differential Privacy" (NeurIPS 2022). With sample ``i``'s
  unfolded input ``A_i`` (``D x T``: ``D = C_in k_h k_w`` values at ``T`` output positions) and
  output gradient ``B_i`` (``p x T``), the weight gradient is ``B_i A_i^T`` and
  ``||B_i A_i^T||_F^2 = <A_i^T A_i, B_i^T B_i>``: two ``T x T`` Gram matrices, cost
  ``T^2 (D + p)``, against ``T D p`` to instantiate the gradient. The *mixed* choice (Bu et al.'s
  "mixed ghost clipping") takes, per layer and per call, whichever costs less for the shapes it
  sees: ghost norms where the map is small and the layer wide (ResNet's late stages),
  instantiation where the map is large (the stem and first stages).
- ``nn.GroupNorm``: its per-sample gradient has only ``2 C`` entries, computed in ``O(T C)``,
  which is always cheaper than a ghost norm (``O(T^2 C)``), so it is instantiated and its norm
  taken, without Opacus' generic per-sample-gradient bookkeeping.

Which rule a layer follows is an attribute set by :func:`enable_mixed_ghost` (``mixed``) or
:func:`set_norm_choice` (``ghost`` or ``instantiate``, for tests). A layer without the attribute
behaves as in stock Opacus: its per-sample gradient is built by Opacus' own grad sampler and its
norm taken. So plain ``ghost`` mode keeps Opacus' behaviour, and ``mixed-ghost`` is the model
with :func:`enable_mixed_ghost` applied. Registration changes no numbers: every rule gives the
same norm up to rounding.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from clinfl.errors import InternalError

NormChoice = Literal["mixed", "ghost", "instantiate"]
NORM_CHOICES: tuple[NormChoice, ...] = ("mixed", "ghost", "instantiate")
_ATTRIBUTE = "_clinfl_norm_choice"
_registered = False
_GRAM_BLOCK_VALUES = 1 << 22  # values per block of the ghost norm's Gram matrices (32 MB in fp64)

NormSamples = dict[torch.Tensor, torch.Tensor]  # parameter -> per-sample norms [n]


def ghost_norm_is_cheaper(positions: int, fan_in: int, fan_out: int) -> bool:
    """Return True when a ghost norm costs less than an instantiated per-sample gradient.

    Ghost norm: ``T^2 (D + p)`` multiply-adds per sample; instantiation: ``T D p``. ``positions``
    is ``T`` (output positions), ``fan_in`` ``D`` and ``fan_out`` ``p``.
    """
    return positions * (fan_in + fan_out) < fan_in * fan_out


def layer_norm_choice(layer: nn.Module) -> NormChoice | None:
    """Return the norm rule set on ``layer``, or None where stock Opacus applies."""
    choice: NormChoice | None = getattr(layer, _ATTRIBUTE, None)
    return choice


def unfold_conv_input(layer: nn.Conv2d, inputs: torch.Tensor) -> torch.Tensor:
    """Return the unfolded input ``[n, D, T]`` (zero padding, any stride and dilation)."""
    from opacus.utils.tensor_utils import unfold2d

    unfolded: torch.Tensor = unfold2d(
        inputs,
        kernel_size=layer.kernel_size,
        padding=layer.padding,
        stride=layer.stride,
        dilation=layer.dilation,
    )
    return unfolded


def _stock_norms(
    layer: nn.Module, activations: list[torch.Tensor], backprops: torch.Tensor
) -> NormSamples:
    """Opacus' own per-sample gradients for ``layer``, reduced to their norms."""
    from opacus.grad_sample import GradSampleModule

    sampler: Any = GradSampleModule.GRAD_SAMPLERS[type(layer)]
    grads: NormSamples = sampler(layer, activations, backprops)
    return {param: grad.flatten(1).norm(2, dim=1) for param, grad in grads.items()}


def conv_ghost_norm(unfolded: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """Return ``||B_i A_i^T||_F`` for each sample from ``A`` ``[n, D, T]`` and ``B`` ``[n, p, T]``.

    ``<A_i^T A_i, B_i^T B_i>``, built a block of rows of the ``T x T`` Gram matrices at a time,
    so memory stays at ``n x block x T`` values however large ``T`` is.
    """
    n, _, positions = unfolded.shape
    block = max(1, _GRAM_BLOCK_VALUES // max(1, n * positions))
    squared = unfolded.new_zeros(n)
    a_rows, b_rows = unfolded.transpose(1, 2), grads.transpose(1, 2)  # [n, T, D], [n, T, p]
    for start in range(0, positions, block):
        rows = slice(start, start + block)
        gram_a = torch.bmm(a_rows[:, rows], unfolded)  # [n, block, T]
        gram_b = torch.bmm(b_rows[:, rows], grads)
        squared += (gram_a * gram_b).sum(dim=(1, 2))
    return squared.clamp(min=0).sqrt()


def conv2d_norm_sample(
    layer: nn.Conv2d, activations: list[torch.Tensor], backprops: torch.Tensor
) -> NormSamples:
    """Return each sample's gradient norm for the weight (and bias) of ``layer``: ``{p: [n]}``.

    ``activations[0]`` is the layer's input ``[n, C_in, H, W]``, ``backprops`` the gradient of
    the loss with respect to its output ``[n, C_out, H', W']``, as Opacus' hooks pass them.
    Layers that are not marked, grouped convolutions and non-zero padding modes take Opacus'
    own per-sample gradients.

    Raises:
        KeyError: if Opacus has no grad sampler for ``nn.Conv2d`` (never with Opacus 1.6).
    """
    choice = layer_norm_choice(layer)
    simple = layer.groups == 1 and layer.padding_mode == "zeros"
    if choice is None or not simple:
        norms: NormSamples = _stock_norms(layer, activations, backprops)
        return norms
    inputs = activations[0].to(backprops.dtype)
    n = inputs.shape[0]
    out: NormSamples = {}
    if n == 0:  # an empty Poisson batch
        empty = backprops.new_zeros(0)
        out[layer.weight] = empty
        if layer.bias is not None and layer.bias.requires_grad:
            out[layer.bias] = empty
        return out
    unfolded = unfold_conv_input(layer, inputs)  # [n, D, T]
    grads = backprops.reshape(n, backprops.shape[1], -1)  # [n, p, T]
    positions, fan_in, fan_out = grads.shape[2], unfolded.shape[1], grads.shape[1]
    if layer.weight.requires_grad:
        ghost = choice == "ghost" or (
            choice == "mixed" and ghost_norm_is_cheaper(positions, fan_in, fan_out)
        )
        if ghost:
            out[layer.weight] = conv_ghost_norm(unfolded, grads)
        else:
            per_sample = torch.bmm(grads, unfolded.transpose(1, 2))  # [n, p, D]
            out[layer.weight] = torch.linalg.vector_norm(per_sample, dim=(1, 2))
    if layer.bias is not None and layer.bias.requires_grad:
        out[layer.bias] = torch.linalg.vector_norm(grads.sum(dim=2), dim=1)
    return out


def group_norm_norm_sample(
    layer: nn.GroupNorm, activations: list[torch.Tensor], backprops: torch.Tensor
) -> NormSamples:
    """Return each sample's gradient norm for the affine weight and bias of ``layer``.

    The per-sample gradients are ``sum_t norm(x)_t * g_t`` and ``sum_t g_t`` per channel
    (``[n, C]`` each), so they are computed and their norms taken.
    """
    inputs = activations[0].to(backprops.dtype)
    out: NormSamples = {}
    if layer.weight is not None and layer.weight.requires_grad:
        normalised = F.group_norm(inputs, layer.num_groups, eps=layer.eps)
        weight_grads = (normalised * backprops).flatten(2).sum(dim=2)
        out[layer.weight] = torch.linalg.vector_norm(weight_grads, dim=1)
    if layer.bias is not None and layer.bias.requires_grad:
        out[layer.bias] = torch.linalg.vector_norm(backprops.flatten(2).sum(dim=2), dim=1)
    return out


def register_ghost_norm_samplers() -> None:
    """Register the ``nn.Conv2d`` and ``nn.GroupNorm`` norm samplers with Opacus (once).

    Unmarked layers keep Opacus' own behaviour, so registering changes no mode's numbers.
    """
    global _registered
    if _registered:
        return
    from opacus.grad_sample import register_norm_sampler

    register_norm_sampler(nn.Conv2d)(conv2d_norm_sample)
    register_norm_sampler(nn.GroupNorm)(group_norm_norm_sample)
    _registered = True


def set_norm_choice(model: nn.Module, choice: NormChoice) -> list[str]:
    """Mark every ``nn.Conv2d`` of ``model`` to use ``choice``; return the marked layers' names.

    Also registers the norm samplers. ``mixed`` picks the cheaper of ghost norm and
    instantiation for each call's shapes; ``ghost`` and ``instantiate`` force one (for tests
    and profiles).

    Raises:
        ValueError: for an unknown choice.
    """
    if choice not in NORM_CHOICES:
        raise ValueError(f"unknown norm choice {choice!r}: use one of {', '.join(NORM_CHOICES)}")
    register_ghost_norm_samplers()
    marked = []
    for name, module in model.named_modules():
        if type(module) is nn.Conv2d:
            setattr(module, _ATTRIBUTE, choice)
            marked.append(name)
    return marked


def enable_mixed_ghost(model: nn.Module) -> list[str]:
    """Prepare ``model`` for ``mixed-ghost`` DP-SGD: mixed ghost norms on every convolution.

    Call it before Opacus' ``make_private(..., grad_sample_mode="ghost")``. Returns the names of
    the convolutions that now choose per call.

    Raises:
        ValueError: never for the built-in choice (see :func:`set_norm_choice`).
    """
    return set_norm_choice(model, "mixed")


def layer_choices(model: nn.Module, image_size: int, channels: int = 3) -> list[tuple[str, str]]:
    """Return ``(layer name, "ghost" or "instantiate")`` for every convolution at ``image_size``.

    A dry forward pass of one blank image records each convolution's output positions; the rule
    is :func:`ghost_norm_is_cheaper`. For reports and benchmarks.
    """
    shapes: dict[str, tuple[int, int, int]] = {}
    handles = []
    for name, module in model.named_modules():
        if type(module) is nn.Conv2d:

            def record(
                layer: nn.Module, _inputs: object, output: torch.Tensor, name: str = name
            ) -> None:
                if not isinstance(layer, nn.Conv2d):
                    raise InternalError(f"{name} is not a Conv2d")
                kernel = layer.kernel_size[0] * layer.kernel_size[1]
                fan_in = layer.in_channels // layer.groups * kernel
                shapes[name] = (output.shape[2] * output.shape[3], fan_in, layer.out_channels)

            handles.append(module.register_forward_hook(record))
    try:
        parameter = next(model.parameters())
        with torch.no_grad():
            model(torch.zeros(1, channels, image_size, image_size, dtype=parameter.dtype))
    finally:
        for handle in handles:
            handle.remove()
    return [
        (name, "ghost" if ghost_norm_is_cheaper(*shape) else "instantiate")
        for name, shape in shapes.items()
    ]
