"""Choosing the torch device a site trains and evaluates on.

Everything runs on the CPU by default, and nothing requires an accelerator. ``"auto"`` takes the
first CUDA device when torch sees one; ``"cuda"`` or ``"cuda:N"`` demands one. Only the model,
its batches and the algorithm's tensors move: updates, masks, ledgers and checkpoints stay on the
CPU, so secure aggregation and the privacy accounting are the same on any device.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from clinfl.errors import ConfigError

if TYPE_CHECKING:  # torch is imported when a device is resolved, not by config validation
    import torch

DEVICE_PATTERN = re.compile(r"^(cpu|auto|cuda(:\d+)?)$")
"""The accepted spellings: ``cpu``, ``auto``, ``cuda`` and ``cuda:N``."""


def is_device_name(name: str) -> bool:
    """Return whether ``name`` is one of the accepted device spellings."""
    return DEVICE_PATTERN.match(name) is not None


def resolve_device(name: str) -> torch.device:
    """Return the device ``name`` stands for on this machine.

    Raises:
        ConfigError: for an unknown spelling, or a CUDA device this machine does not have.
    """
    if not is_device_name(name):
        raise ConfigError(
            f"unknown device {name!r}", remedy="use cpu, auto, cuda or cuda:N (e.g. cuda:0)"
        )
    import torch

    if name == "cpu":
        return torch.device("cpu")
    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if name == "auto":
        return torch.device("cuda:0" if available else "cpu")
    index = int(name.partition(":")[2] or 0)
    if index >= available:
        raise ConfigError(
            f"device {name} was asked for, but torch sees {available} CUDA device(s)",
            remedy="use --device cpu (or auto, which falls back to the CPU)",
        )
    return torch.device(f"cuda:{index}")


def device_description(device: torch.device) -> str:
    """Name ``device`` for reports: ``cpu``, or the CUDA device's model name."""
    import torch

    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)
