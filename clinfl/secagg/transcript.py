"""What a round is bound to (SECAGG.md, R1, R1' and R6), as hashes every site compares.

A site binds each signed advertisement to a :class:`RoundBinding`: the roster it pinned, the run
and round it joined, a hash of the round's parameters (with the session nonce) and settings, a
hash of the global model it received, and a hash of the whole run configuration it joined with.
Every advertisement a site is shown must carry exactly its own binding, so a coordinator that
sends different models or settings to different sites (Pasquini et al., CCS 2022), joins the
sites of one run with different configurations, or mixes runs, rounds, sessions or rosters, is
refused before any share exists. The transcript hash then covers the binding and every
advertised key and graph commitment, and survivor signatures are over it, so no signature can be
replayed into another round or session.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

if TYPE_CHECKING:
    from clinfl.secagg.advertise import Advertisement

DIGEST_BYTES = 32


def length_prefixed(*parts: bytes) -> bytes:
    """Return ``parts`` joined unambiguously (each prefixed by its 4-byte length)."""
    return b"".join(len(part).to_bytes(4, "big") + part for part in parts)


def digest(label: bytes, *parts: bytes) -> bytes:
    """Return SHA-256 over ``label`` and ``parts``, length-prefixed."""
    return hashlib.sha256(length_prefixed(label, *parts)).digest()


@dataclass(frozen=True)
class RoundBinding:
    """The six things a round is bound to; every advertisement in a round must carry the same.

    ``roster_hash`` is the SHA-256 of the roster the site pinned, ``params_hash`` covers the
    protocol parameters (the session nonce among them) and the training settings of the round,
    ``model_hash`` the global tensors the site received, and ``config_hash`` the whole run
    configuration the site joined with and trains by (SECAGG.md, "Version 3", R1';
    :func:`clinfl.config.digest.run_config_digest`): method and hyper-parameters, seeds, batch
    size, epochs or steps, image size, validation fraction and every other field.
    """

    roster_hash: bytes
    run_id: str
    round_id: int
    params_hash: bytes
    model_hash: bytes
    config_hash: bytes

    def encode(self) -> bytes:
        """Return the binding's unambiguous byte encoding."""
        return length_prefixed(
            b"clinfl/secagg/binding/v3",
            self.roster_hash,
            self.run_id.encode(),
            str(self.round_id).encode(),
            self.params_hash,
            self.model_hash,
            self.config_hash,
        )

    def differences(self, other: RoundBinding) -> list[str]:
        """Return the names of the fields on which ``other`` differs from this binding."""
        names = ("roster_hash", "run_id", "round_id", "params_hash", "model_hash", "config_hash")
        return [name for name in names if getattr(self, name) != getattr(other, name)]


def directory_hash(directory: Mapping[str, Ed25519PublicKey]) -> bytes:
    """Return the hash of a site directory (names and signing keys), for rosters without a file."""
    parts: list[bytes] = []
    for site in sorted(directory):
        raw = directory[site].public_bytes(Encoding.Raw, PublicFormat.Raw)
        parts += [site.encode(), raw]
    return digest(b"clinfl/roster/directory/v1", *parts)


def canonical_number(value: float) -> bytes:
    """Return an exact, unambiguous encoding of a float (its hex form), refusing NaN."""
    if math.isnan(value):
        raise ValueError("NaN has no canonical encoding")
    return float(value).hex().encode()


def settings_hash(
    *, round_id: int, local_epochs: int, batch_size: int, lr: float, local_steps: int | None = None
) -> bytes:
    """Return the hash of a round's training settings (``local_steps`` None: epochs mode)."""
    return digest(
        b"clinfl/round-settings/v2",
        str(round_id).encode(),
        str(local_epochs).encode(),
        str(batch_size).encode(),
        canonical_number(lr),
        b"epochs" if local_steps is None else str(local_steps).encode(),
    )


def model_hash(tensors: Iterable[tuple[str, bytes, str, tuple[int, ...]]]) -> bytes:
    """Return the hash of named tensors given as ``(name, raw bytes, dtype, shape)``."""
    parts: list[bytes] = []
    for name, raw, dtype, shape in sorted(tensors, key=lambda item: item[0]):
        parts += [name.encode(), dtype.encode(), ",".join(map(str, shape)).encode(), raw]
    return digest(b"clinfl/global-model/v1", *parts)


def transcript_hash(
    binding: RoundBinding, adverts: Mapping[str, Advertisement], opened: Mapping[str, bytes]
) -> bytes:
    """Return the hash survivor signatures cover (R6).

    It covers the binding, and every advertised site's keys, commitment and revealed nonce.
    """
    parts: list[bytes] = [binding.encode()]
    for site in sorted(adverts):
        advert = adverts[site]
        parts += [
            site.encode(),
            advert.share_key,
            advert.mask_key,
            advert.graph_commitment,
            opened[site],
        ]
    return digest(b"clinfl/secagg/transcript/v2", *parts)
