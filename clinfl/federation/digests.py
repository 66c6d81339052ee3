"""Hashes of what a site receives for a round: the global model and the round's settings.

A site binds both into its signed advertisement (SECAGG.md, "Version 2", R1), so a coordinator
that sends one site another model or other settings than the rest is caught by every site.
"""

from __future__ import annotations

import numpy as np
import torch

from clinfl.federation.messages import RoundSettings
from clinfl.secagg.settings import RoundParameters
from clinfl.secagg.transcript import model_hash, settings_hash
from clinfl.typing import StateDict


def state_digest(state: StateDict) -> bytes:
    """Return the hash of every named tensor of ``state`` (name, dtype, shape and bytes)."""
    items = []
    for name, tensor in state.items():
        array = np.ascontiguousarray(tensor.detach().cpu().numpy())
        items.append((name, array.tobytes(), str(array.dtype), tuple(array.shape)))
    return model_hash(items)


def canonical_state_digest(state: StateDict) -> bytes:
    """Return the hash of ``state`` with equal values encoded alike (``-0.0`` as ``0.0``).

    Two models that train identically must have one hash where a site asks whether it already
    trained a model (R10): a coordinator cannot make a model look new by flipping the sign of a
    zero. (NaNs are all one value here; a model with NaNs fails training anyway.)
    """
    items = []
    for name, tensor in state.items():
        value = tensor.detach().cpu()
        if value.is_floating_point():
            value = torch.nan_to_num(value + 0.0, nan=0.0)  # -0.0 + 0.0 is 0.0
        array = np.ascontiguousarray(value.numpy())
        items.append((name, array.tobytes(), str(array.dtype), tuple(array.shape)))
    return model_hash(items)


def round_settings_digest(settings: RoundSettings) -> bytes:
    """Return the hash of a round's training settings."""
    return settings_hash(
        round_id=settings.round,
        local_epochs=settings.local_epochs,
        batch_size=settings.batch_size,
        lr=settings.lr,
        local_steps=settings.local_steps,
    )


def round_parameters_digest(params: RoundParameters, settings: RoundSettings) -> bytes:
    """Return the hash of a round's protocol parameters together with its training settings."""
    return params.bound_to(round_settings_digest(settings))
