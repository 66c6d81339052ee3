"""Key agreement, key derivation, signatures and share encryption, from ``cryptography`` only.

- X25519 agreement + HKDF-SHA256 with a purpose label (never one key for two purposes);
- Ed25519 signatures over advertised keys and survivor sets;
- AES-256-GCM for shares, authenticated with the sender, receiver and round.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

SHARE_ENCRYPTION = "clinfl/secagg/share-enc/v1"
PAIRWISE_MASK = "clinfl/secagg/pairwise-mask/v1"
PURPOSES = (SHARE_ENCRYPTION, PAIRWISE_MASK)
KEY_BYTES = 32
NONCE_BYTES = 12


_RAW = serialization.Encoding.Raw
_RAW_PUBLIC = serialization.PublicFormat.Raw
_RAW_PRIVATE = serialization.PrivateFormat.Raw


class ShareDecryptionError(Exception):
    """One opaque error for any share that fails authentication or decryption."""


def derive_shared_key(
    own: X25519PrivateKey, peer: X25519PublicKey, *, purpose: str, context: bytes
) -> bytes:
    """Return a 32-byte key from X25519(own, peer) bound to ``purpose`` and ``context``.

    Raises:
        ValueError: for an unknown purpose label.
    """
    if purpose not in PURPOSES:
        raise ValueError(f"unknown key purpose {purpose!r}")
    shared = own.exchange(peer)
    hkdf = HKDF(
        algorithm=hashes.SHA256(),
        length=KEY_BYTES,
        salt=None,
        info=purpose.encode() + b"|" + context,
    )
    return hkdf.derive(shared)


def new_agreement_key() -> X25519PrivateKey:
    """Return a fresh X25519 private key from the OS CSPRNG."""
    return X25519PrivateKey.generate()


def agreement_public_bytes(key: X25519PrivateKey) -> bytes:
    """Return the 32-byte raw public key of ``key``."""
    return key.public_key().public_bytes(_RAW, _RAW_PUBLIC)


def agreement_private_bytes(key: X25519PrivateKey) -> bytes:
    """Return the 32-byte raw private key (for Shamir sharing only; never logged or stored)."""
    return key.private_bytes(_RAW, _RAW_PRIVATE, serialization.NoEncryption())


def agreement_private_key(raw: bytes) -> X25519PrivateKey:
    """Rebuild an X25519 private key from 32 raw bytes.

    Raises:
        ValueError: if ``raw`` is not 32 bytes.
    """
    return X25519PrivateKey.from_private_bytes(raw)


def agreement_public_key(raw: bytes) -> X25519PublicKey:
    """Parse a 32-byte raw X25519 public key.

    Raises:
        ValueError: if ``raw`` is not 32 bytes.
    """
    return X25519PublicKey.from_public_bytes(raw)


def signing_public_bytes(key: Ed25519PrivateKey) -> bytes:
    """Return the 32-byte raw Ed25519 public key of ``key``."""
    return key.public_key().public_bytes(_RAW, _RAW_PUBLIC)


def sign(key: Ed25519PrivateKey, message: bytes) -> bytes:
    """Return the Ed25519 signature of ``message``."""
    return key.sign(message)


def verify(key: Ed25519PublicKey, signature: bytes, message: bytes) -> bool:
    """Return True when ``signature`` is ``key``'s signature of ``message``."""
    try:
        key.verify(signature, message)
    except InvalidSignature:
        return False
    return True


def seal(key: bytes, plaintext: bytes, *, associated_data: bytes) -> bytes:
    """Encrypt with AES-256-GCM under a fresh random nonce; returns ``nonce || ciphertext``."""
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, associated_data)


def open_sealed(key: bytes, blob: bytes, *, associated_data: bytes) -> bytes:
    """Verify and decrypt a :func:`seal` output.

    Raises:
        ShareDecryptionError: for any tampering, wrong key or wrong associated data.
    """
    if len(blob) < NONCE_BYTES + 16:
        raise ShareDecryptionError("sealed share is too short")
    try:
        return AESGCM(key).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], associated_data)
    except InvalidTag:
        raise ShareDecryptionError("sealed share failed authentication") from None
