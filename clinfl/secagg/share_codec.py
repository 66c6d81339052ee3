"""Byte layouts for sealed share pairs and for the contexts that bind keys to a round and pair.

Every layout is fixed-width or length-prefixed, so no two different inputs encode the same way.
"""

from __future__ import annotations

from clinfl.secagg.hazmat.shamir import PRIME, Share

_LABEL = b"clinfl/secagg/pair/v1"
_POINT_BYTES = 4
_VALUE_BYTES = (PRIME.bit_length() + 7) // 8
_SHARE_BYTES = _POINT_BYTES + _VALUE_BYTES


def _prefixed(*parts: bytes) -> bytes:
    return b"".join(len(part).to_bytes(4, "big") + part for part in parts)


def pair_context(round_id: int, first: str, second: str, *, directed: bool) -> bytes:
    """Return the context binding a key or a ciphertext to a round and a pair of sites.

    Undirected contexts (shared keys) sort the pair so both ends derive the same bytes; directed
    ones (the associated data of a sealed share) keep sender then receiver.
    """
    a, b = (first, second) if directed else tuple(sorted((first, second)))
    kind = b"directed" if directed else b"undirected"
    return _prefixed(_LABEL, kind, str(round_id).encode(), a.encode(), b.encode())


def _encode_share(share: Share) -> bytes:
    return share.x.to_bytes(_POINT_BYTES, "big") + share.y.to_bytes(_VALUE_BYTES, "big")


def _decode_share(raw: bytes) -> Share:
    x = int.from_bytes(raw[:_POINT_BYTES], "big")
    y = int.from_bytes(raw[_POINT_BYTES:], "big")
    if x < 1 or y >= PRIME:
        raise ValueError("share out of range")
    return Share(x=x, y=y)


def encode_share_pair(self_mask: Share, mask_key: Share) -> bytes:
    """Return the plaintext of a sealed share: the self-mask share, then the mask-key share."""
    return _encode_share(self_mask) + _encode_share(mask_key)


def decode_share_pair(raw: bytes) -> tuple[Share, Share]:
    """Parse :func:`encode_share_pair` output.

    Raises:
        ValueError: for a wrong length or out-of-range values.
    """
    if len(raw) != 2 * _SHARE_BYTES:
        raise ValueError(f"share pair must be {2 * _SHARE_BYTES} bytes, got {len(raw)}")
    return _decode_share(raw[:_SHARE_BYTES]), _decode_share(raw[_SHARE_BYTES:])
