"""The federation's roster: every member's name and public keys, approved by every site.

``roster.json`` is written by ``clinfl pki admit`` at the coordinator and pinned by each site
with ``clinfl site trust`` after its operator compared the roster's fingerprint with the other
hospitals out of band. It holds only public data::

    {
      "format": 1,
      "ca_sha256": "<SHA-256 of the federation CA certificate, hex>",
      "members": [
        {"site": "site-1",
         "signing_public_key": "<Ed25519 public key, 32 bytes hex>",
         "node_public_key": "ecdsa-sha2-nistp256 AAAA...",
         "tls_cert_sha256": "<SHA-256 of the site's TLS certificate, hex>"}
      ],
      "fingerprint": "1a2b 3c4d ..."      (informational; checked when present)
    }

Its :attr:`Roster.digest` is SHA-256 over a canonical encoding (a domain label, then JSON with
sorted keys, members sorted by name, keys normalised). The digest is what a site pins and what
secure aggregation binds into every signed advertisement; :attr:`Roster.fingerprint` is its
first 160 bits in ten groups of four hex digits, short enough to read over the phone.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from clinfl.errors import RosterError

ROSTER_FILE = "roster.json"
FORMAT = 1
SITE_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,39}$")
SITE_NAME_RULE = (
    "use 1-40 lower-case letters, digits and dashes, starting with a letter or digit "
    "(a pseudonym, never the hospital's patient-facing name)"
)
FINGERPRINT_BYTES = 20  # 160 bits: a coordinator cannot find two rosters that show the same one
JOIN_KEY = "roster"  # the run configuration's entry that announces the run's roster
_LABEL = b"clinfl/roster/v1\n"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_MEMBER_KEYS = frozenset({"site", "signing_public_key", "node_public_key", "tls_cert_sha256"})
_ROSTER_KEYS = frozenset({"format", "ca_sha256", "members", "fingerprint"})


def format_fingerprint(digest: bytes) -> str:
    """Return the short, human-comparable form of a SHA-256 digest (ten groups of four)."""
    text = digest[:FINGERPRINT_BYTES].hex()
    return " ".join(text[k : k + 4] for k in range(0, len(text), 4))


def normalise_fingerprint(text: str) -> str:
    """Return ``text`` as :func:`format_fingerprint` writes it (spaces, dashes, case ignored).

    A full 64-digit digest is accepted too and shortened.

    Raises:
        RosterError: if it is not 40 (or 64) hex digits.
    """
    plain = re.sub(r"[\s:-]", "", text).lower()
    if not re.fullmatch(r"[0-9a-f]{40}|[0-9a-f]{64}", plain):
        raise RosterError(
            f"{text!r} is not a fingerprint",
            remedy="give the ten groups of four hex digits exactly as shown, e.g. '1a2b 3c4d ...'",
        )
    return format_fingerprint(bytes.fromhex(plain))


def valid_site_name(name: str) -> bool:
    """Whether ``name`` is an allowed site pseudonym."""
    return bool(SITE_NAME.match(name))


def normalise_node_key(text: str) -> str:
    """Return an OpenSSH ECDSA P-256 public key as ``ecdsa-sha2-nistp256 BASE64`` (no comment).

    Raises:
        ValueError: if it is not one.
    """
    key = serialization.load_ssh_public_key(text.strip().encode())
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise ValueError("not an ECDSA P-256 key")
    return key.public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ).decode()


@dataclass(frozen=True)
class Member:
    """One site of the federation: its name and the public halves of its keys."""

    site: str
    signing_public_key: bytes
    node_public_key: str
    tls_cert_sha256: str

    @property
    def signing_key(self) -> Ed25519PublicKey:
        """The site's Ed25519 key (secure aggregation checks its signatures against it)."""
        return Ed25519PublicKey.from_public_bytes(self.signing_public_key)

    def to_document(self) -> dict[str, str]:
        """The member as it is written in ``roster.json``."""
        return {
            "site": self.site,
            "signing_public_key": self.signing_public_key.hex(),
            "node_public_key": self.node_public_key,
            "tls_cert_sha256": self.tls_cert_sha256,
        }


