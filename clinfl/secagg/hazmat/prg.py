"""Mask PRG: AES-256-CTR keyed by the full 32-byte seed, read as full-range unsigned integers."""

from __future__ import annotations

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

SEED_BYTES = 32
_ZERO_NONCE = bytes(16)
_CHUNK = 1 << 18  # 256 KiB of keystream at a time: stays in cache until it is folded in
_ZEROS = bytes(_CHUNK)
_SLACK = 15  # update_into wants room for one block beyond the input


def keystream_into(seed: bytes, out: np.ndarray) -> None:
    """Fill ``out`` (a contiguous byte buffer with 15 spare bytes at its end) with AES-256-CTR.

    The keystream is the encryption of zeros under the 32-byte ``seed`` with a zero counter.
    """
    encryptor = Cipher(algorithms.AES(seed), modes.CTR(_ZERO_NONCE)).encryptor()
    view = memoryview(out.data).cast("B")
    total = len(view) - _SLACK
    offset = 0
    while offset < total:
        size = min(_CHUNK, total - offset)
        encryptor.update_into(_ZEROS[:size], view[offset : offset + size + _SLACK])
        offset += size
    encryptor.finalize()


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


def add_mask_stream(target: np.ndarray, seed: bytes, *, bits: int, subtract: bool = False) -> None:
    """Add (or subtract) ``mask_stream(seed, len(target), bits=bits)`` to ``target`` in place.

    The keystream is made 256 KiB at a time in a reused buffer and folded straight into ``target``
    (working dtype, wrapping modulo its width), so no stream-sized array is ever allocated. The
    result is reduced modulo ``2**bits``.

    Raises:
        ValueError: for a bad seed or ``bits``, or a ``target`` that is not a 1-D array of the
            working dtype.
    """
    if len(seed) != SEED_BYTES:
        raise ValueError(f"mask seed must be {SEED_BYTES} bytes, got {len(seed)}")
    dtype = residue_dtype(bits)
    if target.dtype != dtype or target.ndim != 1:
        raise ValueError(f"target must be a 1-D {dtype} array, got {target.ndim}-D {target.dtype}")
    words_per_chunk = _CHUNK // dtype.itemsize
    buffer = np.empty(_CHUNK + _SLACK, dtype=np.uint8)
    view = memoryview(buffer.data).cast("B")
    words = buffer[:_CHUNK].view(dtype.newbyteorder("<"))
    encryptor = Cipher(algorithms.AES(seed), modes.CTR(_ZERO_NONCE)).encryptor()
    operation = np.subtract if subtract else np.add
    for start in range(0, target.shape[0], words_per_chunk):
        stop = min(start + words_per_chunk, target.shape[0])
        size = (stop - start) * dtype.itemsize
        encryptor.update_into(_ZEROS[:size], view[: size + _SLACK])
        part = target[start:stop]
        operation(part, words[: stop - start], out=part)
    encryptor.finalize()
    reduce_residues(target, bits)


def mask_stream(seed: bytes, length: int, *, bits: int) -> np.ndarray:
    """Return ``length`` pseudo-random integers uniform on ``[0, 2**bits)``.

    The stream is AES-256-CTR over zero bytes with the whole 32-byte ``seed`` as key (each seed is
    used for one stream only, so the fixed counter start is safe). Values are the low ``bits``
    bits of little-endian words of the working dtype (:func:`residue_dtype`), so every residue
    is equally likely.

    Raises:
        ValueError: if the seed is not 32 bytes, ``bits`` is out of range or ``length`` < 0.
    """
    if len(seed) != SEED_BYTES:
        raise ValueError(f"mask seed must be {SEED_BYTES} bytes, got {len(seed)}")
    dtype = residue_dtype(bits)
    if length < 0:
        raise ValueError(f"length must be >= 0, got {length}")
    nbytes = dtype.itemsize * length
    buffer = np.empty(nbytes + _SLACK, dtype=np.uint8)
    keystream_into(seed, buffer)
    words = buffer[:nbytes].view(dtype.newbyteorder("<"))
    if words.dtype.byteorder not in ("=", "|") and words.dtype != dtype:
        words = words.astype(dtype)  # big-endian host: convert once
    return reduce_residues(words, bits)
