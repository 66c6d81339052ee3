"""Book-keeping DP-SGD: the clipped per-sample gradient sum from one backward pass.

Bu, Wang, Zha and Karypis, "Differentially Private Optimization on Large Model at Small Cost"
(ICML 2023). Opacus' ghost clipping (``mixed-ghost``) runs two backward passes: the first gives
each layer's input ``a_i`` and output gradient ``b_i`` to its norm sampler, which turns them into
per-sample gradient norms; the second backpropagates the loss weighted by each sample's clipping
factor ``c_i`` to get ``sum_i c_i g_i``. Book-keeping keeps what the first pass already has and
forms that sum directly, layer by layer, so the second pass is not needed:

- ``nn.Conv2d`` where the mixed rule takes a ghost norm: the weight gradient of the convolution
  with each sample's output gradient scaled by ``c_i``
  (``torch.nn.grad.conv2d_weight(a, shape, b * c, ...)``); where it instantiates the per-sample
  gradient to take its norm: ``sum_i c_i G_i`` from that gradient.
- ``nn.Linear``: ``sum_i c_i b_i^T a_i`` (an einsum over samples and positions).
- ``nn.GroupNorm``, ``nn.LayerNorm`` (and any convolution clinfl's ghost norms do not take): the
  per-sample gradients Opacus' grad sampler forms, weighted by ``c_i``.

The per-sample norms and the factors ``c_i = min(1, C / (||g_i|| + 1e-6))`` are Opacus' own
(``get_clipping_coef`` of its fast-gradient-clipping module, from the norm samplers' per-layer
norms), and the parameters' ``.grad`` is then what Opacus' second pass would have left there:
the clipped sum, to which ``DPOptimizerFastGradientClipping`` adds the noise and which it scales
by the expected batch size. So the update is ``mixed-ghost``'s for the same noise.

The one backward pass also skips what nobody reads: it asks autograd only for the gradient of the
outputs of the layers that read no trainable input (the stem, the class-bias layer, LADM's query
side). Autograd then computes the gradients that flow between layers (which Opacus' hooks
read) but no parameter gradient: the book-keeping sums replace those.

Only the layer types above are covered; :func:`enable_bookkeeping` refuses a model with a
trainable parameter in any other layer rather than produce a wrong gradient for it. As in
Opacus' ghost clipping, a layer may run once per forward pass (no parameter tying).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn
from torch.nn.grad import conv2d_weight

from clinfl.errors import ModelError
from clinfl.privacy.ghost_norms import (
    NormChoice,
    NormSamples,
    conv_ghost_norm,
    ghost_norm_is_cheaper,
    layer_norm_choice,
    register_ghost_norm_samplers,
    set_norm_choice,
    unfold_conv_input,
)

COVERED_LAYERS: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.Linear, nn.GroupNorm, nn.LayerNorm)
_RECORDS = "_clinfl_bookkeeping"  # on a covered layer: its records of the current backward pass
_registered = False

Sampler = Callable[[nn.Module, list[torch.Tensor], torch.Tensor], NormSamples]


class _Record(Protocol):
    """What one layer call leaves from the backward pass: enough to form its clipped sum."""

    def parameters(self) -> list[torch.Tensor]:
        """Return the parameters the record gives a clipped sum for."""
        ...

    def clipped_sum(self, factors: torch.Tensor) -> NormSamples:
        """Return ``{parameter: sum_i c_i g_i}`` for the clipping factors ``c`` ``[n]``."""
        ...


@dataclass(frozen=True)
class _PerSample:
    """Per-sample gradients already formed (``{parameter: [n, *shape]}``)."""

    grads: NormSamples

    def parameters(self) -> list[torch.Tensor]:
        """Return the parameters with a per-sample gradient."""
        return list(self.grads)

    def clipped_sum(self, factors: torch.Tensor) -> NormSamples:
        """Return each parameter's ``sum_i c_i g_i``."""
        return {
            param: torch.einsum("n,n...->...", factors.to(grad.dtype), grad).view_as(param)
            for param, grad in self.grads.items()
        }


