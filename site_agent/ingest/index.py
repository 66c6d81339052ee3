"""The ingest's content-hash index and image cache in the site's state directory.

``ingest.sqlite`` maps each path (with its size and modification time) to the SHA-256 of its
content, and each content hash to its outcome: accepted (with the keying UIDs, salted and
hashed) or quarantined (with its reason). Accepted images are cached as ``cache/<sha>.npy``
(uint8, read back with ``allow_pickle=False``), and the whole accepted set, in order, as one
``cache/pack-<size>-<digest>.npy`` that a re-run or a training epoch reads in one go. Both tables
are read once when the index opens, so a re-run on an unchanged export only stats files.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import numpy as np

INDEX_FILE = "ingest.sqlite"
SALT_FILE = "ingest.salt"
CACHE_DIR = "cache"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS paths (
    path TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, sha256 TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS outcomes (
    sha256 TEXT NOT NULL, image_size INTEGER NOT NULL, lenient INTEGER NOT NULL,
    filters TEXT NOT NULL, status TEXT NOT NULL, reason TEXT, detail TEXT,
    transfer_syntax TEXT, sop_hash TEXT, study_hash TEXT, accession_hash TEXT,
    PRIMARY KEY (sha256, image_size, lenient, filters)
);
"""


@dataclass(frozen=True)
class Outcome:
    """What happened to one file's content."""

    status: str  # "accepted" or "quarantined"
    reason: str | None = None
    detail: str = ""
    transfer_syntax: str = ""
    sop_hash: str = ""
    study_hash: str = ""
    accession_hash: str = ""


def file_sha256(path: Path) -> str:
    """Return the SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def site_salt(state_dir: Path) -> bytes:
    """Return the site's secret salt for hashing identifiers (created once, mode 0600)."""
    path = state_dir / SALT_FILE
    if not path.is_file():
        state_dir.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(secrets.token_bytes(32))
    return path.read_bytes()


def salted_hash(salt: bytes, value: str) -> str:
    """Return a short salted hash of an identifier ('' for an empty one)."""
    if not value:
        return ""
    return hashlib.sha256(salt + value.strip().encode()).hexdigest()[:20]


class IngestIndex:
    """The SQLite index and the cache folder; see the module docstring."""

    def __init__(self, state_dir: Path) -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        self.cache_dir = state_dir / CACHE_DIR
        self.cache_dir.mkdir(exist_ok=True)
        self._db = sqlite3.connect(state_dir / INDEX_FILE)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)
        self._paths = {
            str(path): (int(size), int(mtime), str(sha))
            for path, size, mtime, sha in self._db.execute("SELECT * FROM paths")
        }
        self._outcomes = {
            (str(row[0]), int(row[1]), bool(row[2]), str(row[3])): Outcome(*row[4:])
            for row in self._db.execute("SELECT * FROM outcomes")
        }

    def close(self) -> None:
        """Commit and close."""
        self._db.commit()
        self._db.close()

    def known_sha(self, path: str, size: int, mtime_ns: int) -> str | None:
        """Return the recorded hash when the path is unchanged (same size and mtime)."""
        known = self._paths.get(path)
        if known is None or known[:2] != (size, mtime_ns):
            return None
        return known[2]

    def remember_path(self, path: str, size: int, mtime_ns: int, sha: str) -> None:
        """Record a path's hash."""
        self._paths[path] = (size, mtime_ns, sha)
        self._db.execute(
            "INSERT OR REPLACE INTO paths (path, size, mtime_ns, sha256) VALUES (?, ?, ?, ?)",
            (path, size, mtime_ns, sha),
        )

    def outcome(self, sha: str, key: tuple[int, bool, str]) -> Outcome | None:
        """Return the stored outcome of this content under these settings."""
        outcome = self._outcomes.get((sha, *key))
        if outcome is None:
            return None
        if outcome.status == "accepted" and not self.cache_path(sha, key[0]).is_file():
            return None  # the cached image went missing: decode again
        return outcome

    def store(self, sha: str, key: tuple[int, bool, str], outcome: Outcome) -> None:
        """Record an outcome."""
        self._outcomes[(sha, *key)] = outcome
        self._db.execute(
            "INSERT OR REPLACE INTO outcomes VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                sha,
                key[0],
                int(key[1]),
                key[2],
                outcome.status,
                outcome.reason,
                outcome.detail,
                outcome.transfer_syntax,
                outcome.sop_hash,
                outcome.study_hash,
                outcome.accession_hash,
            ),
        )

    def commit(self) -> None:
        """Commit what has been recorded so far (nothing is lost on a crash after this)."""
        self._db.commit()

    def cache_path(self, sha: str, size: int) -> Path:
        """Return where the decoded image of this content at this size is cached."""
        return self.cache_dir / f"{sha}-{size}.npy"

    def load_image(self, sha: str, size: int) -> np.ndarray:
        """Read a cached image (never unpickles)."""
        image: np.ndarray = np.load(self.cache_path(sha, size), allow_pickle=False)
        return image

    def pack_path(self, shas: list[str], size: int) -> Path:
        """Return where the pack of these images, in this order, at this size lives."""
        digest = hashlib.sha256("\n".join(shas).encode()).hexdigest()[:24]
        return self.cache_dir / f"pack-{size}-{digest}.npy"

    def load_images(self, shas: list[str], size: int) -> np.ndarray:
        """Return the ``[N, size, size]`` cached images of ``shas``, in order, as one array.

        They come from the pack when one matches; otherwise they are read one by one and packed
        (replacing older packs at this size) for the next time.
        """
        if not shas:
            return np.zeros((0, size, size), dtype=np.uint8)
        pack = self.pack_path(shas, size)
        if pack.is_file():
            images: np.ndarray = np.load(pack, allow_pickle=False)
            if images.shape == (len(shas), size, size):
                return images
        images = np.stack([self.load_image(sha, size) for sha in shas])
        for old in self.cache_dir.glob(f"pack-{size}-*.npy"):
            old.unlink(missing_ok=True)
        partial = pack.with_suffix(".partial")
        with open(partial, "wb") as handle:
            np.save(handle, images, allow_pickle=False)
        os.replace(partial, pack)
        return images
