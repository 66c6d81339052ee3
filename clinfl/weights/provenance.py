"""Which weights a run started from: resolved as training resolves them, named by SHA-256.

A model starts from ``method.init_weights`` when given (a user's file), else, for a backbone
with a catalogued pretrained set and ``pretrained`` on, from that set's file in the cache, else
from random weights. :func:`resolve_init_weights` is that rule; :func:`weights_provenance`
adds the SHA-256 of the exact file and where it came from, for ``results.json``, ``model.json``,
the provenance file, the model card and the run-config digest (which binds the SHA-256, not the
machine-specific path).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

from safetensors import SafetensorError, safe_open

from clinfl.config import MethodConfig
from clinfl.errors import InternalError, ModelError
from clinfl.weights.cache import MOBILENET_V2_IMAGENET, cached_weights
from clinfl.weights.catalog import weights_set
from clinfl.weights.fetch import METADATA_KEY, stored_metadata

PRETRAINED_SETS: dict[str, str] = {"mobilenet_v2": MOBILENET_V2_IMAGENET}
"""Backbone -> the catalogued weights set it starts from when ``pretrained`` is on."""
USER_FILE = "user file"
_CHUNK = 1 << 20


class WeightsDocument(TypedDict):
    """The initial weights as the run's documents record them."""

    name: str | None
    """The catalogued weights set, or None for a user's file."""
    file: str | None
    """The user's file name (no folder: paths are machine-specific), or None."""
    sha256: str | None
    """The SHA-256 of the exact file loaded (None only where it was resolved elsewhere)."""
    source: str


@dataclass(frozen=True)
class WeightsProvenance:
    """The file a model's initial weights were loaded from (see the module docstring)."""

    name: str | None
    file: str | None
    sha256: str | None
    source: str

    def to_json_dict(self) -> WeightsDocument:
        """Return the record written into the run's documents."""
        return WeightsDocument(
            name=self.name, file=self.file, sha256=self.sha256, source=self.source
        )


def pretrained_set(method: MethodConfig) -> str | None:
    """Return the catalogued set ``method`` starts from when no file is given, or None."""
    return PRETRAINED_SETS.get(method.backbone) if method.pretrained else None


def resolve_init_weights(method: MethodConfig) -> Path | None:
    """Return the file the model's initial weights are loaded from, or None for random weights.

    Raises:
        ModelError: if a pretrained set is needed and not in the cache (naming the fetch command).
    """
    if method.init_weights is not None:
        return method.init_weights
    name = pretrained_set(method)
    return None if name is None else cached_weights(name)


def file_sha256(path: Path) -> str:
    """Return the SHA-256 of the file at ``path``.

    Raises:
        ModelError: if it cannot be read.
    """
    digest = hashlib.sha256()
    try:
        with path.open("rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
    except OSError as exc:
        raise ModelError(
            f"cannot read the initial weights {path}: {exc.strerror}",
            remedy="check the --init-weights path, or fetch the pretrained set again",
        ) from None
    return digest.hexdigest()


def _cached_source(name: str, path: Path) -> str:
    """The catalogue's description if the cached file is the one ``weights fetch`` stores."""
    catalogued = weights_set(name)
    try:
        with safe_open(str(path), framework="pt") as stored:
            metadata = stored.metadata() or {}
    except (OSError, SafetensorError, ValueError):
        metadata = {}
    if metadata == stored_metadata(catalogued):
        return catalogued.description
    found = metadata.get(METADATA_KEY)
    origin = json.loads(found).get("source") if found and found.startswith("{") else None
    return f"a file in the cache as {name!r}, not stored by `clinfl weights fetch` ({origin})"


def weights_provenance(method: MethodConfig) -> WeightsProvenance | None:
    """Return the initial weights ``method`` trains from, or None when it starts at random.

    Raises:
        ModelError: if the file cannot be read, or a pretrained set is not in the cache.
    """
    path = resolve_init_weights(method)
    if path is None:
        return None
    sha256 = file_sha256(path)
    if method.init_weights is not None:
        return WeightsProvenance(None, path.name, sha256, USER_FILE)
    name = pretrained_set(method)
    if name is None:
        raise InternalError("no pretrained set is named for these weights")
    return WeightsProvenance(name, None, sha256, _cached_source(name, path))


def declared_weights_provenance(method: MethodConfig) -> WeightsProvenance | None:
    """Return what a coordinator that trains nothing knows of the sites' initial weights.

    In a deployment each site resolves the pretrained set from its own cache, and binds its
    SHA-256 in the run-config digest (sites with different files refuse the run). The
    coordinator records the SHA-256 of its own cached copy when it has one, else None.

    Raises:
        ModelError: if ``method`` names a file that cannot be read.
    """
    name = pretrained_set(method)
    if method.init_weights is not None or name is None:
        return weights_provenance(method)
    try:
        return weights_provenance(method)
    except ModelError:
        source = f"{weights_set(name).description}, from each site's cache"
        return WeightsProvenance(name, None, None, source)
