"""Strict decoding of one accepted DICOM to a square uint8 training image.

Rescale slope/intercept (modality LUT), then the VOI LUT or window when the file has one, else a
robust 0.5-99.5 percentile window; MONOCHROME1 is inverted; the image is letterboxed to a square
and resized with antialiasing. Strict reading (pydicom's RAISE validation) is the default; a
lenient mode (WARN, and ``force`` for files without a preamble) must be chosen explicitly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from site_agent.ingest import reasons
from site_agent.ingest.header import Rejected

LOW_PERCENTILE, HIGH_PERCENTILE = 0.5, 99.5


def configure_reader(*, lenient: bool) -> None:
    """Set pydicom's validation mode for this process (strict: invalid values raise)."""
    from pydicom import config

    config.settings.reading_validation_mode = config.WARN if lenient else config.RAISE


def _pixel_array(dataset: Any, transfer_syntax: str) -> np.ndarray:
    from pydicom.pixels.decoders.base import get_decoder

    try:
        decoder = get_decoder(transfer_syntax)
    except Exception:
        raise Rejected(reasons.UNSUPPORTED_COMPRESSION, transfer_syntax) from None
    if not decoder.is_available:
        raise Rejected(reasons.UNSUPPORTED_COMPRESSION, f"{transfer_syntax}: no decoder installed")
    try:
        pixels: np.ndarray = dataset.pixel_array
    except Exception as error:
        text = str(error)
        if "number of bytes" in text or "truncat" in text.lower() or isinstance(error, EOFError):
            raise Rejected(reasons.TRUNCATED, text[:120]) from None
        raise Rejected(
            reasons.CORRUPT_PIXEL_DATA, f"{type(error).__name__}: {text[:120]}"
        ) from None
    return pixels


def _window(values: np.ndarray, dataset: Any) -> np.ndarray:
    from pydicom.pixels.processing import apply_voi_lut

    has_voi = "VOILUTSequence" in dataset or "WindowCenter" in dataset
    if has_voi:
        try:
            integral = np.array_equal(values, np.round(values))
            source = values.astype(np.int64) if integral else values  # LUTs index integers
            windowed = np.asarray(apply_voi_lut(source, dataset, index=0), dtype=np.float64)
            low, high = float(windowed.min()), float(windowed.max())
            if high > low:
                return (windowed - low) / (high - low)
        except Exception:
            pass
    low, high = np.percentile(values, [LOW_PERCENTILE, HIGH_PERCENTILE])
    if high <= low:
        high = low + 1.0
    unit: np.ndarray = np.clip((values - low) / (high - low), 0.0, 1.0)
    return unit


def _square(image: np.ndarray, size: int) -> np.ndarray:
    rows, cols = image.shape
    side = max(rows, cols)
    canvas = np.zeros((side, side), dtype=np.uint8)
    top, left = (side - rows) // 2, (side - cols) // 2
    canvas[top : top + rows, left : left + cols] = image
    resized = Image.fromarray(canvas).resize((size, size), Image.Resampling.LANCZOS)
    return np.asarray(resized, dtype=np.uint8)


def decode_to_training_image(
    path: Path, *, transfer_syntax: str, size: int, lenient: bool
) -> np.ndarray:
    """Return the file's image as ``[size, size]`` uint8.

    Raises:
        Rejected: ``unsupported_compression``, ``corrupt_pixel_data``, ``truncated``,
            ``unreadable_header``, ``multi_frame`` or ``colour``.
    """
    import pydicom
    from pydicom.pixels.processing import apply_modality_lut

    try:
        dataset = pydicom.dcmread(path, force=lenient)
    except Exception as error:
        raise Rejected(
            reasons.UNREADABLE_HEADER, f"{type(error).__name__}: {str(error)[:120]}"
        ) from None
    pixels = _pixel_array(dataset, transfer_syntax)
    if pixels.ndim != 2:
        reason = (
            reasons.MULTI_FRAME
            if pixels.ndim == 3 and pixels.shape[-1] not in (3, 4)
            else reasons.COLOUR
        )
        raise Rejected(reason, f"pixel array of shape {pixels.shape}")
    try:
        values = np.asarray(apply_modality_lut(pixels, dataset), dtype=np.float64)
        photometric = str(dataset.get("PhotometricInterpretation", "")).upper()
        unit = _window(values, dataset)
    except Exception as error:
        raise Rejected(
            reasons.CORRUPT_PIXEL_DATA, f"{type(error).__name__}: {str(error)[:120]}"
        ) from None
    if photometric == "MONOCHROME1":
        unit = 1.0 - unit
    image = np.round(unit * 255.0).astype(np.uint8)
    return _square(image, size)