@dataclass(frozen=True)
class _LinearCall:
    """An ``nn.Linear`` call: its input ``[n, ..., D]`` and output gradient ``[n, ..., p]``."""

    layer: nn.Linear
    inputs: torch.Tensor
    backprops: torch.Tensor

    def parameters(self) -> list[torch.Tensor]:
        """Return the layer's trainable weight and bias."""
        return [p for p in self.layer.parameters(recurse=False) if p.requires_grad]

    def clipped_sum(self, factors: torch.Tensor) -> NormSamples:
        """Return ``sum_i c_i b_i^T a_i`` (weight) and ``sum_i c_i sum_t b_it`` (bias)."""
        n, fan_out = self.backprops.shape[0], self.backprops.shape[-1]
        scale = factors.to(self.backprops.dtype).view(n, *([1] * (self.backprops.dim() - 1)))
        scaled = (self.backprops * scale).reshape(-1, fan_out)  # [n * positions, p]
        out: NormSamples = {}
        if self.layer.weight.requires_grad:
            inputs = self.inputs.reshape(-1, self.inputs.shape[-1])
            out[self.layer.weight] = scaled.T @ inputs
        if self.layer.bias is not None and self.layer.bias.requires_grad:
            out[self.layer.bias] = scaled.sum(dim=0)
        return out


@dataclass(frozen=True)
class _ConvWeightCall:
    """An ``nn.Conv2d`` call whose weight norm was a ghost norm: input and output gradient."""

    layer: nn.Conv2d
    inputs: torch.Tensor
    backprops: torch.Tensor

    def parameters(self) -> list[torch.Tensor]:
        """Return the layer's weight (its bias is a :class:`_PerSample` record)."""
        return [self.layer.weight]

    def clipped_sum(self, factors: torch.Tensor) -> NormSamples:
        """Return the weight gradient of the output gradient scaled per sample by ``c_i``."""
        layer = self.layer
        scaled = self.backprops * factors.to(self.backprops.dtype).view(-1, 1, 1, 1)
        weight: torch.Tensor = conv2d_weight(  # type: ignore[no-untyped-call]
            self.inputs,
            layer.weight.shape,
            scaled,
            stride=layer.stride,
            padding=layer.padding,
            dilation=layer.dilation,
            groups=layer.groups,
        )
        return {layer.weight: weight}


def _stock_grads(
    layer: nn.Module, activations: list[torch.Tensor], backprops: torch.Tensor
) -> NormSamples:
    """Opacus' own per-sample gradients for ``layer`` (its registered grad sampler)."""
    from opacus.grad_sample import GradSampleModule

    sampler: Any = GradSampleModule.GRAD_SAMPLERS[type(layer)]
    grads: NormSamples = sampler(layer, activations, backprops)
    return grads


def _norms(grads: NormSamples) -> NormSamples:
    return {param: grad.flatten(1).norm(2, dim=1) for param, grad in grads.items()}


def _empty(layer: nn.Module, backprops: torch.Tensor, records: list[_Record]) -> NormSamples:
    params = [p for p in layer.parameters(recurse=False) if p.requires_grad]
    records.append(_PerSample({p: backprops.new_zeros(0, *p.shape) for p in params}))
    return {p: backprops.new_zeros(0) for p in params}


def _instantiate(
    layer: nn.Module,
    activations: list[torch.Tensor],
    backprops: torch.Tensor,
    records: list[_Record],
) -> NormSamples:
    grads = {
        p: g for p, g in _stock_grads(layer, activations, backprops).items() if p.requires_grad
    }
    records.append(_PerSample(grads))
    return _norms(grads)


def _conv2d(
    layer: nn.Conv2d,
    activations: list[torch.Tensor],
    backprops: torch.Tensor,
    records: list[_Record],
) -> NormSamples:
    """Norms as ``mixed-ghost`` takes them; keep what the clipped sum needs."""
    if layer.groups != 1 or layer.padding_mode != "zeros" or isinstance(layer.padding, str):
        return _instantiate(layer, activations, backprops, records)
    inputs = activations[0].to(backprops.dtype)
    n = inputs.shape[0]
    unfolded = unfold_conv_input(layer, inputs)  # [n, D, T]
    grads = backprops.reshape(n, backprops.shape[1], -1)  # [n, p, T]
    positions, fan_in, fan_out = grads.shape[2], unfolded.shape[1], grads.shape[1]
    choice = layer_norm_choice(layer) or "mixed"
    out: NormSamples = {}
    per_sample: NormSamples = {}
    if layer.weight.requires_grad:
        ghost = choice == "ghost" or (
            choice == "mixed" and ghost_norm_is_cheaper(positions, fan_in, fan_out)
        )
        if ghost:
            out[layer.weight] = conv_ghost_norm(unfolded, grads)
            records.append(_ConvWeightCall(layer, inputs, backprops))
        else:
            weight_grads = torch.bmm(grads, unfolded.transpose(1, 2))  # [n, p, D]
            out[layer.weight] = torch.linalg.vector_norm(weight_grads, dim=(1, 2))
            per_sample[layer.weight] = weight_grads
    if layer.bias is not None and layer.bias.requires_grad:
        per_sample[layer.bias] = grads.sum(dim=2)
        out[layer.bias] = torch.linalg.vector_norm(per_sample[layer.bias], dim=1)
    if per_sample:
        records.append(_PerSample(per_sample))
    return out


