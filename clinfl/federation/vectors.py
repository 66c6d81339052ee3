"""Flattening a state dict into one float64 vector and back, in a fixed (sorted) tensor order.

Secure aggregation masks one flat vector; both ends use the global state as the template, so
the order and shapes are agreed without sending them.
"""

from __future__ import annotations

import numpy as np
import torch

from clinfl.errors import FederationError
from clinfl.typing import StateDict


def vector_length(template: StateDict) -> int:
    """Return the number of values in ``template``."""
    return sum(int(value.numel()) for value in template.values())


def flatten_state(state: StateDict, *, template: StateDict) -> np.ndarray:
    """Return ``state``'s tensors, in ``template``'s sorted order, as one float64 vector.

    Raises:
        FederationError: if ``state`` lacks a tensor or a shape differs from the template.
    """
    parts = []
    for name in sorted(template):
        value = state.get(name)
        if value is None or value.shape != template[name].shape:
            raise FederationError(
                f"update tensor {name!r} is missing or has the wrong shape",
                remedy="make sure every site runs the same method and model",
            )
        parts.append(value.detach().to(torch.float64).reshape(-1).numpy())
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float64)


def unflatten_state(vector: np.ndarray, *, template: StateDict) -> StateDict:
    """Split ``vector`` into tensors shaped and typed like ``template``.

    Raises:
        FederationError: if the length does not match the template.
    """
    if vector.shape != (vector_length(template),):
        raise FederationError(
            f"aggregate has {vector.shape[0]} values, the model has {vector_length(template)}",
            remedy="make sure every site runs the same method and model",
        )
    out: StateDict = {}
    offset = 0
    for name in sorted(template):
        reference = template[name]
        size = int(reference.numel())
        chunk = torch.from_numpy(np.ascontiguousarray(vector[offset : offset + size]))
        out[name] = chunk.reshape(reference.shape).to(reference.dtype)
        offset += size
    return out
