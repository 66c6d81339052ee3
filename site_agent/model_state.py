"""Loading a global state into a site's model in place (so optimiser state stays valid)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from clinfl.algorithms.base import is_auxiliary
from clinfl.errors import FederationError


def load_travelling_state(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Copy ``state`` into the matching parameters and buffers of ``model`` in place.

    Auxiliary algorithm entries (``aux/...``) are not model tensors and are skipped.

    Raises:
        FederationError: if ``state`` names a tensor the model lacks or has a different shape.
    """
    own = dict(model.named_parameters()) | dict(model.named_buffers())
    state = {name: value for name, value in state.items() if not is_auxiliary(name)}
    unknown = sorted(set(state) - set(own))
    if unknown:
        raise FederationError(
            f"global state holds tensors this model lacks: {', '.join(unknown[:5])}",
            remedy="make sure every site runs the same method and clinfl version",
        )
    with torch.no_grad():
        for name, value in state.items():
            target = own[name]
            if target.shape != value.shape:
                raise FederationError(
                    f"tensor {name} has shape {tuple(value.shape)}, expected {tuple(target.shape)}",
                    remedy="make sure every site runs the same method and image size",
                )
            target.copy_(value)
