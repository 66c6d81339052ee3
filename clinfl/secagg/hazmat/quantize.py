"""Stochastic fixed-point quantisation with an overflow check from n, the range and the scale.

A value ``v`` is clipped to ``[-c, c]``, shifted to ``[0, 2c]``, scaled by ``s`` and rounded up with
probability equal to its fractional part (unbiased). The sum of ``n`` such integers lies in
``[0, n * 2 * c * s]``, which must stay below the modulus ``2**bits`` or the sum would wrap.
"""

from __future__ import annotations

import math

import numpy as np

from clinfl.secagg.hazmat.prg import residue_dtype

CHUNK = 1 << 16
"""Values quantised per pass (512 KiB of float64)."""


def largest_sum(*, clip: float, scale: float, sites: int) -> int:
    """Return the largest sum ``sites`` quantised values can reach: ``n * ceil(2 c s)``."""
    return sites * math.ceil(2 * clip * scale)


def check_no_overflow(*, clip: float, scale: float, bits: int, sites: int) -> None:
    """Refuse settings whose sum over ``sites`` could wrap modulo ``2**bits``.

    Raises:
        ValueError: naming n, c, s, the largest possible sum and the modulus.
    """
    if clip <= 0 or scale <= 0 or sites < 1 or not 1 <= bits <= 64:
        raise ValueError(
            f"invalid quantisation: clip={clip}, scale={scale}, bits={bits}, n={sites}"
        )
    largest = largest_sum(clip=clip, scale=scale, sites=sites)
    if largest >= 2**bits:
        raise ValueError(
            f"sum of {sites} sites can reach {largest} = n*2*c*s (c={clip}, s={scale}) "
            f">= 2^{bits}: use more bits, a smaller scale or a smaller clip"
        )


def quantize(
    values: np.ndarray, *, clip: float, scale: float, bits: int, rng: np.random.Generator
) -> np.ndarray:
    """Return ``values`` as integers in ``[0, ceil(2 c s)]`` (stochastic rounding).

    The dtype is the working residue dtype for ``bits`` (uint32 up to 32 bits, else uint64).
    The work is done ``CHUNK`` values at a time in one reused buffer, so the passes stay in the
    cache; ``rng`` is drawn in order, so the result equals the one-pass computation exactly.

    Raises:
        ValueError: if one site's value could already wrap the modulus.
    """
    check_no_overflow(clip=clip, scale=scale, bits=bits, sites=1)
    flat = np.asarray(values).reshape(-1)
    result: np.ndarray = np.empty(flat.shape[0], dtype=residue_dtype(bits))
    buffer = np.empty(min(CHUNK, flat.shape[0]), dtype=np.float64)
    offset, top = clip * scale, 2 * clip * scale
    for start in range(0, flat.shape[0], CHUNK):
        stop = min(start + CHUNK, flat.shape[0])
        shifted = buffer[: stop - start]
        np.multiply(flat[start:stop], scale, out=shifted, dtype=np.float64)
        shifted += offset
        np.clip(shifted, 0.0, top, out=shifted)
        # floor(x + u) with u ~ U[0, 1) rounds x up with probability frac(x): stochastic rounding
        shifted += rng.random(stop - start)
        np.floor(shifted, out=shifted)
        result[start:stop] = shifted
    return result.reshape(np.shape(values))


def dequantize_sum(total: np.ndarray, *, clip: float, scale: float, sites: int) -> np.ndarray:
    """Turn the (unwrapped) sum of ``sites`` quantised vectors back into the sum of the values."""
    return total.astype(np.float64) / scale - sites * clip