def _member(entry: object, where: str, problems: list[str]) -> Member | None:
    if not isinstance(entry, dict) or set(entry) != _MEMBER_KEYS:
        problems.append(f"{where} must hold exactly {', '.join(sorted(_MEMBER_KEYS))}")
        return None
    if not all(isinstance(value, str) for value in entry.values()):
        problems.append(f"{where}: every value must be a string")
        return None
    site = entry["site"]
    before = len(problems)
    if not valid_site_name(site):
        problems.append(f"{where}: site name {site!r} is not allowed")
    signing = entry["signing_public_key"].lower()
    if not _HEX64.match(signing):
        problems.append(f"{where} ({site}): signing_public_key is not 32 bytes of hex")
    else:
        try:
            Ed25519PublicKey.from_public_bytes(bytes.fromhex(signing))
        except ValueError:
            problems.append(f"{where} ({site}): signing_public_key is not an Ed25519 key")
    try:
        node = normalise_node_key(entry["node_public_key"])
    except ValueError:
        problems.append(f"{where} ({site}): node_public_key is not an OpenSSH ECDSA P-256 key")
        node = ""
    fingerprint = entry["tls_cert_sha256"].lower()
    if not _HEX64.match(fingerprint):
        problems.append(f"{where} ({site}): tls_cert_sha256 is not a SHA-256 in hex")
    if len(problems) > before:
        return None
    return Member(site, bytes.fromhex(signing), node, fingerprint)


@dataclass(frozen=True)
class Roster:
    """The federation's members (sorted by name) and the fingerprint of its CA certificate."""

    ca_sha256: str
    members: tuple[Member, ...] = ()

    @classmethod
    def from_document(cls, document: object, *, source: str = "the roster") -> Roster:
        """Validate a parsed ``roster.json`` and return it.

        Raises:
            RosterError: listing every problem: unknown or missing fields, a bad key, a site
                named twice, a key used by two sites, or a fingerprint field that does not
                match the members.
        """
        problems: list[str] = []
        if not isinstance(document, dict):
            raise RosterError(
                f"{source} is not a JSON object",
                remedy="use the roster.json that `clinfl pki admit` wrote",
            )
        unknown = set(document) - _ROSTER_KEYS
        if unknown:
            problems.append(f"unknown field(s) {', '.join(sorted(unknown))}")
        if document.get("format") != FORMAT:
            problems.append(f"format must be {FORMAT}, got {document.get('format')!r}")
        ca = document.get("ca_sha256")
        if not isinstance(ca, str) or not _HEX64.match(ca.lower()):
            problems.append("ca_sha256 must be the CA certificate's SHA-256 in hex")
            ca = ""
        entries = document.get("members")
        members: list[Member] = []
        if not isinstance(entries, list):
            problems.append("members must be a list")
            entries = []
        for k, entry in enumerate(entries):
            member = _member(entry, f"members[{k}]", problems)
            if member is not None:
                members.append(member)
        seen: dict[str, int] = {}
        for member in members:
            seen[member.site] = seen.get(member.site, 0) + 1
        for site, count in sorted(seen.items()):
            if count > 1:
                problems.append(f"site {site!r} is named {count} times")
        for field in ("signing_public_key", "node_public_key", "tls_cert_sha256"):
            owners: dict[object, list[str]] = {}
            for member in members:
                owners.setdefault(getattr(member, field), []).append(member.site)
            for sites in owners.values():
                if len(sites) > 1:
                    problems.append(f"sites {', '.join(sorted(sites))} share one {field}")
        if problems:
            raise RosterError(
                f"{source} is not a valid roster: " + "; ".join(problems),
                remedy="use the roster.json that `clinfl pki admit` wrote, unchanged",
            )
        roster = cls(ca.lower(), tuple(sorted(members, key=lambda m: m.site)))
        shown = document.get("fingerprint")
        if shown is not None and (
            not isinstance(shown, str) or shown.split() != roster.fingerprint.split()
        ):
            raise RosterError(
                f"{source}'s fingerprint field {shown!r} does not match its members "
                f"({roster.fingerprint}): the file was changed by hand",
                remedy="ask the federation's administrator for the roster.json "
                "`clinfl pki admit` wrote",
            )
        return roster

    def _canonical_document(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "ca_sha256": self.ca_sha256,
            "members": [m.to_document() for m in self.members],
        }

    def canonical_bytes(self) -> bytes:
        """The unambiguous encoding the digest is taken over."""
        text = json.dumps(
            self._canonical_document(), sort_keys=True, separators=(",", ":"), ensure_ascii=True
        )
        return _LABEL + text.encode()

    @property
    def digest(self) -> bytes:
        """SHA-256 over :meth:`canonical_bytes` (32 bytes): what a site pins."""
        return hashlib.sha256(self.canonical_bytes()).digest()

    @property
    def fingerprint(self) -> str:
        """The digest's short form that operators compare out of band."""
        return format_fingerprint(self.digest)

    @property
    def names(self) -> tuple[str, ...]:
        """The members' names, sorted."""
        return tuple(m.site for m in self.members)

    @property
    def directory(self) -> dict[str, Ed25519PublicKey]:
        """Site name to Ed25519 public key: what secure aggregation verifies signatures with."""
        return {m.site: m.signing_key for m in self.members}

    def member(self, site: str) -> Member | None:
        """The member called ``site``, if there is one."""
        return next((m for m in self.members if m.site == site), None)

    def with_member(self, member: Member) -> Roster:
        """A roster with ``member`` added, or replacing the member of the same name.

        Raises:
            RosterError: if another member already uses one of its keys.
        """
        others = tuple(m for m in self.members if m.site != member.site)
        roster = replace(self, members=tuple(sorted((*others, member), key=lambda m: m.site)))
        Roster.from_document(roster.to_document(), source="the new roster")
        return roster

    def without(self, site: str) -> Roster:
        """A roster without the member ``site``."""
        return replace(self, members=tuple(m for m in self.members if m.site != site))

    def to_document(self) -> dict[str, Any]:
        """The roster as ``roster.json`` holds it (with its fingerprint, for people)."""
        return {**self._canonical_document(), "fingerprint": self.fingerprint}


