"""The messages of one secure-aggregation round, as frozen dataclasses.

Advertisements and survivor signatures are defined next to their checks
(:mod:`clinfl.secagg.advertise`, :mod:`clinfl.secagg.consistency`) and re-exported here.
Nothing in these messages is a site's update in the clear: shares are AES-GCM sealed for one
receiver, and the masked input is uniformly distributed on its own.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from clinfl.secagg.advertise import Advertisement, GraphReveal
from clinfl.secagg.consistency import SurvivorSignature
from clinfl.secagg.hazmat.shamir import Share

__all__ = [
    "Advertisement",
    "EncryptedShare",
    "GraphReveal",
    "MaskedInput",
    "RevealedShares",
    "SurvivorSignature",
    "UnmaskRequest",
]


@dataclass(frozen=True)
class EncryptedShare:
    """A sender's shares (of its self-mask seed and mask key) sealed for one receiver."""

    sender: str
    receiver: str
    round_id: int
    sealed: bytes


@dataclass(frozen=True)
class MaskedInput:
    """A site's masked vector: residues modulo ``2**bits`` (update and metadata slots)."""

    site_id: str
    round_id: int
    vector: np.ndarray


@dataclass(frozen=True)
class UnmaskRequest:
    """What the coordinator asks one site to reveal, with the evidence for the survivor set."""

    round_id: int
    survivors: frozenset[str]
    dropped: frozenset[str]
    signed_survivors: frozenset[str]
    signatures: tuple[SurvivorSignature, ...]


@dataclass(frozen=True)
class RevealedShares:
    """A site's answer: self-mask shares of survivors, mask-key shares of dropped sites."""

    site_id: str
    round_id: int
    self_mask_shares: dict[str, Share]
    mask_key_shares: dict[str, Share]