def _linear(
    layer: nn.Linear,
    activations: list[torch.Tensor],
    backprops: torch.Tensor,
    records: list[_Record],
    norm_sampler: Sampler,
) -> NormSamples:
    """Norms from Opacus' ``nn.Linear`` norm sampler; keep the input and output gradient."""
    records.append(_LinearCall(layer, activations[0].to(backprops.dtype), backprops))
    return norm_sampler(layer, activations, backprops)


def _bookkeeping_sampler(kind: type[nn.Module], previous: Sampler | None) -> Sampler:
    """Return the norm sampler for ``kind``: book-keeping for marked layers, else ``previous``."""

    def sample(layer: nn.Module, activations: list[torch.Tensor], backprops: torch.Tensor) -> Any:
        records: list[_Record] | None = getattr(layer, _RECORDS, None)
        if records is None:  # not a book-keeping model: the norms as before registration
            if previous is not None:
                return previous(layer, activations, backprops)
            return _norms(_stock_grads(layer, activations, backprops))
        if backprops.shape[0] == 0:  # an empty Poisson batch: an empty sum
            return _empty(layer, backprops, records)
        if isinstance(layer, nn.Conv2d):
            return _conv2d(layer, activations, backprops, records)
        if isinstance(layer, nn.Linear) and previous is not None:
            return _linear(layer, activations, backprops, records, previous)
        return _instantiate(layer, activations, backprops, records)

    sample.__name__ = f"bookkeeping_{kind.__name__.lower()}_norm_sample"
    return sample


def register_bookkeeping_samplers() -> None:
    """Register book-keeping norm samplers for the covered layer types with Opacus (once).

    Each wraps the norm sampler registered before it (clinfl's ghost norms for ``nn.Conv2d`` and
    ``nn.GroupNorm``, Opacus' own for ``nn.Linear``; for ``nn.LayerNorm``, which has none, the
    norm of Opacus' per-sample gradient), which layers not marked by :func:`enable_bookkeeping`
    still use: registering changes no other mode's numbers.
    """
    global _registered
    if _registered:
        return
    from opacus.grad_sample import GradSampleModuleFastGradientClipping, register_norm_sampler

    register_ghost_norm_samplers()  # first, so that it never replaces the wrappers below
    for kind in COVERED_LAYERS:
        previous = GradSampleModuleFastGradientClipping.NORM_SAMPLERS.get(kind)
        register_norm_sampler(kind)(_bookkeeping_sampler(kind, previous))
    _registered = True


def uncovered_layers(model: nn.Module) -> list[str]:
    """Return ``"name (type)"`` for every layer with a trainable parameter book-keeping lacks."""
    return [
        f"{name or 'the model'} ({type(module).__name__})"
        for name, module in model.named_modules()
        if any(p.requires_grad for p in module.parameters(recurse=False))
        and type(module) not in COVERED_LAYERS
    ]


class _ClippingModule(Protocol):
    """Opacus' fast-gradient-clipping module, as book-keeping uses it."""

    def get_clipping_coef(self) -> torch.Tensor:
        """Return each sample's clipping factor from the norms of the last backward pass."""
        ...


