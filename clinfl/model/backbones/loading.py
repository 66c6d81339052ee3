"""Reading a weights file and fitting it to a backbone's architecture, or naming why it does not.

A file is read without unpickling anything: ``.safetensors`` with safetensors, anything else with
``torch.load(weights_only=True)``. :func:`fit_state` then checks the renamed tensors against the
architecture and reports the first mismatch (a missing key, an unexpected key or a wrong shape)
as one line.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from clinfl.errors import ModelError
from clinfl.typing import StateDict

KeyRenamer = Callable[[str], str | None]
"""Maps a file's key to the architecture's name for it, or to None for a tensor to ignore
(a classification head, a counter)."""


def read_state_dict(path: Path) -> StateDict:
    """Return the tensors of a weights file (``.safetensors``, or a torch state dict).

    A torch file holding ``{"state_dict": {...}}`` (a training checkpoint) is unwrapped.

    Raises:
        ModelError: if the file is missing, unreadable or holds no state dict.
    """
    if not path.is_file():
        raise ModelError(f"weights file {path} does not exist", remedy="give an existing file")
    try:
        if path.suffix == ".safetensors":
            state: object = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelError(
            f"cannot read weights file {path}: {reason}",
            remedy="give a state dict saved as .safetensors or with torch.save "
            "(model.state_dict(), not the model object)",
        ) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise ModelError(
            f"weights file {path} does not hold a state dict of tensors",
            remedy="save model.state_dict()",
        )
    return dict(state)


def fit_state(
    module: nn.Module,
    state: Mapping[str, torch.Tensor],
    *,
    rename: KeyRenamer,
    source: str,
    architecture: str,
    optional: Collection[str] = (),
) -> StateDict:
    """Return ``state`` renamed to ``module``'s keys, checked key by key against it.

    Keys ``rename`` maps to None are dropped. ``optional`` names architecture keys a file may
    lack (they keep their values).

    Raises:
        ModelError: one line naming the first key that is missing, unexpected or of the wrong
            shape, with ``source`` (the file) and ``architecture`` in the message.
    """
    own = module.state_dict()
    renamed: StateDict = {}
    for key, value in state.items():
        name = rename(key)
        if name is not None:
            renamed[name] = value
    for key, value in renamed.items():
        if key not in own:
            raise _misfit(source, architecture, f"unexpected key {key!r}")
        if tuple(value.shape) != tuple(own[key].shape):
            raise _misfit(
                source,
                architecture,
                f"key {key!r} has shape {tuple(value.shape)}, "
                f"{architecture} needs {tuple(own[key].shape)}",
            )
    for key in own:
        if key not in renamed and key not in optional:
            raise _misfit(source, architecture, f"missing key {key!r}")
    return renamed


def _misfit(source: str, architecture: str, what: str) -> ModelError:
    return ModelError(
        f"weights file {source} does not fit {architecture}: {what}",
        remedy=f"give {architecture} weights, or the --backbone the file was made for",
    )


def load_fitted(module: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Copy fitted tensors (from :func:`fit_state`) into ``module``, converting their dtype."""
    own = module.state_dict()
    module.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=False)