def load_roster(path: Path) -> Roster:
    """Read and validate a ``roster.json``.

    Raises:
        RosterError: if it cannot be read, is not JSON, or is not a valid roster.
    """
    try:
        document = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RosterError(
            f"{path} cannot be read ({error.__class__.__name__})",
            remedy="pass the roster.json from `clinfl pki admit` (the coordinator's PKI folder)",
        ) from None
    return Roster.from_document(document, source=str(path))


def save_roster(path: Path, roster: Roster) -> None:
    """Write ``roster`` to ``path`` atomically."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(roster.to_document(), indent=2) + "\n")
    os.replace(partial, path)


def roster_changes(old: Roster, new: Roster) -> list[str]:
    """Describe, one line per member, how ``new`` differs from ``old`` (empty: the same)."""
    lines: list[str] = []
    if old.ca_sha256 != new.ca_sha256:
        lines.append("the federation's CA certificate changed")
    for site in sorted(set(old.names) | set(new.names)):
        before, after = old.member(site), new.member(site)
        if before is None:
            lines.append(f"+ {site}: added")
        elif after is None:
            lines.append(f"- {site}: removed")
        elif before != after:
            changed = [
                name
                for name in ("signing_public_key", "node_public_key", "tls_cert_sha256")
                if getattr(before, name) != getattr(after, name)
            ]
            lines.append(f"~ {site}: re-keyed ({', '.join(changed)})")
    return lines


def announce(run_config: Mapping[str, Any], digest: bytes) -> dict[str, Any]:
    """The run configuration a coordinator sends at ``join``, naming the run's roster digest."""
    return {**run_config, JOIN_KEY: {"sha256": digest.hex()}}


def split_announcement(run_config: Mapping[str, Any]) -> tuple[bytes | None, dict[str, Any]]:
    """Take the announced roster digest out of a ``join``'s run configuration.

    Returns the digest (``None`` when the run names no roster) and the configuration without it.

    Raises:
        RosterError: if the announcement is malformed.
    """
    rest = {k: v for k, v in run_config.items() if k != JOIN_KEY}
    if JOIN_KEY not in run_config:
        return None, rest
    entry = run_config[JOIN_KEY]
    value = entry.get("sha256") if isinstance(entry, dict) else None
    if not isinstance(value, str) or not _HEX64.match(value) or set(entry) != {"sha256"}:
        raise RosterError(
            "the run's roster announcement is malformed",
            remedy="the coordinator must run the same clinfl version as the site",
        )
    return bytes.fromhex(value), rest
