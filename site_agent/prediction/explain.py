"""LADM class-attention overlays: where each positive finding's query looked, on the image.

Only FedNCAlign-ML has class attention (one LADM query per class). Each class map is the
softmax attention over the feature map's positions, averaged over heads, so it sums to one; it is
resized to the image, stretched from its minimum to its maximum and blended over the grayscale
image as a heat map.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from matplotlib import colormaps
from PIL import Image
from torch import nn

from clinfl.data.batching import to_input_tensor
from clinfl.errors import CheckpointError, ConfigError
from clinfl.model.networks import FedNCAlignNet

ALPHA = 0.45
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class Overlay:
    """One written overlay: the image key, the finding, the PNG path."""

    key: str
    finding: str
    path: Path


def require_class_attention(model: nn.Module, method: str) -> FedNCAlignNet:
    """Return ``model`` as a network with class attention.

    Raises:
        ConfigError: for a method without class attention (every baseline, or ``--no-ladm``).
    """
    if not isinstance(model, FedNCAlignNet) or model.ladm is None:
        raise ConfigError(
            f"--explain needs LADM class attention, which this {method} model does not have "
            "(only FedNCAlign-ML with LADM has one attention map per class)",
            remedy="leave out --explain, or use a FedNCAlign-ML model trained with LADM",
        )
    return model


def class_maps(model: FedNCAlignNet, image: np.ndarray) -> np.ndarray:
    """Return the ``[C, h, w]`` attention maps of one ``[H, W]`` uint8 image (each sums to 1)."""
    with torch.inference_mode():
        maps = model.class_attention(to_input_tensor(image[None]))[0]
    return maps.cpu().numpy().astype(np.float64)


def overlay(gray: np.ndarray, heat: np.ndarray) -> np.ndarray:
    """Blend ``heat`` ``[h, w]`` (resized to ``gray``'s size) over ``gray``: ``[H, W, 3]`` uint8."""
    height, width = gray.shape
    resized = Image.fromarray(heat.astype(np.float32), mode="F").resize(
        (width, height), Image.Resampling.BILINEAR
    )
    scaled = np.asarray(resized, dtype=np.float64)
    span = scaled.max() - scaled.min()
    scaled = (scaled - scaled.min()) / span if span > 0 else np.zeros_like(scaled)
    colours = colormaps["inferno"](scaled)[..., :3]
    base = np.repeat(gray[..., None].astype(np.float64) / 255.0, 3, axis=2)
    mixed = (1 - ALPHA * scaled[..., None]) * base + ALPHA * scaled[..., None] * colours
    blended: np.ndarray = np.round(np.clip(mixed, 0, 1) * 255).astype(np.uint8)
    return blended


def overlay_name(key: str, finding: str) -> str:
    """Return a safe file name for one key's overlay of one finding."""
    return f"{_UNSAFE.sub('_', key).strip('_') or 'image'}__{_UNSAFE.sub('_', finding)}.png"


def write_overlays(
    model: FedNCAlignNet,
    *,
    keys: tuple[str, ...],
    images: np.ndarray,
    positives: list[tuple[str, ...]],
    class_names: tuple[str, ...],
    out_dir: Path,
    background: Callable[[int], np.ndarray],
) -> list[Overlay]:
    """Write one overlay PNG per (image, positive finding) into ``out_dir``.

    ``background(i)`` returns image i's grayscale picture to draw on (the overlay takes its
    size); ``images`` are the model inputs.

    Raises:
        CheckpointError: if the folder or a file cannot be written.
    """
    written: list[Overlay] = []
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        for i, (key, findings) in enumerate(zip(keys, positives, strict=True)):
            if not findings:
                continue
            maps, gray = class_maps(model, images[i]), background(i)
            for finding in findings:
                path = out_dir / overlay_name(key, finding)
                Image.fromarray(overlay(gray, maps[class_names.index(finding)])).save(path)
                written.append(Overlay(key, finding, path))
    except OSError as exc:
        raise CheckpointError(
            f"cannot write overlays to {out_dir}: {exc}", remedy="choose a writable --explain DIR"
        ) from exc
    return written
