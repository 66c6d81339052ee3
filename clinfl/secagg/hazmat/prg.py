"""Mask PRG: AES-256-CTR keyed by the full 32-byte seed, read as full-range unsigned integers."""

from __future__ import annotations

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

SEED_BYTES = 32
_ZERO_NONCE = bytes(16)


def residue_dtype(bits: int) -> np.dtype[np.unsignedinteger]:
    """Return the working dtype for residues modulo ``2**bits``: uint32 up to 32 bits, else uint64.

    Raises:
        ValueError: if ``bits`` is outside 1..64.
    """
    if not 1 <= bits <= 64:
        raise ValueError(f"bits must be in 1..64, got {bits}")
    return np.dtype(np.uint32) if bits <= 32 else np.dtype(np.uint64)


def reduce_residues(values: np.ndarray, bits: int) -> np.ndarray:
    """Reduce ``values`` (of the working dtype) modulo ``2**bits`` in place and return them."""
    if bits not in (32, 64):
        np.bitwise_and(values, values.dtype.type((1 << bits) - 1), out=values)
    return values


def mask_stream(seed: bytes, length: int, *, bits: int) -> np.ndarray:
    """Return ``length`` pseudo-random integers uniform on ``[0, 2**bits)``.

    The stream is AES-256-CTR over zero bytes with the whole 32-byte ``seed`` as key (each seed is
    used for one stream only, so the fixed counter start is safe). Values are the low ``bits``
    bits of little-endian words of the working dtype (:func:`residue_dtype`), so every residue
    is equally likely. The result is read-only when ``bits`` is 32 or 64.

    Raises:
        ValueError: if the seed is not 32 bytes, ``bits`` is out of range or ``length`` < 0.
    """
    if len(seed) != SEED_BYTES:
        raise ValueError(f"mask seed must be {SEED_BYTES} bytes, got {len(seed)}")
    dtype = residue_dtype(bits)
    if length < 0:
        raise ValueError(f"length must be >= 0, got {length}")
    encryptor = Cipher(algorithms.AES(seed), modes.CTR(_ZERO_NONCE)).encryptor()
    raw = encryptor.update(bytes(dtype.itemsize * length)) + encryptor.finalize()
    words = np.frombuffer(raw, dtype=dtype.newbyteorder("<"))
    if bits in (32, 64):
        return words
    return reduce_residues(words.copy(), bits)