class BookKeeping:
    """Book-keeping for one model: roots of the backward pass and the clipped sums after it.

    Build it with :func:`enable_bookkeeping` before Opacus' ``make_private(...,
    grad_sample_mode="ghost")``; call :meth:`reset` before each forward pass and
    :meth:`backward` instead of ``loss.backward()``.
    """

    def __init__(self, layers: list[nn.Module]) -> None:
        self._layers = layers
        self._roots: list[torch.Tensor] = []
        for layer in layers:
            layer.register_forward_hook(self._capture_root)

    def _capture_root(self, layer: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        """Keep the output of a layer that reads no trainable input (where backward ends)."""
        if not (layer.training and torch.is_grad_enabled()):
            return
        if any(isinstance(x, torch.Tensor) and x.requires_grad for x in inputs):
            return
        if isinstance(output, torch.Tensor) and output.requires_grad:
            self._roots.append(output)

    def reset(self) -> None:
        """Forget the roots and records an earlier (possibly failed) step left."""
        self._roots = []
        for layer in self._layers:
            getattr(layer, _RECORDS).clear()

    def backward(self, loss: torch.Tensor, module: _ClippingModule) -> None:
        """Backpropagate ``loss`` once and set every parameter's ``.grad`` to its clipped sum.

        ``loss`` is the batch's mean per-sample loss (Opacus' ``loss_reduction="mean"``) and
        ``module`` the Opacus module wrapping the model. Afterwards each trainable parameter
        holds ``sum_i c_i g_i``, as Opacus' second ghost-clipping pass would leave it.

        Raises:
            RuntimeError: if a layer's backward hook did not run (its output does not reach
                the loss along the layers' inputs), so its clipped sum would be missing.
        """
        self.backpropagate(loss)
        self.assign_clipped_sums(module)

    def backpropagate(self, loss: torch.Tensor) -> None:
        """The one backward pass: Opacus' hooks take the norms, the samplers keep the records.

        Raises:
            RuntimeError: if a layer's backward hook did not run in the pass.
        """
        roots, self._roots = self._roots, []
        for layer in self._layers:
            getattr(layer, _RECORDS).clear()
        if roots:  # the parameters' own gradients are not asked for, so autograd skips them
            torch.autograd.grad(loss, roots, allow_unused=True)
        for layer in self._layers:
            kept = {p for record in getattr(layer, _RECORDS) for p in record.parameters()}
            for name, param in layer.named_parameters(recurse=False):
                if param.requires_grad and param not in kept:
                    raise RuntimeError(
                        f"book-keeping: no record for {type(layer).__name__}.{name}: its "
                        "backward hook did not run (does its output reach the loss?)"
                    )

    def assign_clipped_sums(self, module: _ClippingModule) -> None:
        """Set each trainable parameter's ``.grad`` to ``sum_i c_i g_i`` from the records."""
        factors = module.get_clipping_coef()  # Opacus' c_i from the norms of the pass
        for layer in self._layers:
            records: list[_Record] = getattr(layer, _RECORDS)
            sums: NormSamples = {}
            for record in records:
                for param, value in record.clipped_sum(factors).items():
                    sums[param] = value if param not in sums else sums[param] + value
            records.clear()
            for param, value in sums.items():
                param.grad = value.to(param.dtype).view_as(param)


def enable_bookkeeping(model: nn.Module, choice: NormChoice = "mixed") -> BookKeeping:
    """Prepare ``model`` for ``bookkeeping`` DP-SGD; return its :class:`BookKeeping`.

    Call it before Opacus' ``make_private(..., grad_sample_mode="ghost")``. ``choice`` is the
    convolutions' norm rule (``mixed``, as in ``mixed-ghost``; ``ghost`` or ``instantiate`` for
    tests).

    Raises:
        ModelError: if a trainable parameter sits in a layer type book-keeping does not cover
            (every such layer is named), before anything is changed.
        ValueError: for an unknown ``choice``.
    """
    missing = uncovered_layers(model)
    if missing:
        covered = ", ".join(kind.__name__ for kind in COVERED_LAYERS)
        raise ModelError(
            "--dp-mode bookkeeping cannot form the clipped gradient of "
            + ", ".join(missing)
            + f": it covers {covered} only",
            remedy="use --dp-mode mixed-ghost (or hooks) for this model",
        )
    set_norm_choice(model, choice)
    register_bookkeeping_samplers()
    layers = _trainable_layers(model.modules())
    for layer in layers:
        setattr(layer, _RECORDS, [])
    return BookKeeping(layers)


def _trainable_layers(modules: Iterable[nn.Module]) -> list[nn.Module]:
    return [m for m in modules if any(p.requires_grad for p in m.parameters(recurse=False))]
